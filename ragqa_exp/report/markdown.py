"""The report as Markdown: one table row per job, one plain-language verdict per compared job, then the
notes for what is rarely set (noise floor of the references and of any row whose own answers moved with the
batch, train/validation overlap, resumed evals, changed batch limits) and how the numbers were computed."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ragqa_exp.report.jobs import ACCURACY_FLAGS
from ragqa_exp.report.rows import ALPHA, CI_LEVEL, PRIMARY
from ragqa_exp.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

RESUMED, LIMITS_CHANGED = "†", "‡"  # footnote markers on a row's job cell

MD_METRICS = [
    ("n", "n"), ("n_failed", "failed"), ("eval_seconds", "eval s"), ("items_per_second", "items/s"),
    ("latency_ms_p50", "latency p50 ms"), ("latency_ms_p95", "latency p95 ms"), ("gpu_mem_load_mib", "GPU load MiB"),
    ("gpu_mem_peak_mib", "GPU peak MiB"), ("model_size_mib", "size MiB"), ("quant_seconds", "quantize s"),
    ("quant_kernel", "kernel"),
]
COMPARISON = ["vs", "right→wrong", "wrong→right", "Δ exact [95%]", "McNemar p", "Holm p"]


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


def fmt_diff(t: dict) -> str:
    """`-0.097 [-0.160, -0.033]`: the paired difference (job - reference) with its bootstrap interval."""
    lo, hi = t["diff_ci"]
    return f"{t['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def fmt_p(p: float) -> str:
    return f"{p:.2g}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _count(v: Any) -> int:
    """A count field that may hold the items themselves (a list) or be absent (old sweeps)."""
    if isinstance(v, (list, tuple, set, dict)):
        return len(v)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def resumed(row: dict) -> bool:
    return _count(row.get("eval_resumed_items")) > 0


def limits_changed(row: dict) -> bool:
    return row.get("eval_batch_limits_changed") is True


def ref_text(row: dict) -> str:
    """The reference as its overrides that differ from the job's (`quant=none`), else its job name."""
    return ", ".join(row.get("ref_differs") or []) or row["ref"]


