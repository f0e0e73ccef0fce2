"""Each row as flat scalars: the lines of report.csv and the rows of the wandb summary table."""
from __future__ import annotations

import csv
import io
from typing import Any

from ragqa_exp.report.jobs import ACCURACY_FLAGS
from ragqa_exp.report.rows import PAIRED, PRIMARY

METRIC_COLUMNS = (
    "n", "n_failed", "eval_seconds", "items_per_second", "tokens_per_second", "latency_ms_p50", "latency_ms_p95",
    "gpu_mem_load_mib", "gpu_mem_peak_mib", "rss_peak_mib", "model_size_mib", "quant_seconds", "quant_kernel", "quant",
    "model", "model_source", "train_key", "eval_resumed_items", "eval_batch_limits_changed", "eval_noise_checked",
    "eval_noise_changed", "data_overlap_qid", "data_overlap_question",
)


def flat_record(row: dict) -> dict[str, Any]:
    """One row as flat scalars (absent fields are None: old sweeps lack the newer ones)."""
    rec: dict[str, Any] = {"job": row["job"], "job_num": row.get("job_num"), "status": row.get("status"),
                           "error": row.get("error"), "overrides": "; ".join(row.get("varying") or []),
                           "label": row.get("label")}
    for key in ACCURACY_FLAGS:
        ci = row.get(f"{key}_ci") or (None, None)
        rec.update({key: row.get(key), f"{key}_lo": ci[0], f"{key}_hi": ci[1]})
    for key in METRIC_COLUMNS:
        v = row.get(key)
        rec[key] = len(v) if isinstance(v, (list, dict)) else v
    rec["ref"] = row.get("ref")
    rec["ref_differs"] = "; ".join(row.get("ref_differs") or [])
    for key in PAIRED:
        t = (row.get("paired") or {}).get(key) or {}
        lo, hi = t.get("diff_ci") or (None, None)
        rec.update({f"{key}_right_to_wrong": t.get("right_to_wrong"),
                    f"{key}_wrong_to_right": t.get("wrong_to_right"), f"{key}_diff": t.get("diff"),
                    f"{key}_diff_lo": lo, f"{key}_diff_hi": hi, f"{key}_mcnemar_p": t.get("p")})
        if key == PRIMARY:  # the Holm family: the verdicts
            rec[f"{key}_mcnemar_p_holm"] = t.get("p_holm")
    rec["not_paired"] = row.get("not_paired")
    return rec


def csv_text(rows: list[dict]) -> str:
    records = [flat_record(r) for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(records)
    return buf.getvalue()
