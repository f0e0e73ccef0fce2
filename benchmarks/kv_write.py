"""What a prefill's KV-cache write costs, one layer's keys at 7B shapes (issue 19's "copy / cat / index" column).

The attention hands the cache its key and value states as a transposed view, [rows, heads, tokens, head_dim] over
memory laid out [rows, tokens, heads, head_dim] (`k_proj(x).view(...).transpose(1, 2)`, then RoPE's element-wise
ops, which keep that layout). A cache then copies them: transformers' DynamicLayer by `torch.cat([empty, keys])` on
its first update, StaticLayer by `index_copy_` into its preallocated tensor. On the H200 (2026-12-05 profile) the
padded prefill's `CatArrayBatchedCopy` took ~130 ms more per 65k-token batch than the cache-free prefill's, far from
what the bytes cost at the card's bandwidth. This times those writes from the layout the model hands over and from a
contiguous one, so the next GPU hold can tell whether the write is a lever (and which form of it):

  python benchmarks/kv_write.py --out OUT.json            # 77 rows x 832 tokens, 32 heads x 128, bf16 (the profile's batch)

Every form writes the same values (checked with torch.equal against the source); times are medians of --reps after a
warm-up, and GB/s counts the bytes read and written once.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from bench_setup import timed


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=77)
    ap.add_argument("--tokens", type=int, default=832)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b, t, h, d = a.rows, a.tokens, a.heads, a.head_dim
    as_handed = torch.randn(b, t, h, d, device=dev, dtype=torch.bfloat16).transpose(1, 2)  # the model's layout
    contiguous = as_handed.contiguous()
    static = torch.zeros(b, h, t, d, device=dev, dtype=torch.bfloat16)
    positions = torch.arange(t, device=dev)
    empty = torch.tensor([], device=dev, dtype=torch.bfloat16)

    forms = {
        "dynamic_cat_as_handed": lambda: torch.cat([empty, as_handed], dim=-2),
        "dynamic_cat_contiguous": lambda: torch.cat([empty, contiguous], dim=-2),
        "static_index_copy_as_handed": lambda: static.index_copy_(2, positions, as_handed),
        "static_index_copy_contiguous": lambda: static.index_copy_(2, positions, contiguous),
        "static_slice_copy_as_handed": lambda: static[:, :, :t].copy_(as_handed),
        "contiguous_as_handed": lambda: as_handed.contiguous(),
    }
    moved_gb = 2 * as_handed.numel() * as_handed.element_size() / 1e9  # read once, written once
    res = {"device": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "shape": [b, h, t, d], "dtype": "bfloat16", "reps": a.reps, "forms": {}}
    for name, fn in forms.items():
        med, walls, out = timed(fn, a.reps)
        assert torch.equal(out, as_handed), name  # the same values, whatever the form
        res["forms"][name] = {"median_ms": round(med * 1000, 3), "gb_per_s": round(moved_gb / med, 1),
                              "per_7b_prefill_batch_ms": round(med * 1000 * 2 * 32, 1)}  # keys and values, 32 layers
        print(f"{name}: {med * 1000:.3f} ms, {moved_gb / med:.1f} GB/s; x2 (keys, values) x 32 layers: "
              f"{med * 1000 * 64:.1f} ms a batch", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
