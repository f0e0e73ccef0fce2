"""Sweep report: `python -m ragqa_exp.report [SWEEP_DIR] [--ref JOB] [--json] [--wandb-mode MODE]`.

Answers "is this difference real?" for the jobs of one sweep (`multirun/<date>/<time>`, default: the latest):
one row per job with its metrics, a 95% bootstrap interval for each accuracy and, against a reference job,
the paired McNemar test on the same questions (answers that flipped right→wrong / wrong→right). Writes
`report.md`, `report.csv` and the plots into the sweep dir, prints the Markdown (or the rows as JSON) and
logs one wandb summary run (`job_type="report"`) when the sweep's jobs used wandb.

The default reference of a job is the `quant=none` job with the same `train_key` and `model` (lowest job
number); for an API model's job (`model_source=openai`) it is the first `quant=none` job of a local model,
so `model=gemma3_270m,openai -m` compares the API row with the local one; else the first finished job.
`--ref` picks one reference for every row.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ragqa_exp import plots
from ragqa_exp.errors import RagqaError
from ragqa_exp.fsutil import write_text_atomic
from ragqa_exp.record import is_api_model
from ragqa_exp.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_ci, mcnemar

log = logging.getLogger(__name__)

# metrics.json accuracy key -> its per-item flag in predictions.jsonl
ACCURACY_FLAGS = {
    "exact_match": "exact", "partial_match": "partial",
    "exact_match_normalized": "exact_normalized", "partial_match_normalized": "partial_normalized",
}
PRIMARY = "exact_match"  # the study's metric: the one the plain-language verdict is about
PAIRED = ("exact_match", "partial_match")
ALPHA = 0.05
CI_LEVEL = 0.95
REPORT_MD, REPORT_CSV = "report.md", "report.csv"
WANDB_MODES = ("online", "offline", "disabled")


# ---------------------------------------------------------------- finding and reading jobs

@dataclass
class Items:
    """Per-question correctness of one job, from predictions.jsonl (a failed API call counts as wrong)."""

    qids: list[str]
    flags: dict[str, list[bool]]  # accuracy key -> one flag per qid, in file order


@dataclass
class Job:
    name: str  # path relative to the sweep dir: old sweeps nest values containing "/" into sub-dirs
    num: Optional[int]  # Hydra's job number (the leading `<num>_` of the dir name)
    dir: Path
    status: str  # "ok" (metrics.json present) | "failed"
    error: Optional[str]
    overrides: list[str]
    metrics: dict[str, Any]
    items: Optional[Items] = None
    items_problem: Optional[str] = None  # why `items` is None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def is_job_dir(path: Path) -> bool:
    return (path / "status.json").is_file() or (path / "metrics.json").is_file()


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job dirs at any depth below the sweep dir, without descending into a job's own sub-dirs
    (`wandb/`, `quantized/`, `.hydra/`) or hidden dirs (temporary files of atomic writes)."""
    found: list[Path] = []

    def walk(d: Path) -> None:
        for p in sorted(d.iterdir()):
            if not p.is_dir() or p.is_symlink() or p.name.startswith("."):
                continue
            if d == sweep_dir and p.name == "wandb":
                continue  # the report's own wandb run
            if is_job_dir(p):
                found.append(p)
            else:
                walk(p)

    walk(sweep_dir)
    return found


def latest_sweep(multirun: Path) -> Path:
    """The newest `multirun/<date>/<time>` holding job dirs (names are Hydra's sortable timestamps)."""
    sweeps = sorted(
        (t for d in (multirun.iterdir() if multirun.is_dir() else ()) if d.is_dir() and not d.name.startswith(".")
         for t in d.iterdir() if t.is_dir() and not t.name.startswith(".")),
        key=lambda t: (t.parent.name, t.name),
    )
    for sweep in reversed(sweeps):
        if find_job_dirs(sweep):
            return sweep
    raise RagqaError(f"no sweep with job dirs under {multirun}/ (run a sweep with -m, or pass SWEEP_DIR)")


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as ex:
        raise RagqaError(f"{path.name}: unreadable ({ex})") from ex
    if not isinstance(data, dict):
        raise RagqaError(f"{path.name}: not a JSON object")
    return data


