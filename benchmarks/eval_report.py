"""Markdown tables from eval_speed.py JSON files (one per method) and the pipeline's metrics:
  python benchmarks/eval_report.py RESULTS_DIR > REPORT.md"""
from __future__ import annotations

import json
import sys
from pathlib import Path

STUDY_RTX4090_S = {"none": 4146, "bnb": 397, "gptq": 211, "awq": 301}  # the study's eval seconds, 980 items
BF16_PEAK_TFLOPS = 989  # H100/H200 SXM dense bf16, vendor datasheet


def fmt(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main() -> None:
    d = Path(sys.argv[1])
    rows = [json.loads(p.read_text()) for p in sorted(d.glob("eval_*.json"))]
    order = {"none": 0, "bnb": 1, "gptq": 2, "awq": 3}
    rows.sort(key=lambda r: order.get(r["quant"], 9))
    if not rows:
        raise SystemExit(f"no eval_*.json in {d}")
    r0 = rows[0]
    print(f"{r0['n_prompts']} prompts (mean {r0['prompt_tokens_mean']:.0f} tokens), {r0['max_new_tokens']} new tokens, "
          f"{r0['device']}, torch {r0['torch']}; medians of {len(next(iter(r0['variants'].values()))['eval_seconds_runs'])} runs.\n")
    print("| method | kernel | KV cache | eval s (median) | runs | p50 ms/q | p95 ms/q | prompt tok/s | dense TFLOP/s (% of 989) "
          "| NVML MiB load / peak | torch alloc peak MiB | study (RTX 4090) s | vs study |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lm, em = r["load_memory"], r["eval_memory"]
        for variant, v in r["variants"].items():
            study = STUDY_RTX4090_S.get(r["quant"])
            print(f"| {r['quant']} | {r['kernel']} | {variant} | {v['eval_seconds_median']:.2f} | "
                  f"{', '.join(f'{x:.2f}' for x in v['eval_seconds_runs'])} | {v['latency_ms_p50']:.1f} | {v['latency_ms_p95']:.1f} | "
                  f"{v['prompt_tokens_per_s']:,} | {v['dense_tflops_per_s']} ({100 * v['dense_tflops_per_s'] / BF16_PEAK_TFLOPS:.0f}%) | "
                  f"{fmt(lm.get('gpu_mem_process_mib_end'), 0)} / {fmt(em.get('gpu_mem_process_mib_peak'), 0)} | "
                  f"{fmt(em.get('torch_peak_allocated_mib'), 0)} | {study} | {study / v['eval_seconds_median']:.1f}x faster |")
    print("\n| method | old path: prompts, batch | old path s | s/prompt | projected s for all | fast path (dynamic) s | speed-up | answers equal old vs fast |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        o = r.get("old_path")
        if o:
            fast = r["variants"].get("dynamic", next(iter(r["variants"].values())))["eval_seconds_median"]
            print(f"| {r['quant']} | {o['prompts']}, {o['batch_size']} | {o['seconds']:.2f} | {o['seconds_per_prompt']:.3f} | "
                  f"{o['projected_seconds_all_prompts']:.0f} | {fast:.2f} | {o['projected_seconds_all_prompts'] / fast:.1f}x | "
                  f"{o['answers_equal_to_fast_path']:.2f} |")
    for r in rows:
        b = r.get("batch1_agreement")
        if b:
            print(f"\nBatch-1 greedy vs fast path ({r['quant']}, {b['prompts']} prompts): answers equal {b['answers_equal']:.2f}, "
                  f"raw generations equal {b['raw_equal']:.2f}.")


if __name__ == "__main__":
    main()
