"""AWQ's torch-kernel dequantize per layer: gptqmodel 7.6's `dequantize_gemm` against ragqa_exp's
(`quantize/_awq_torch.py`: the same numbers without the gather), side by side on one device, at Llama-2-7B's
projection shapes (random packed codes, group size 128, bf16 scales): medians of --runs, and whether the two
weights are equal bit for bit. On a GPU also whether each can be captured in a CUDA graph.

  python benchmarks/awq_dequantize.py --out benchmarks/results/awq_dequantize_cpu.json [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {"q/k/v/o_proj": (4096, 4096), "gate/up_proj": (4096, 11008), "down_proj": (11008, 4096)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

    from ragqa_exp.quantize._awq_torch import dequantize

    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "runs": a.runs, "shapes": {}}
    fns = {"gptqmodel": lambda w, z, s: dequantize_gemm(qweight=w, qzeros=z, scales=s, bits=4, group_size=128),
           "ragqa_exp": lambda w, z, s: dequantize(w, z, s, 4, 128)}
    for name, (rows, out) in SHAPES.items():
        words = lambda n: torch.randint(-2**31, 2**31 - 1, (n, out // 8), generator=g, dtype=torch.int64).to(torch.int32)
        w, z = words(rows).to(dev), words(rows // 128).to(dev)
        s = (torch.rand(rows // 128, out, generator=g) * 0.02).to(torch.bfloat16).to(dev)
        row = {"in_features": rows, "out_features": out}
        ref = fns["gptqmodel"](w, z, s)
        row["equal_bit_for_bit"] = bool(torch.equal(fns["ragqa_exp"](w, z, s), ref))
        del ref
        for label, fn in fns.items():
            times = []
            for _ in range(a.runs):
                sync()
                t = time.perf_counter()
                fn(w, z, s)
                sync()
                times.append(time.perf_counter() - t)
            row[f"{label}_ms"] = round(1000 * statistics.median(times), 2)
        row["speed_up"] = round(row["gptqmodel_ms"] / row["ragqa_exp_ms"], 2)
        res["shapes"][name] = row
        print(f"{name} {rows}x{out}: gptqmodel {row['gptqmodel_ms']} ms, ragqa_exp {row['ragqa_exp_ms']} ms "
              f"({row['speed_up']}x), equal {row['equal_bit_for_bit']}", flush=True)
    if dev.type == "cuda":  # can a CUDA graph capture it (the eval's kv_cache=graph decode step)? gptqmodel's last:
        for label in ("ragqa_exp", "gptqmodel"):  # a failed capture can leave the stream unusable
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    fns[label](w, z, s)
                res[f"{label}_graph_capture"] = "ok"
            except RuntimeError as ex:
                res[f"{label}_graph_capture"] = str(ex).splitlines()[0][:160]
            print(f"CUDA graph capture, {label}: {res[f'{label}_graph_capture']}", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
