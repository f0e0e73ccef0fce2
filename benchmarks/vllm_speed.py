"""vLLM's offline engine on eval_speed.py's prompts: issue 19's peer row (one process; a GPU with vllm installed).

The same prompts as `eval_speed.py` (the bundled validation set repeated to --prompts items, formatted and
tokenized by the same functions, the model dir's tokenizer) go to `LLM.generate` as token ids: greedy,
--max-new-tokens (16) tokens each with `ignore_eos` (our runs on the random 7B-shapes model make 16 tokens for all
but at most 3 of the 980 prompts; their batches decode to max_new_tokens either way), random weights
(`load_format="dummy"`: only config.json and the tokenizer are read), bf16, vLLM's default CUDA graphs and
torch.compile (`enforce_eager=False`), `gpu_memory_utilization` 0.85, `max_model_len` just above the longest prompt
plus the new tokens. Prefix caching is off unless --prefix-caching: 620 of the 980 prompts repeat another, and
our hf backend computes every prompt. One untimed warm-up `generate` of all prompts, then --runs timed ones
(median, each run). `--batch-invariant` sets VLLM_BATCH_INVARIANT=1 before vllm is imported.

  python benchmarks/vllm_speed.py --model-dir DIR --overrides model=llama2_7b_shapes --out OUT.json [--runs 3]
  python benchmarks/vllm_speed.py --model-dir DIR --overrides model=llama2_7b_shapes --dry-run  # prompts only

On the GPU machine: benchmarks/gpu/h200_plan_speed.sh OUT vllm7b (wheels: benchmarks/README.md, "vLLM").
"""
from __future__ import annotations

import argparse
import enum
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from eval_speed import bench_prompts, compose, prompt_token_ids  # noqa: E402

OFFLINE_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def attr(obj, path: str):
    """obj.a.b.c as JSON-friendly text, or None where vLLM has no such attribute (settings record only)."""
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    plain = isinstance(obj, (bool, int, float, str)) and not isinstance(obj, enum.Enum)
    return obj if plain else str(obj)


def engine_settings(llm) -> dict:
    """What the engine runs with, read back from its config (defaults included)."""
    cfg = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    paths = ["model_config.max_model_len", "model_config.dtype", "model_config.enforce_eager",
             "load_config.load_format", "cache_config.enable_prefix_caching", "cache_config.block_size",
             "cache_config.gpu_memory_utilization", "cache_config.num_gpu_blocks", "cache_config.cache_dtype",
             "scheduler_config.max_num_seqs", "scheduler_config.max_num_batched_tokens",
             "scheduler_config.enable_chunked_prefill", "compilation_config.mode", "compilation_config.cudagraph_mode",
             "compilation_config.max_cudagraph_capture_size", "attention_config.backend", "use_v2_model_runner",
             "parallel_config.tensor_parallel_size", "parallel_config.distributed_executor_backend"]
    return {p: attr(cfg, p) for p in paths} if cfg is not None else {}