def _read_overrides(job_dir: Path, status: dict) -> list[str]:
    """`.hydra/overrides.yaml` (written when the job starts), else the copy in status.json."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if path.is_file():
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(data, list):
                return [str(o) for o in data]
        except (OSError, yaml.YAMLError):
            pass
    return [str(o) for o in status.get("overrides") or []]


def read_items(path: Path) -> Items:
    if not path.is_file():
        raise RagqaError("no predictions.jsonl")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as ex:
                    raise RagqaError(f"predictions.jsonl:{i}: malformed JSON ({ex})") from ex
                if not isinstance(row, dict):
                    raise RagqaError(f"predictions.jsonl:{i}: not a JSON object")
                rows.append(row)
    if not rows:
        raise RagqaError("predictions.jsonl is empty")
    qids = [str(r.get("qid")) for r in rows]
    if len(set(qids)) != len(qids):
        raise RagqaError("duplicate qids in predictions.jsonl")
    flags = {
        key: [bool(r[flag]) and not r.get("failed") for r in rows]
        for key, flag in ACCURACY_FLAGS.items() if all(flag in r for r in rows)
    }
    return Items(qids=qids, flags=flags)


def load_job(sweep_dir: Path, job_dir: Path) -> Job:
    name = job_dir.relative_to(sweep_dir).as_posix()
    m = re.match(r"(\d+)_", name)
    job = Job(name=name, num=int(m.group(1)) if m else None, dir=job_dir, status="failed", error=None,
              overrides=[], metrics={})
    try:
        status = _read_json(job_dir / "status.json") or {}
        job.overrides = _read_overrides(job_dir, status)
        metrics = _read_json(job_dir / "metrics.json")
    except RagqaError as ex:
        job.error = str(ex)
        return job
    if metrics is None:
        job.error = status.get("error") or f"no metrics.json (status {status.get('status', 'unknown')})"
        return job
    job.status, job.metrics = "ok", metrics
    try:
        job.items = read_items(job_dir / "predictions.jsonl")
    except RagqaError as ex:
        job.items_problem = str(ex)
    return job


def load_sweep(sweep_dir: str | Path) -> list[Job]:
    """Every job of the sweep, in job-number order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise RagqaError(f"{sweep_dir}: no such sweep directory (pass multirun/<date>/<time>)")
    jobs = [load_job(sweep_dir, d) for d in find_job_dirs(sweep_dir)]
    if not jobs:
        raise RagqaError(f"{sweep_dir}: no job dirs (none holds a status.json or metrics.json)")
    return sorted(jobs, key=lambda j: (j.num is None, j.num or 0, j.name))


# ---------------------------------------------------------------- references and comparisons

def default_ref(job: Job, jobs: Sequence[Job]) -> Optional[Job]:
    """The unquantized job of the same training run and model; for an API model, the first unquantized
    local job (the API row is the baseline beside the local model); else the first finished job."""
    finished = [j for j in jobs if j.ok]
    if is_api_model(job.metrics):
        same = [j for j in finished if j.metrics.get("quant") == "none" and not is_api_model(j.metrics)]
    else:
        same = [j for j in finished if j.metrics.get("quant") == "none"
                and all(j.metrics.get(k) == job.metrics.get(k) for k in ("train_key", "model"))]
    return (same or finished or [None])[0]


def resolve_ref(spec: str, jobs: Sequence[Job]) -> Job:
    """`--ref`: a job's name (its dir relative to the sweep dir) or its leading number."""
    matches = [j for j in jobs if j.name == spec or (spec.isdigit() and j.num == int(spec))]
    if len(matches) != 1:
        known = ", ".join(j.name for j in jobs)
        what = "no such job" if not matches else "ambiguous"
        raise RagqaError(f"--ref {spec}: {what} in this sweep (jobs: {known})")
    if not matches[0].ok:
        raise RagqaError(f"--ref {spec}: job {matches[0].name} failed ({matches[0].error}); pick a finished job")
    return matches[0]


