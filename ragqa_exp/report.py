"""Collect a sweep's jobs into one table: `python -m ragqa_exp.report multirun/<date>/<time> [--json]`.

One row per job directory (metrics.json, or the one-line error from status.json for a failed job)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [
    ("job", "job"), ("quant", "quant"), ("exact_match", "exact"), ("partial_match", "partial"),
    ("exact_match_normalized", "exact_norm"), ("n", "n"), ("eval_seconds", "eval_s"),
    ("latency_ms_p50", "lat_p50_ms"), ("model_size_mib", "size_MiB"), ("quant_seconds", "quant_s"),
    ("quant_kernel", "kernel"), ("gpu_mem_load_mib", "gpu_load_MiB"), ("gpu_mem_peak_mib", "gpu_peak_MiB"),
    ("torch_peak_allocated_mib", "torch_alloc_MiB"), ("rss_peak_mib", "rss_MiB"), ("train_seconds", "train_s"),
    ("reused", "reused"),
]


def collect(sweep_dir: str | Path) -> list[dict]:
    if not Path(sweep_dir).is_dir():
        raise SystemExit(f"error: {sweep_dir}: no such sweep directory (pass multirun/<date>/<time>)")
    rows = []
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        metrics, status = job / "metrics.json", job / "status.json"
        if metrics.is_file():
            rows.append({"job": job.name, **json.loads(metrics.read_text(encoding="utf-8"))})
        elif status.is_file():
            st = json.loads(status.read_text(encoding="utf-8"))
            rows.append({"job": job.name, "error": st.get("error"), "status": st.get("status")})
    return rows


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ",".join(map(str, v)) or "–"
    return str(v)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['job']} | failed: {r['error']} |" + " |" * (len(COLUMNS) - 2))
        else:
            lines.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("sweep_dir")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a markdown table")
    a = ap.parse_args()
    rows = collect(a.sweep_dir)
    print(json.dumps(rows, ensure_ascii=False, indent=1) if a.json else markdown(rows))


if __name__ == "__main__":
    main()
