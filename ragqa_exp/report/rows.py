"""The report's rows: each job's metrics with its accuracy intervals and, against its reference, the paired
comparison (McNemar, paired bootstrap interval of the difference); the rows' McNemar p-values on the
primary metric are Holm-adjusted together (one family: the verdicts under the table)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ragqa_exp.report.jobs import ACCURACY_FLAGS, Job, load_sweep
from ragqa_exp.report.refs import default_ref, ref_differs, resolve_ref
from ragqa_exp.report.swept import Swept, labels, override_key, swept
from ragqa_exp.stats import bootstrap_ci, holm, mcnemar, paired_bootstrap_ci

PRIMARY = "exact_match"  # the study's metric: the one the plain-language verdict is about
PAIRED = ("exact_match", "partial_match")
ALPHA = 0.05
CI_LEVEL = 0.95


def compare(ref: Job, job: Job) -> dict[str, Any]:
    """McNemar and the paired difference's interval per paired accuracy, items matched by qid; `not_paired`
    says why when they cannot be."""
    if not ref.ok:
        return {"not_paired": f"reference {ref.name} failed ({ref.error})"}
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
            ref_flags, flags = ref.items.flags[key], [job.items.flags[key][i] for i in order]
            t = mcnemar(ref_flags, flags)
            paired[key] = {"right_to_wrong": t.b, "wrong_to_right": t.c, "p": t.p,
                           "diff": (sum(flags) - sum(ref_flags)) / len(flags),
                           "diff_ci": list(paired_bootstrap_ci(ref_flags, flags, level=CI_LEVEL))}
    return {"paired": paired, "not_paired": None}


def adjust_for_multiple_comparisons(rows: list[dict]) -> int:
    """Adds `p_holm` to each row's primary paired test (Holm over all of them); returns their number."""
    tests = [r["paired"][PRIMARY] for r in rows if PRIMARY in (r.get("paired") or {})]
    for t, p in zip(tests, holm([t["p"] for t in tests])):
        t["p_holm"] = p
    return len(tests)


def build_rows(jobs: Sequence[Job], ref: Optional[str] = None, sweep_dir: Optional[Path] = None) -> list[dict]:
    """One JSON-ready dict per job: the job's metrics.json plus `job`, `status`, `error`, `overrides`,
    `varying`, `label`, `<accuracy>_ci` ([lo, hi] or None), `ref`, `ref_differs` (the reference's overrides
    that differ from the job's), `paired` ({accuracy: right_to_wrong, wrong_to_right, p, diff, diff_ci;
    p_holm on the primary one}) and `not_paired`."""
    fixed_ref = resolve_ref(ref, jobs) if ref is not None else None
    sw: Swept = swept(jobs, sweep_dir)
    names = labels(jobs, sw.keys)
    rows = []
    for j in jobs:
        row: dict[str, Any] = {"job": j.name, **j.metrics, "job_num": j.num, "status": j.status, "error": j.error,
                               "overrides": j.overrides,
                               "varying": [o for o in j.overrides if override_key(o) in sw.keys],
                               "label": names[j.name]}
        if j.ok:
            for key in ACCURACY_FLAGS:
                flags = j.items.flags.get(key) if j.items else None
                row[f"{key}_ci"] = list(bootstrap_ci(flags, level=CI_LEVEL)) if flags else None
            r = fixed_ref or default_ref(j, jobs, sw)
            row.update({"ref": r.name, "ref_differs": ref_differs(j, r, sw), "paired": {}, "not_paired": None})
            if r is not j:
                row.update(compare(r, j))
        rows.append(row)
    adjust_for_multiple_comparisons(rows)
    return rows


def collect(sweep_dir: str | Path, ref: Optional[str] = None) -> list[dict]:
    """The report's rows for a sweep dir (see `build_rows`)."""
    return build_rows(load_sweep(sweep_dir), ref, Path(sweep_dir))