def compare(ref: Job, job: Job) -> dict[str, Any]:
    """McNemar per paired accuracy, items matched by qid; `not_paired` says why when they cannot be."""
    if job.items is None:
        return {"not_paired": job.items_problem}
    if ref.items is None:
        return {"not_paired": f"reference: {ref.items_problem}"}
    if set(ref.items.qids) != set(job.items.qids):
        shared = len(set(ref.items.qids) & set(job.items.qids))
        return {"not_paired": f"items differ ({len(job.items.qids)} vs {len(ref.items.qids)} questions, "
                              f"{shared} shared)"}
    pos = {q: i for i, q in enumerate(job.items.qids)}
    order = [pos[q] for q in ref.items.qids]
    paired = {}
    for key in PAIRED:
        if key in ref.items.flags and key in job.items.flags:
            t = mcnemar(ref.items.flags[key], [job.items.flags[key][i] for i in order])
            paired[key] = {"right_to_wrong": t.b, "wrong_to_right": t.c, "p": t.p}
    return {"paired": paired, "not_paired": None}


# ---------------------------------------------------------------- rows

def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def varying_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value is not the same in every job (a key missing in a job counts as different)."""
    values: dict[str, set[str]] = {}
    for j in jobs:
        for o in j.overrides:
            values.setdefault(_override_key(o), set()).add(o)
    in_every_job = set.intersection(*({_override_key(o) for o in j.overrides} for j in jobs)) if jobs else set()
    return [k for k, v in values.items() if len(v) > 1 or k not in in_every_job]


def _labels(jobs: Sequence[Job], keys: list[str]) -> dict[str, str]:
    """Short names for plots and verdicts: the varying values ("bnb") or `key=value`s when several keys vary."""
    labels = {}
    for j in jobs:
        own = [o for o in j.overrides if _override_key(o) in keys]
        if len(keys) == 1 and own:
            labels[j.name] = own[0].split("=", 1)[-1]
        else:
            labels[j.name] = ", ".join(own) or ("defaults" if keys else j.name)
    if len(set(labels.values())) < len(labels):  # same overrides twice: the job number tells them apart
        labels = {j.name: f"{j.num if j.num is not None else j.name}: {labels[j.name]}" for j in jobs}
    return labels


def build_rows(jobs: Sequence[Job], ref: Optional[str] = None) -> list[dict]:
    """One JSON-ready dict per job: the job's metrics.json plus `job`, `status`, `error`, `overrides`,
    `varying`, `label`, `<accuracy>_ci` ([lo, hi] or None), `ref`, `ref_label`, `paired`, `not_paired`."""
    fixed_ref = resolve_ref(ref, jobs) if ref is not None else None
    keys = varying_keys(jobs)
    labels = _labels(jobs, keys)
    rows = []
    for j in jobs:
        row: dict[str, Any] = {"job": j.name, **j.metrics, "job_num": j.num, "status": j.status, "error": j.error,
                               "overrides": j.overrides,
                               "varying": [o for o in j.overrides if _override_key(o) in keys],
                               "label": labels[j.name]}
        if j.ok:
            for key in ACCURACY_FLAGS:
                flags = j.items.flags.get(key) if j.items else None
                row[f"{key}_ci"] = list(bootstrap_ci(flags, level=CI_LEVEL)) if flags else None
            r = fixed_ref or default_ref(j, jobs)
            row.update({"ref": r.name, "ref_label": labels[r.name], "paired": {}, "not_paired": None})
            if r is not j:
                row.update(compare(r, j))
        rows.append(row)
    return rows


def collect(sweep_dir: str | Path, ref: Optional[str] = None) -> list[dict]:
    """The report's rows for a sweep dir (see `build_rows`)."""
    return build_rows(load_sweep(sweep_dir), ref)


# ---------------------------------------------------------------- rendering

def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(map(str, v)) or "–"
    return str(v)


def fmt_accuracy(row: dict, key: str) -> str:
    """`0.283 [0.237, 0.331]`: the value from metrics.json with its bootstrap interval."""
    v, ci = row.get(key), row.get(f"{key}_ci")
    if v is None:
        return "–"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def fmt_p(p: float) -> str:
    return f"{p:.2g}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


MD_METRICS = [
    ("n", "n"), ("n_failed", "failed"), ("eval_seconds", "eval s"), ("latency_ms_p50", "latency p50 ms"),
    ("latency_ms_p95", "latency p95 ms"), ("gpu_mem_load_mib", "GPU load MiB"), ("gpu_mem_peak_mib", "GPU peak MiB"),
    ("model_size_mib", "size MiB"), ("quant_seconds", "quantize s"), ("quant_kernel", "kernel"),
]


