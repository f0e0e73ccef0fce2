"""AWQ's clip search on CPU: gptqmodel 7.6's `AWQProcessor._compute_best_clip` vs ragqa_exp's matmul version
(`ragqa_exp/quantize/_awq_clip.py`), one call per projection shape of the embedded Gemma 3 270M, bf16 weights,
512 calibration tokens (what the search samples), group size 128; median of --repeat calls each.

    python benchmarks/awq_clip_search.py --repeat 3 --out benchmarks/results/awq_clip_search.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SHAPES = {"q_proj": (1024, 640), "k_proj/v_proj": (256, 640), "o_proj": (640, 1024), "gate_proj/up_proj": (2048, 640),
          "down_proj": (640, 2048)}  # (out, in) of Gemma 3 270M's projections


def seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch
    from gptqmodel.looper.awq_processor import AWQProcessor

    from ragqa_exp.quantize._awq_clip import _compute_best_clip, clip_search_host

    host = clip_search_host(group_size=128)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, (out_f, in_f) in SHAPES.items():
        w = torch.randn(out_f, in_f, generator=gen).bfloat16()
        x = torch.randn(args.tokens, in_f, generator=gen).bfloat16()
        lib = seconds(lambda: AWQProcessor._compute_best_clip(host, w, x), args.repeat)
        ours = seconds(lambda: _compute_best_clip(host, w, x), args.repeat)
        row = {"projection": name, "shape": [out_f, in_f], "tokens": args.tokens, "gptqmodel_s": round(lib, 3),
               "matmul_s": round(ours, 3), "speedup": round(lib / ours, 1), "threads": torch.get_num_threads()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