def own_text(row: dict) -> tuple[str, str]:
    """(the job's overrides on the keys where its reference differs, the job's other varying overrides)."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in row.get("ref_differs") or []}
    own = [o for o in row.get("varying") or [] if o.split("=", 1)[0].lstrip("+~") in keys]
    rest = [o for o in row.get("varying") or [] if o not in own]
    return ", ".join(own) or row["label"], ", ".join(rest)


def _md_comparison(row: dict) -> list[str]:
    if row["ref"] == row["job"]:
        return ["reference"] + [""] * (len(COMPARISON) - 1)
    t = (row.get("paired") or {}).get(PRIMARY)
    if t is None:
        return [ref_text(row), f"not paired: {row['not_paired']}"] + [""] * (len(COMPARISON) - 2)
    return [ref_text(row), str(t["right_to_wrong"]), str(t["wrong_to_right"]), fmt_diff(t), fmt_p(t["p"]),
            fmt_p(t["p_holm"])]


def verdict(row: dict) -> Optional[str]:
    """The plain-language line for a row compared with its reference (None for a reference or failed job):
    `neftune.alpha=5 vs neftune.alpha=0: ...`, with the other swept values in brackets in a multi-key sweep."""
    if row.get("status") != "ok" or row["ref"] == row["job"]:
        return None
    own, rest = own_text(row)
    head = f"{own} vs {ref_text(row)}" + (f" (at {rest})" if rest else "")
    t = (row.get("paired") or {}).get(PRIMARY)
    if t is None:
        return f"{head}: not paired: {row['not_paired']}"
    meaning = f"a real difference at α={ALPHA:g}" if t["p_holm"] < ALPHA else "not distinguishable from no change"
    noise = _count(row.get("eval_noise_changed"))
    return (f"{head}: {t['right_to_wrong']} right→wrong, {t['wrong_to_right']} wrong→right, "
            f"Δ exact {fmt_diff(t)}, McNemar p={fmt_p(t['p'])}, Holm p={fmt_p(t['p_holm'])} — {meaning}"
            + (f" (but {noise} of its own answers moved with the batch: see Notes)" if noise else ""))


NOISY = (" — answers are not reproducible on this device (eval.batch_plan=packed; on a GPU eval.deterministic=false, "
         "or a quant kernel whose results depend on the batch: GPTQ/AWQ on Marlin (quant.backend=marlin), LLM.int8 "
         "unless quant.int8_threshold=0; benchmarks/H200_BATCH_PLAN.md): part of each flip against this reference can be "
         "this noise, so read flip counts of that size as noise")


def notes(rows: list[dict]) -> list[str]:
    """Lines for what most rows lack: a compared row that decoded otherwise than its reference (on a GPU, auto runs
    LLM.int8 with outliers on the dynamic cache and the rest on the graph decode), noise floor of each reference
    row, and of any compared row whose own answers moved with the batch (a quant kernel can move them while its
    reference's stay), validation rows also in training, resumed evals (†) and batch limits changed after an
    out-of-memory (‡)."""
    refs = {r["ref"] for r in rows if r.get("status") == "ok"}
    by_job = {r["job"]: r for r in rows}
    out = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        decode, ref_decode = kv_cache(r), kv_cache(by_job.get(r["ref"], {}))
        if r["ref"] != r["job"] and decode and ref_decode and decode != ref_decode:
            out.append(f"{r['job']}: decoded with eval.kv_cache={decode}, its reference {ref_text(r)} with "
                       f"{ref_decode} (eval_plan.kv_cache): the two decodes can give other bf16 answers on the same "
                       "weights, so part of its flips can be the decode, not the model")
        checked, changed = _count(r.get("eval_noise_checked")), _count(r.get("eval_noise_changed"))
        if r["job"] in refs and checked:
            out.append(f"noise floor of {r['job']}: {changed} of {checked} answers changed under another batch "
                       "composition" + (NOISY if changed else ""))
        elif checked and changed:  # a compared row's own noise is not its reference's
            out.append(f"{r['job']}: {changed} of {checked} of its own answers changed "
                       f"under another batch composition (kernel {fmt(r.get('quant_kernel'))}): part of its flips "
                       f"against {ref_text(r)} can be this noise, not the model")
        by_qid, by_question = _count(r.get("data_overlap_qid")), _count(r.get("data_overlap_question"))
        if by_qid or by_question:
            out.append(f"{r['job']}: validation rows also in training: {by_qid} by qid, {by_question} by "
                       f"normalized question text (its accuracy is partly on seen questions)")
        if resumed(r):
            out.append(f"{RESUMED} {r['job']}: {_count(r['eval_resumed_items'])} of {fmt(r.get('n'))} answers taken "
                       f"from an interrupted earlier run; eval s, items/s and latency cover only the rest")
        if limits_changed(r):
            retries = r.get("eval_oom_retries")
            out.append(f"{LIMITS_CHANGED} {r['job']}: batch limits lowered after running out of memory"
                       + (f" ({retries} retries)" if retries else "") + "; later batches were smaller")
    return out


def kv_cache(row: dict) -> Optional[str]:
    """The decode a local row ran (metrics.json's eval_plan.kv_cache; None for API rows and older sweeps)."""
    return (row.get("eval_plan") or {}).get("kv_cache")


def methods(rows: list[dict], fixed_ref: bool) -> list[str]:
    n = sum(1 for r in rows if "p_holm" in ((r.get("paired") or {}).get(PRIMARY) or {}))
    lines = []
    if n:
        lines.append(f"Verdicts: Holm-adjusted over {n} comparison{'s' if n != 1 else ''} at α={ALPHA:g} "
                     f"(`McNemar p` raw, `Holm p` adjusted).")
    lines.append(
        ("References: `--ref` for every row. " if fixed_ref else
         "References: the job that differs only in one swept key, set to its first value (`vs` names it). ")
        + f"Accuracy intervals: {CI_LEVEL:.0%} percentile bootstrap over questions ({BOOTSTRAP_RESAMPLES} "
          f"resamples, seed {BOOTSTRAP_SEED}); Δ: the same, paired over questions. Comparisons: exact match, "
          f"paired by qid, exact two-sided McNemar test (binomial on the answers that flipped).")
    return lines


def markdown(rows: list[dict], plot_files: Sequence[str] = (), title: Optional[str] = None,
             fixed_ref: bool = False) -> str:
    header = (["job", "overrides"] + [ACCURACY_FLAGS[k].replace("_normalized", " (norm)") for k in ACCURACY_FLAGS]
              + [h for _, h in MD_METRICS] + COMPARISON)
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        marks = (f" {RESUMED}" if resumed(r) else "") + (f" {LIMITS_CHANGED}" if limits_changed(r) else "")
        cells = [r["job"] + marks, fmt(r.get("varying"))]
        if r.get("status") == "ok":
            cells += [fmt_accuracy(r, k) for k in ACCURACY_FLAGS] + [fmt(r.get(k)) for k, _ in MD_METRICS]
            cells += _md_comparison(r)
        else:
            cells += [f"failed: {r.get('error')}"] + [""] * (len(header) - 3)
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    verdicts = [v for v in map(verdict, rows) if v]
    if verdicts:
        lines += [""] + [f"- {v}" for v in verdicts]
    for line in methods(rows, fixed_ref):
        lines += ["", line]
    extra = notes(rows)
    if extra:
        lines += ["", "Notes:"] + [f"- {n}" for n in extra]
    lines += [f"\n![{Path(p).stem}]({Path(p).name})" for p in plot_files]
    return "\n".join(lines) + "\n"
