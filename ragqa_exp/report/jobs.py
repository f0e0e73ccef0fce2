"""Finding a sweep's job dirs and reading what each job left: overrides, metrics.json, per-question flags."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ragqa_exp.errors import RagqaError

# metrics.json accuracy key -> its per-item flag in predictions.jsonl
ACCURACY_FLAGS = {
    "exact_match": "exact", "partial_match": "partial",
    "exact_match_normalized": "exact_normalized", "partial_match_normalized": "partial_normalized",
}


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
