"""Decode without the DynamicCache copies and host syncs (issue 19's decode lever, `eval.kv_cache=graph`),
measured on one canonical batch (rows x padded length, as `profile_eval.py` takes it), greedy,
--max-new-tokens steps, three ways side by side, each a median of --reps after a warm-up:

- `generate`: the hf backend as it is (transformers' generate, DynamicCache: the whole cache is concatenated
  every step, the stop check syncs with the host every step);
- `static`: `eval.kv_cache=graph`'s loop (ragqa_exp/backends/graph_decode.py) without the graph: a
  preallocated StaticCache, the 4D mask and positions kept on the device, argmax on the device, no host sync
  until the batch is done;
- `static+graph` (CUDA only): the same decode step captured once in a CUDA graph and replayed, as
  `eval.kv_cache=graph` runs on a GPU (the canonical plan's fixed shapes make one graph per bucket possible).
Each variant's generated token ids are compared with `generate`'s (row by row, up to the first stop token).
Full-attention decoders only (Llama shapes); sliding-window models (Gemma 3) are refused.

  python benchmarks/static_decode.py --model-dir DIR --overrides model=llama2_7b_shapes --out OUT.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_setup import load, timed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="none")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch

    from ragqa_exp.backends.graph_decode import GraphDecoder
    from ragqa_exp.backends.hf import generated_ids

    run = load(a.quant, a.model_dir, a.overrides)
    backend, model, ids = run.backend, run.model, run.ids
    mnt = a.max_new_tokens
    batch, _, padded = run.plan(mnt).batches([len(x) for x in ids])[0]
    enc = run.padded(batch, padded)
    stops = set(backend.stop_ids)
    res: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "dtype": str(model.dtype), "rows": len(batch), "padded_length": padded,
                 "max_new_tokens": mnt, "variants": {}}

    def run_generate():
        _, _, token_ids = backend._generate_batch([ids[i] for i in batch], padded, mnt, mnt)
        return token_ids

    def static(graph: bool):
        runner = GraphDecoder(model, len(batch), padded, mnt, graph=graph)
        return lambda: [generated_ids(row, stops) for row in runner(enc["input_ids"], enc["attention_mask"], mnt)]

    # Each variant is made when its turn comes and dropped after it: a StaticCache holds the whole batch's KV cache
    # (34 GB at 7B shapes, 77 x 848 tokens), and two of them beside the model did not fit an 80 GB H100.
    variants = {"generate": lambda: run_generate, "static": lambda: static(False)}
    if torch.cuda.is_available():
        variants["static+graph"] = lambda: static(True)
    ref = None
    for name, make in variants.items():
        fn = make()
        med, walls, got = timed(fn, a.reps)  # its warm-up call captures the graph
        del fn
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if ref is None:
            ref = got
        same = sum(x == y for x, y in zip(got, ref))
        res["variants"][name] = {"median_ms": round(med * 1000, 2),
                                 "runs_ms": [round(w * 1000, 2) for w in walls], "rows_equal_to_generate": same}
        print(f"{name}: {res['variants'][name]['median_ms']} ms (median of {a.reps}); rows equal to generate "
              f"{same}/{len(ref)}", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