def device_name() -> str:
    """The GPU's name through NVML (no CUDA context in this process: the engine runs in its own)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else name
    except Exception as ex:  # noqa: BLE001  a record only
        return f"unknown ({type(ex).__name__})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="config.json and the tokenizer (weights are not read)")
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--prompts", type=int, default=980)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--max-model-len", type=int, default=None,
                    help="default: longest prompt + max new tokens + 1, rounded up to a multiple of 16")
    ap.add_argument("--max-num-seqs", type=int, default=None, help="default: vLLM's")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: vLLM's")
    ap.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / torch.compile (default: vLLM's, on)")
    ap.add_argument("--prefix-caching", action="store_true", help="vLLM's automatic prefix caching on (default off)")
    ap.add_argument("--batch-invariant", action="store_true", help="VLLM_BATCH_INVARIANT=1 (set before importing vllm)")
    ap.add_argument("--dry-run", action="store_true", help="build the prompts and their token ids only (no vllm)")
    ap.add_argument("--out", default=None, help="JSON results (required unless --dry-run)")
    a = ap.parse_args()
    if not a.dry_run and not a.out:
        ap.error("--out is required unless --dry-run")

    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if a.batch_invariant:
        os.environ["VLLM_BATCH_INVARIANT"] = "1"
    from ragqa_exp.loading import load_tokenizer

    cfg = compose(["quant=none", *a.overrides])
    prompts = bench_prompts(cfg, a.prompts)
    ids = prompt_token_ids(load_tokenizer(a.model_dir, cfg.model), prompts)
    lens = [len(x) for x in ids]
    mnt = a.max_new_tokens
    max_model_len = a.max_model_len or 16 * math.ceil((max(lens) + mnt + 1) / 16)
    res: dict = {"overrides": a.overrides, "model_dir": a.model_dir, "n_prompts": len(ids), "max_new_tokens": mnt,
                 "prompt_tokens": sum(lens), "prompt_tokens_mean": statistics.fmean(lens), "prompt_tokens_max": max(lens),
                 "distinct_prompts": len({tuple(x) for x in ids}), "max_model_len": max_model_len}
    print(f"[vllm] prompts {len(ids)} ({res['distinct_prompts']} distinct), prompt tokens {sum(lens)} (mean "
          f"{res['prompt_tokens_mean']:.1f}, longest {max(lens)}), max_model_len {max_model_len}", flush=True)
    if a.dry_run:
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")
        return

    if importlib.util.find_spec("flashinfer") is None:
        # v1/sample/ops/topk_topp_sampler.py: the sampler imports the FlashInfer backend (flashinfer) at engine start
        # unless this is 0; greedy requests never use its sampler (v1/worker/gpu/sample/sampler.py, any_greedy)
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    try:
        import vllm
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except Exception as ex:  # noqa: BLE001  one line naming what is missing, for a device call's output
        sys.exit(f"vllm_speed: cannot import vllm: {type(ex).__name__}: {' '.join(str(ex).split())}")

    import torch

    kwargs = dict(model=a.model_dir, tokenizer=a.model_dir, load_format="dummy", dtype="bfloat16",
                  enforce_eager=a.enforce_eager, gpu_memory_utilization=a.gpu_memory_utilization,
                  max_model_len=max_model_len, enable_prefix_caching=a.prefix_caching, tensor_parallel_size=1, seed=0)
    if a.max_num_seqs:
        kwargs["max_num_seqs"] = a.max_num_seqs
    if a.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = a.max_num_batched_tokens
    res.update(vllm=vllm.__version__, torch=torch.__version__, device=device_name(), llm_kwargs=kwargs,
               env={k: v for k, v in sorted(os.environ.items())
                    if k.startswith("VLLM_") or k in OFFLINE_ENV or k == "CUDA_VISIBLE_DEVICES"},
               batch_invariant=os.environ.get("VLLM_BATCH_INVARIANT", "0") == "1")
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    res["engine_start_seconds"] = round(time.perf_counter() - t0, 2)
    res["engine"] = engine_settings(llm)
    print(f"[vllm] {res['vllm']} engine started in {res['engine_start_seconds']} s on {res['device']}: {res['engine']}",
          flush=True)

    params = SamplingParams(temperature=0.0, max_tokens=mnt, ignore_eos=True)
    requests = [TokensPrompt(prompt_token_ids=x) for x in ids]

    def run() -> tuple[float, list]:
        # generate returns once every request's tokens are back from the engine process: nothing to synchronize here
        t = time.perf_counter()
        outs = llm.generate(requests, params, use_tqdm=True)
        return time.perf_counter() - t, outs

    warm_s, warm = run()
    first = [list(o.outputs[0].token_ids) for o in warm]
    walls, same, cached = [], [], []
    for i in range(a.runs):
        wall, outs = run()
        walls.append(wall)
        got = [list(o.outputs[0].token_ids) for o in outs]
        same.append(sum(g == f for g, f in zip(got, first)))
        cached.append(sum(o.num_cached_tokens or 0 for o in outs))
        print(f"[vllm] run {i + 1}: {wall:.3f} s, token ids equal to the warm-up's {same[-1]}/{len(got)}", flush=True)
    gen = [len(g) for g in first]
    median = statistics.median(walls)
    res.update(warmup_seconds=round(warm_s, 3), eval_seconds_runs=[round(w, 3) for w in walls],
               eval_seconds_median=round(median, 3), prompt_tokens_per_s=round(sum(lens) / median),
               gen_tokens_total=sum(gen), gen_tokens_mean=statistics.fmean(gen),
               every_prompt_made_max_new_tokens=all(n == mnt for n in gen),
               token_ids_equal_to_warmup_per_run=same, prompt_tokens_cached_per_run=cached)
    print(f"[vllm] median {median:.3f} s over {a.runs} runs {res['eval_seconds_runs']}, {res['prompt_tokens_per_s']} "
          f"prompt tokens/s, generated {sum(gen)} tokens ({res['gen_tokens_mean']:.2f} per prompt), engine start "
          f"{res['engine_start_seconds']} s, batch invariant {res['batch_invariant']}", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":  # the guard also keeps a spawned engine process from rerunning main
    main()