def _md_comparison(row: dict) -> list[str]:
    if row["ref"] == row["job"]:
        return ["reference", "", "", ""]
    t = (row.get("paired") or {}).get(PRIMARY)
    if t is None:
        return [row["ref"], f"not paired: {row['not_paired']}", "", ""]
    return [row["ref"], str(t["right_to_wrong"]), str(t["wrong_to_right"]), fmt_p(t["p"])]


def verdict(row: dict) -> Optional[str]:
    """The plain-language line for a row compared with its reference (None for a reference or failed job)."""
    if row.get("status") != "ok" or row["ref"] == row["job"]:
        return None
    head = f"{row['label']} vs {row['ref_label']}"
    t = (row.get("paired") or {}).get(PRIMARY)
    if t is None:
        return f"{head}: not paired: {row['not_paired']}"
    meaning = f"a real difference at α={ALPHA:g}" if t["p"] < ALPHA else "not distinguishable from no change"
    return (f"{head}: {t['right_to_wrong']} right→wrong, {t['wrong_to_right']} wrong→right, "
            f"McNemar p={fmt_p(t['p'])} — {meaning}")


def markdown(rows: list[dict], plot_files: Sequence[str] = (), title: Optional[str] = None) -> str:
    header = (["job", "overrides"] + [ACCURACY_FLAGS[k].replace("_normalized", " (norm)") for k in ACCURACY_FLAGS]
              + [h for _, h in MD_METRICS] + ["vs", "right→wrong", "wrong→right", "McNemar p"])
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["job"], fmt(r.get("varying"))]
        if r.get("status") == "ok":
            cells += [fmt_accuracy(r, k) for k in ACCURACY_FLAGS] + [fmt(r.get(k)) for k, _ in MD_METRICS]
            cells += _md_comparison(r)
        else:
            cells += [f"failed: {r.get('error')}"] + [""] * (len(header) - 3)
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    verdicts = [v for v in map(verdict, rows) if v]
    if verdicts:
        lines += [""] + [f"- {v}" for v in verdicts]
    lines += ["", f"Accuracy intervals: {CI_LEVEL:.0%} percentile bootstrap over questions ({BOOTSTRAP_RESAMPLES} "
                  f"resamples, seed {BOOTSTRAP_SEED}). Comparisons: exact match, paired by qid, exact two-sided "
                  f"McNemar test (binomial on the answers that flipped)."]
    lines += [f"\n![{Path(p).stem}]({Path(p).name})" for p in plot_files]
    return "\n".join(lines) + "\n"


def flat_record(row: dict) -> dict[str, Any]:
    """One row as flat scalars: the CSV line and the wandb table row."""
    rec: dict[str, Any] = {"job": row["job"], "job_num": row.get("job_num"), "status": row.get("status"),
                           "error": row.get("error"), "overrides": "; ".join(row.get("varying") or []),
                           "label": row.get("label")}
    for key in ACCURACY_FLAGS:
        ci = row.get(f"{key}_ci") or (None, None)
        rec.update({key: row.get(key), f"{key}_lo": ci[0], f"{key}_hi": ci[1]})
    for key in ("n", "n_failed", "eval_seconds", "latency_ms_p50", "latency_ms_p95", "gpu_mem_load_mib", "gpu_mem_peak_mib",
                "rss_peak_mib", "model_size_mib", "quant_seconds", "quant_kernel", "quant", "model", "model_source", "train_key"):
        rec[key] = row.get(key)
    rec["ref"] = row.get("ref")
    for key in PAIRED:
        t = (row.get("paired") or {}).get(key) or {}
        rec.update({f"{key}_right_to_wrong": t.get("right_to_wrong"),
                    f"{key}_wrong_to_right": t.get("wrong_to_right"), f"{key}_mcnemar_p": t.get("p")})
    rec["not_paired"] = row.get("not_paired")
    return rec


