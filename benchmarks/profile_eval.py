"""Where evaluation time goes (issue 19): torch.profiler on one prefill batch and one decode step of the hf
backend's canonical plan, at the model given (7B shapes on the H200), in this process.

For the plan's first batch (its longest bucket: rows x padded length), measured with device-synchronized wall
clocks (medians of --reps after a warm-up) and profiled once each:
- prefill: the forward over the left-padded batch with its attention mask (what `generate` runs), last-position
  logits only, KV cache filled;
- one decode step on that cache (one token per row);
- the same padded, masked prefill without a KV cache (`prefill_no_cache`): prefill minus it is the cache's write;
- the same prefill without padding, mask or KV cache (every row cut to the bucket's shortest real prompt, causal): what a
  padding-free prefill's attention would run (SDPA's flash kernel instead of the memory-efficient one);
- one whole batch through the backend (prefill + max_new_tokens - 1 decode steps), for the decode share: on a GPU
  the default `eval.kv_cache=auto` runs the graph decode there (the whole batch prefilled at once), elsewhere
  `generate`;
- one replay of that batch's captured decode step (`graph_step`, a GPU only; not yet run: its first version replayed
  past the cache's end).
Device (kernel) time is summed by category (GEMM, 4-bit kernels, attention, element-wise/norm, copies, other)
and set against the wall clock: what is left is host time between kernels (launches, syncs, Python).
The whole plan's padding fraction (pad tokens and fill rows over computed prompt tokens) comes with it.

  python benchmarks/profile_eval.py --quant none --model-dir DIR --overrides model=llama2_7b_shapes --out OUT.json
  (--compile pieces|layers: the same with the element-wise work compiled as eval_speed.py's variants)
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_setup import load, sync, timed  # noqa: E402

CATEGORIES = [  # first match wins; kernel names of cuBLAS/CUTLASS, SDPA, Marlin/bitsandbytes, ATen
    ("4-bit kernel / dequantize", r"marlin|dequant|gemv_4bit|kgemm_4bit|awq|exllama|gptq|qgemm|kDequantize"),
    ("attention", r"fmha|flash|attention|efficient|sdpa|softmax"),
    ("GEMM", r"gemm|matmul|cutlass|xmma|nvjet|wgmma|sm90_|sm80_|cublas|gemv|addmm|\bmm\b|bmm|linear"),
    ("copy / cat / index", r"copy|cat|memcpy|memset|index|gather|scatter|fill|clone|contiguous|where|masked|arange"),
    ("element-wise / norm", r"elementwise|vectorized|reduce|norm|rsqrt|pow|mean|silu|gelu|mul|add|sub|div|neg|exp"
                            r"|rotary|embedding|tanh|sigmoid|cos|sin|argmax|max|sum"),
]


def category(name: str) -> str:
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def profiled(fn, top: int) -> dict:
    """Kernel (device) time by category and the top kernels, for one call of `fn`, against its wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn()
    sync()
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t
    by_cat: dict[str, float] = {}
    kernels: dict[str, float] = {}
    for ev in prof.events():
        if cuda:
            if ev.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
        else:  # CPU: ATen ops' self time (no kernels)
            if not ev.name.startswith("aten::") or ev.cpu_children:
                continue
            us = ev.self_cpu_time_total
        by_cat[category(ev.name)] = by_cat.get(category(ev.name), 0.0) + us
        kernels[ev.name] = kernels.get(ev.name, 0.0) + us
    busy_ms = sum(by_cat.values()) / 1000
    wall_ms = wall * 1000
    return {
        "wall_ms": round(wall_ms, 2), "device_busy_ms": round(busy_ms, 2),
        "host_gap_ms": round(max(0.0, wall_ms - busy_ms), 2),
        "by_category_ms": {k: round(v / 1000, 2) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": {k[:120]: round(v / 1000, 3) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:top]},
        "kernel_launches": sum(1 for ev in prof.events() if cuda and ev.device_type == torch.autograd.DeviceType.CUDA),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="none")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--prompts", type=int, default=980)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--compile", choices=("none", "pieces", "layers"), default="none",
                    help="profile with the element-wise work compiled: `pieces` as eval.elementwise=compiled runs it, "
                         "`layers` each decoder layer's whole forward (compile_elementwise.py, eval_speed.py's "
                         "`:compiled` and `:compiled-layer`); each piece's first call compiles, before its timing")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch

    run = load(a.quant, a.model_dir, a.overrides, a.prompts)
    backend, model, ids = run.backend, run.model, run.ids
    if a.compile != "none":
        from compile_elementwise import product_compile

        product_compile(model, whole_layer=a.compile == "layers")
    lengths = [len(x) for x in ids]
    mnt = a.max_new_tokens
    plan = run.plan(mnt)
    batches = plan.batches(lengths)
    computed = sum(len(r) * p for r, _, p in batches)
    real = sum(lengths)
    res: dict = {"quant": a.quant, "overrides": a.overrides, "kernel": backend.info.kernel, "compile": a.compile,
                 "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "n_prompts": len(ids), "prompt_tokens_mean": statistics.fmean(lengths),
                 "plan": {"length_bucket": plan.length_bucket, "max_batch_tokens": plan.max_batch_tokens,
                          "max_rows": plan.max_rows, "batches": len(batches),
                          "rows_computed": sum(len(r) for r, _, _ in batches),
                          "prompt_tokens_real": real, "prompt_tokens_computed": computed,
                          "padding_fraction": round(1 - real / computed, 4)}}
    rows0, n_real, padded = batches[0]
    dev = next(model.parameters()).device
    enc = run.padded(rows0, padded)
    # position ids per row, as the eval's prefill and decode pass them (prefill.positions). Without them transformers
    # counts from the cache's position for every row alike, so cos and sin come one row for the batch, and the
    # compiled RoPE ran another graph than the eval's: 105 ms a prefill in session 21's profile, 4x its speed alone
    from ragqa_exp.backends.prefill import positions

    enc["position_ids"] = positions(enc["attention_mask"])
    shortest = min(lengths[i] for i in rows0[:n_real])
    unpadded = torch.tensor([ids[i][-shortest:] for i in rows0], device=dev)
    res["batch"] = {"rows": len(rows0), "real_rows": n_real, "padded_length": padded, "unpadded_length": shortest,
                    "pad_fraction": round(1 - sum(lengths[i] for i in rows0) / (len(rows0) * padded), 4)}
    from transformers import DynamicCache

    state: dict = {}

    def prefill():
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            out = model(**enc, past_key_values=cache, use_cache=True, logits_to_keep=1)
        state["cache"], state["next"] = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        state["steps"] = 0  # decode steps appended to this cache

    def prefill_unpadded():  # no padding, no mask, and no KV cache: against prefill_no_cache, what the mask costs
        with torch.inference_mode():
            model(input_ids=unpadded, position_ids=torch.arange(shortest, device=dev).expand_as(unpadded),
                  use_cache=False, logits_to_keep=1)  # per-row positions, as the other forwards

    def prefill_no_cache():  # the padded, masked batch without a KV cache: prefill minus this is the cache's write
        # (DynamicLayer's first update: torch.cat of an empty tensor and the strided keys/values, every layer)
        with torch.inference_mode():
            model(**enc, use_cache=False, logits_to_keep=1)

    def decode_step():  # one step on the prefill's cache; each call appends one token (a sliding-window cache, as
        # Gemma 3's, cannot be cropped back): ~10 calls in all, against prompts of hundreds of tokens
        state["steps"] = state.get("steps", 0) + 1
        mask = torch.cat([enc["attention_mask"], enc["attention_mask"].new_ones((len(rows0), state["steps"]))], dim=1)
        with torch.inference_mode():
            model(input_ids=state["next"], attention_mask=mask, position_ids=positions(mask)[:, -1:],
                  past_key_values=state["cache"], use_cache=True, logits_to_keep=1)

    def whole_batch():
        backend._generate_batch([ids[i] for i in rows0], padded, mnt, mnt)

    def graph_step():  # one replay of the whole batch's captured decode step, at the cache's last slot. transformers'
        # StaticLayer places keys by its own device-side counter, which every replay advances: it is set back first
        # (replays past the cache's end tripped a device-side assert on an H100, 2026-12-07); the counters are
        # inference tensors, set back in inference mode (outside it, the H100 of 2026-12-07 session 17 refused)
        d = backend.decoders.current
        with torch.inference_mode():
            for layer in d.cache.layers:
                layer.cumulative_length.fill_(d.total - 1)
        d._graph.replay()

    prefill()
    pieces = [("prefill", prefill), ("decode_step", decode_step), ("prefill_no_cache", prefill_no_cache),
              ("prefill_unpadded_causal", prefill_unpadded),
              ("generate_batch", whole_batch), ("graph_step", graph_step)]
    for name, fn in pieces:
        if name == "graph_step":
            current = backend.decoders.current if backend.decoders else None
            if current is None or current._graph is None:
                continue  # no captured graph (a CPU, or another eval.kv_cache)
            Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")  # what came before, should it fail
        med, walls, _ = timed(fn, a.reps)
        res[name] = {"median_ms": round(med * 1000, 2), "runs_ms": [round(w * 1000, 2) for w in walls],
                     "profile": profiled(fn, a.top)}
        print(f"{name}: {med * 1000:.1f} ms (median of {a.reps}); by category (ms): {res[name]['profile']['by_category_ms']};"
              f" host gap {res[name]['profile']['host_gap_ms']} ms", flush=True)
    g, p, d = res["generate_batch"]["median_ms"], res["prefill"]["median_ms"], res["decode_step"]["median_ms"]
    res["summary"] = {"decode_steps": mnt - 1, "generate_minus_prefill_ms": round(g - p, 1),
                      "per_decode_step_in_generate_ms": round((g - p) / max(1, mnt - 1), 2),
                      "bare_decode_step_ms": d, "graph_step_ms": res.get("graph_step", {}).get("median_ms"),
                      "batches_in_plan": len(batches),
                      "unpadded_over_padded_prefill": round(res["prefill_unpadded_causal"]["median_ms"] / p, 3)}
    print("summary:", json.dumps(res["summary"]), "plan:", json.dumps(res["plan"]), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
