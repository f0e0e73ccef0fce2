"""The study sweep's per-stage table (issue 16) and its stop-and-resume log, from what the sweep wrote.

    python benchmarks/study_sweep_table.py SWEEP_DIR --cache CACHE --table        # Markdown, vs the targets
    python benchmarks/study_sweep_table.py SWEEP_DIR --cache CACHE --json         # the same rows, raw
    python benchmarks/study_sweep_table.py SWEEP_DIR --cache CACHE --resume-log F --call-exit RC --call-seconds S
        # append one line to F: this call's exit and seconds, and the state of every job and cache entry

Everything is read from files (jobs' status.json / metrics.json, the train entry's train_result.json or its
`.partial` checkpoints, quant entries), so it also describes a sweep that was stopped half-way.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

# the study's memory column (RTX 4090, GB as printed there), and issue 16's targets on one H200
STUDY_MEMORY_GB = {"none": 10.0, "bnb": 3.8, "gptq": 4.7, "awq": 5.9}
TARGETS = {"sft_seconds_per_step": 0.8, "calibration_seconds": 300.0, "sweep_compute_seconds": 1800.0}
STUDY_TRAIN_EXAMPLES = 2939  # JAQKET rows the study trained on (one epoch); projected from our s/step


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def jobs(sweep: Path) -> list[dict[str, Any]]:
    out = []
    for d in sorted((p for p in sweep.iterdir() if p.is_dir() and p.name[:1].isdigit()),
                    key=lambda p: int(p.name.split("_", 1)[0])):
        status, metrics = read_json(d / "status.json") or {}, read_json(d / "metrics.json")
        overrides = status.get("overrides") or []
        quant = next((o.split("=", 1)[1] for o in overrides if o.startswith("quant=")), "none")
        partial = d / "predictions.partial.jsonl"
        out.append({"job": d.name, "quant": quant, "status": "ok" if metrics else status.get("status", "not started"),
                    "error": status.get("error"), "metrics": metrics,
                    "eval_items_in_partial": sum(1 for _ in partial.open(encoding="utf-8")) if partial.is_file() else 0})
    return out


def train_steps(result: dict) -> Optional[int]:
    steps = [h.get("step") for h in result.get("log_history", []) if h.get("step") is not None]
    return max(steps) if steps else None


def cache_state(cache: Path) -> dict[str, Any]:
    """Each train/quant entry: published, or a build in progress (.partial) with its newest checkpoint step."""
    state: dict[str, Any] = {}
    for stage in ("train", "quant"):
        for p in sorted((cache / stage).glob("*")) if (cache / stage).is_dir() else []:
            if p.name.endswith(".lock"):
                continue
            if p.name.endswith(".partial"):
                ckpts = sorted(int(c.name.split("-")[1]) for c in (p / "trainer").glob("checkpoint-*")
                               if c.name.split("-")[1].isdigit())
                state[f"{stage}/{p.name}"] = {"state": "partial", "checkpoint_steps": ckpts}
            elif ".corrupt-" in p.name:
                state[f"{stage}/{p.name}"] = {"state": "set aside"}
            else:
                state[f"{stage}/{p.name}"] = {"state": "published"}
    return state


def rows(sweep: Path, cache: Path) -> dict[str, Any]:
    js = jobs(sweep)
    out_rows = []
    sft = None
    for j in js:
        m = j["metrics"] or {}
        row = {"job": j["job"], "quant": j["quant"], "status": j["status"], "error": j["error"]}
        for k in ("train_seconds", "train_resumed_from_step", "quant_seconds", "quant_kernel", "eval_seconds",
                  "eval_resumed_items", "gpu_mem_load_mib", "gpu_mem_peak_mib", "torch_peak_allocated_mib",
                  "torch_peak_reserved_mib", "model_size_mib", "exact_match", "n", "reused", "gpu_name"):
            row[k] = m.get(k)
        row["study_memory_gb"] = STUDY_MEMORY_GB.get(j["quant"])
        out_rows.append(row)
        if sft is None and m.get("train_key"):
            res = read_json(cache / "train" / m["train_key"] / "train_result.json")
            steps = train_steps(res) if res else None
            if res and steps:
                sps = res["train_seconds"] / max(1, steps - (res.get("resumed_from_step") or 0))
                sft = {"steps": steps, "train_seconds": res["train_seconds"],
                       "resumed_from_step": res.get("resumed_from_step"), "seconds_per_step": round(sps, 4),
                       "projected_study_epoch_s": round(sps * STUDY_TRAIN_EXAMPLES / 4, 1)}
    compute = sum((r["train_seconds"] or 0) if "train" not in (r["reused"] or []) else 0 for r in out_rows) \
        + sum((r["quant_seconds"] or 0) if "quantize" not in (r["reused"] or []) else 0 for r in out_rows) \
        + sum(r["eval_seconds"] or 0 for r in out_rows)
    return {"rows": out_rows, "sft": sft, "stage_compute_seconds": round(compute, 1), "targets": TARGETS}


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, list):
        return ",".join(map(str, v)) or "–"
    return str(v)


def table(data: dict[str, Any]) -> str:
    cols = ["quant", "status", "train_seconds", "quant_seconds", "quant_kernel", "eval_seconds", "gpu_mem_load_mib",
            "gpu_mem_peak_mib", "torch_peak_allocated_mib", "study_memory_gb", "model_size_mib", "exact_match", "reused"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in data["rows"]]
    t, sft = data["targets"], data["sft"]
    lines.append("")
    if sft:
        ok = "meets" if sft["seconds_per_step"] <= t["sft_seconds_per_step"] else "misses"
        lines.append(f"- SFT: {sft['steps']} steps, {sft['seconds_per_step']} s/step ({ok} the ≤ {t['sft_seconds_per_step']} s "
                     f"target); the study's epoch of {STUDY_TRAIN_EXAMPLES} examples ≈ {sft['projected_study_epoch_s']} s")
    for r in data["rows"]:
        if r["quant"] in ("gptq", "awq") and r["quant_seconds"] is not None:
            ok = "meets" if r["quant_seconds"] <= t["calibration_seconds"] else "misses"
            lines.append(f"- {r['quant']} calibration {r['quant_seconds']:.1f} s ({ok} the ≤ {t['calibration_seconds']:.0f} s target)")
    ok = "meets" if data["stage_compute_seconds"] <= t["sweep_compute_seconds"] else "misses"
    lines.append(f"- stage compute (train + quantizations + evals, each once) {data['stage_compute_seconds']} s ({ok} the "
                 f"≤ {t['sweep_compute_seconds']:.0f} s target); process start, loads and the base model are outside it")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--table", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--resume-log", type=Path)
    ap.add_argument("--call-exit", type=int)
    ap.add_argument("--call-seconds", type=int)
    a = ap.parse_args(argv)
    if not a.sweep.is_dir():
        sys.exit(f"error: {a.sweep}: no sweep dir yet")
    if a.resume_log:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "call_exit": a.call_exit, "call_seconds": a.call_seconds,
                "jobs": [{k: j[k] for k in ("job", "quant", "status", "eval_items_in_partial")}
                         | {k: (j["metrics"] or {}).get(k) for k in ("reused", "train_resumed_from_step", "eval_resumed_items")}
                         for j in jobs(a.sweep)],
                "cache": cache_state(a.cache)}
        with a.resume_log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line))
    data = rows(a.sweep, a.cache)
    if a.json:
        print(json.dumps(data, indent=1))
    if a.table:
        print(table(data))


if __name__ == "__main__":
    main()