def csv_text(rows: list[dict]) -> str:
    records = [flat_record(r) for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    return buf.getvalue()


# ---------------------------------------------------------------- wandb summary run

@dataclass
class WandbTarget:
    mode: str
    project: str = "ragqa_exp"
    entity: Optional[str] = None
    group: Optional[str] = None


def wandb_target(jobs: Sequence[Job], sweep_dir: Path, mode: Optional[str] = None) -> WandbTarget:
    """Follow the jobs: offline if any logged offline, else online if any did, else disabled; the group and
    project of the jobs' runs (the group defaults to the sweep dir's name, as the jobs' does)."""
    if mode is None:
        modes = {j.metrics.get("wandb_mode") for j in jobs}
        mode = next((m for m in ("offline", "online") if m in modes), "disabled")
    target = WandbTarget(mode=mode, group=sweep_dir.name)
    first = next((j for j in jobs if j.ok), None)
    if first is not None:
        cfg = _job_wandb_config(first.dir)
        target.project = cfg.get("project") or target.project
        target.entity = cfg.get("entity")
        target.group = first.metrics.get("wandb_group") or cfg.get("group") or target.group
    return target


def _job_wandb_config(job_dir: Path) -> dict:
    """The `wandb:` section of the job's composed config (.hydra/config.yaml), {} when unreadable."""
    import yaml

    try:
        cfg = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
        return dict(cfg.get("wandb") or {})
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return {}


def log_to_wandb(target: WandbTarget, sweep_dir: Path, rows: list[dict], plot_files: Sequence[Path],
                 config: dict) -> None:
    """One summary run (`report/table` + the plots). A wandb problem is a warning, never a failed report."""
    if target.mode == "disabled":
        return
    os.environ.setdefault("WANDB_SILENT", "true")
    run = None
    try:
        import wandb

        records = [flat_record(r) for r in rows]
        run = wandb.init(
            project=target.project, entity=target.entity, group=target.group, job_type="report", name="report",
            dir=str(sweep_dir), mode=target.mode, config=config, reinit="finish_previous",
            settings=wandb.Settings(console="off", silent=True, init_timeout=90),
        )
        table = wandb.Table(columns=list(records[0]), data=[list(r.values()) for r in records],
                            allow_mixed_types=True)
        run.log({"report/table": table, **{f"report/{Path(p).stem}": wandb.Image(str(p)) for p in plot_files}})
    except Exception as ex:  # noqa: BLE001 - the report's files are already written
        log.warning("wandb report run failed (%s: %s); report files are still in %s", type(ex).__name__, ex,
                    sweep_dir)
    finally:
        if run is not None:
            try:
                run.finish()
            except Exception as ex:  # noqa: BLE001
                log.warning("wandb finish failed: %s", ex)


# ---------------------------------------------------------------- command line

def write_report(sweep_dir: Path, rows: list[dict]) -> tuple[str, list[Path]]:
    """report.md, report.csv and the plots, each written atomically; returns the Markdown and the plots."""
    plot_files = plots.write_plots(rows, sweep_dir)
    md = markdown(rows, [p.name for p in plot_files], title=f"Sweep report: {sweep_dir}")
    write_text_atomic(sweep_dir / REPORT_MD, md)
    write_text_atomic(sweep_dir / REPORT_CSV, csv_text(rows))
    return md, plot_files


def run(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ragqa_exp.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", nargs="?", help="multirun/<date>/<time> (default: the latest under ./multirun)")
    ap.add_argument("--ref", metavar="JOB", help="reference job for every row: its dir name or leading number")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of Markdown")
    ap.add_argument("--wandb-mode", choices=WANDB_MODES,
                    help="log the summary run online/offline, or not (default: follow the jobs' wandb_mode)")
    a = ap.parse_args(argv)
    sweep_dir = Path(a.sweep_dir) if a.sweep_dir else latest_sweep(Path("multirun"))
    jobs = load_sweep(sweep_dir)
    rows = build_rows(jobs, a.ref)
    md, plot_files = write_report(sweep_dir, rows)
    sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=1, default=str) + "\n" if a.json else md)
    sys.stdout.flush()
    config = {"sweep_dir": str(sweep_dir), "ref": a.ref or "default", "jobs": [j.name for j in jobs],
              "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED, "alpha": ALPHA}
    log_to_wandb(wandb_target(jobs, sweep_dir, a.wandb_mode), sweep_dir, rows, plot_files, config)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """User errors (no sweep dir, unknown --ref) are one `error:` line and exit status 2 (`cli.guarded`)."""
    from ragqa_exp.cli import guarded

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    guarded(lambda: run(argv))


if __name__ == "__main__":
    main()
