"""Evaluation speed of one model on its backend, in this process alone (run one process per method).

Measures the hf backend's fast path (token-budget batches, newline stop by token id) for each KV-cache
variant, repeated --runs times (medians), the first-wave path (benchmarks/reference_eval.py) on the first
--old-prompts prompts at its old default batch of 8, and the agreement of the fast path's answers with
batch-1 greedy decoding. Prompts: the bundled validation set repeated to --prompts items.

  python benchmarks/eval_speed.py --quant none --model-dir DIR --out OUT.json [--overrides model=llama2_7b_shapes ...]

`--plan canonical|packed` picks `eval.batch_plan` (default: the config's, canonical); `--plan both` times the
canonical plan and the packed plan alternately on the same loaded model (medians of --runs each) and counts
the answers on which they differ: the cost table of issue 17 (benchmarks/H200_EVAL.md, "to run").
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_setup import sync  # noqa: E402


def compose(overrides: list[str]):
    from ragqa_exp.config_store import validate_overrides  # compose (schemas registered) + the typed checks

    return validate_overrides(overrides)


def bench_prompts(cfg, n: int) -> list[str]:
    """The benchmark's prompts: the bundled validation set (`cfg.data`) repeated to `n` items, formatted as the eval
    formats them (also benchmarks/vllm_speed.py's)."""
    from ragqa_exp.data import format_prompt, load_splits

    rows = load_splits(cfg.data).validation
    rows = (rows * (n // len(rows) + 1))[:n]
    return [format_prompt(r["question"], r["context"], cfg.data.max_passages) for r in rows]


def prompt_token_ids(tok, prompts: list[str]) -> list[list[int]]:
    """Each prompt's token ids as the hf backend tokenizes them (special tokens added, no padding)."""
    return tok(prompts, add_special_tokens=True)["input_ids"]


def dense_flops(config, prompt_lens: list[int], gen_lens: list[int]) -> float:
    """Dense-equivalent FLOPs of prefill (last-position logits only) + decode: linear layers, attention
    scores/values (causal), LM head. W4A16 kernels do the same arithmetic in 16 bits."""
    c = getattr(config, "text_config", None) or config
    h, inter, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    hd = getattr(c, "head_dim", None) or h // c.num_attention_heads
    q_dim = c.num_attention_heads * hd
    per_token_linear = 2 * L * (h * q_dim + 2 * h * kv * hd + q_dim * h + 3 * h * inter)
    total = 0.0
    for p, g in zip(prompt_lens, gen_lens):
        total += p * per_token_linear + 2 * L * 2 * q_dim * p * p / 2 + 2 * h * V  # prefill (+ first token's head)
        for t in range(1, g):
            total += per_token_linear + 2 * L * 2 * q_dim * (p + t) + 2 * h * V
    return total


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def answers_equal(a: list[str], b: list[str]) -> float:
    """Share of positions (over the shorter list) whose answers (first lines) are equal."""
    n = min(len(a), len(b))
    return sum(first_line(x) == first_line(y) for x, y in zip(a, b)) / n


def compare_plans(backend, prompts: list[str], prompt_lens: list[int], mnt: int, runs: int) -> dict:
    """eval.batch_plan canonical vs packed on one loaded model: each timed --runs times, alternating (drift in
    machine load hits both alike), after one untimed warm-up each; the padded tokens each plan computes; the
    answers (first lines) on which the two plans differ."""
    from ragqa_exp.backends.hf import HFBackend, canonical_plan
    from ragqa_exp.backends.prefill import prefilled_rows

    # eval.kv_cache=graph needs the canonical plan's shapes: packed then runs transformers' dynamic cache (auto is
    # passed on as asked: each plan resolves it, graph for canonical on a GPU, dynamic for packed)
    asked = backend.requested_kv_cache
    kv = {"canonical": asked, "packed": "dynamic" if asked == "graph" else asked}
    plans = {name: HFBackend(backend.model, backend.tok, backend.requested_batch_size,
                             backend.requested_max_batch_tokens, backend.info, kv[name], name,
                             backend.length_bucket, backend.max_prefill_tokens) for name in ("canonical", "packed")}
    def release(b) -> None:  # a graph decoder's static cache (34 GB at 7B) must not shrink packed's budget
        if b.decoders is not None:
            b.decoders.release()

    for b in plans.values():
        b.warmup(prompts, mnt)
        release(b)
    # batch invariance at this model and device: the same questions with other batch-mates and in another order
    # (the last 4% left out, the rest reversed), one untimed pass per plan (it also warms the allocator up to the
    # plan's largest batches); their generated token ids are compared with the timed runs' below
    drop = max(1, len(prompts) // 25)
    other_order = list(reversed(range(len(prompts) - drop)))
    other_ids = {}
    for name, b in plans.items():
        other_ids[name] = {other_order[j]: g.token_ids for j, g in b.generate([prompts[i] for i in other_order], mnt)}
        release(b)
    walls: dict[str, list[float]] = {name: [] for name in plans}
    texts: dict[str, list[str]] = {}
    ids: dict[str, list[list[int]]] = {}
    for _ in range(runs):
        for name, b in plans.items():
            sync()
            t = time.perf_counter()
            out = sorted(b.generate(prompts, mnt))
            sync()
            walls[name].append(time.perf_counter() - t)
            release(b)
            texts[name] = [g.text for _, g in out]
            ids[name] = [g.token_ids for _, g in out]
    plan = canonical_plan(backend.model, backend.requested_batch_size, backend.requested_max_batch_tokens,
                          backend.length_bucket, mnt, backend.max_prefill_tokens, plans["canonical"].kv_cache)
    batches = plan.batches(prompt_lens)
    out = {name: {"eval_seconds_runs": [round(w, 3) for w in walls[name]],
                  "eval_seconds_median": round(statistics.median(walls[name]), 3),
                  "eval_plan": plans[name].plan_record(), "oom_retries": plans[name].oom_retries, "kv_cache": plans[name].kv_cache}
           for name in plans}
    out["canonical"].update(batches=len(batches), rows_computed=sum(len(r) for r, _, _ in batches),
                            padded_prompt_tokens=sum(len(r) * p for r, _, p in batches),
                            prefilled_prompt_tokens=sum(prefilled_rows(n, plan.slice_rows(p)) * p for _, n, p in batches))
    out["canonical_over_packed"] = round(out["canonical"]["eval_seconds_median"] / out["packed"]["eval_seconds_median"], 4)
    out["answers_equal"] = answers_equal(texts["canonical"], texts["packed"])
    out["batch_invariance"] = {
        "composition": f"the last {drop} questions left out, the other {len(other_order)} reversed",
        "questions_compared": len(other_order),
        "token_ids_changed": {name: sum(other_ids[name][i] != ids[name][i] for i in other_order) for name in plans}}
    print(f"batch invariance ({out['batch_invariance']['composition']}): questions whose generated token ids changed "
          f"{out['batch_invariance']['token_ids_changed']} of {len(other_order)}", flush=True)
    print(f"canonical {out['canonical']['eval_seconds_median']} s ({out['canonical']['prefilled_prompt_tokens']} prompt tokens prefilled), packed {out['packed']['eval_seconds_median']} s, "
          f"ratio {out['canonical_over_packed']}, answers equal {out['answers_equal']:.4f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", required=True)
    ap.add_argument("--model-dir", required=True, help="the model, or the quantized artifact for quant != none")
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--prompts", type=int, default=980)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--variants", default="dynamic,static",
                    help="eval.kv_cache values: dynamic, static, graph; a `:nanfill` suffix times that value with "
                         "deterministic mode's NaN fill of uninitialized memory on (torch's default; the eval turns it off); "
                         "a `:compiled` suffix with the product's eval.elementwise=compiled (norms around an eager mean, "
                         "act(gate) * up, RoPE, checked at load: backends/elementwise.py; a GPTQ model's dequantize too: "
                         "compile_elementwise.py), `:compiled-eager-norms` the MLPs and RoPE only (a 4-bit model's MLPs eager), "
                         "`:compiled-fused` every norm's own forward at Inductor's default precision; `:eager-dequantize` an AWQ model with its dequantize eager "
                         "(the product compiles it on CUDA: quantize/_awq_torch.py); `:cat` (graph) the prefill slices' caches "
                         "copied by torch.cat, as before 2026-12-07's session 18 (not kept as views: backends/prefill.KEEP_VIEWS); `:causal` (graph) a full-attention model's prefill "
                         "slices right-padded with no mask, SDPA's is_causal (backends/prefill.CAUSAL_ROWS); `:gc` (graph) a garbage-collector pass at each new "
                         "batch shape (before 2026-12-07; graph_decode.COLLECT_ON_RELEASE); `:compiled-whole-mlp` the product's compile with "
                         "each MLP's whole forward compiled, its projections inside (session 15's `:compiled`); `:compiled-layer` eval.elementwise=compiled-layers "
                         "(each decoder layer's whole forward: backends/compiled_layers.py; a 16-bit model's); `:auto-dynamic` with `:compiled`: "
                         "the pieces compiled with Dynamo's automatic dynamic shapes, the head and hidden sizes constants (exact_compile.DYNAMIC=None); `continuous[:key=value...]`: transformers' "
                         "generate_batch with those ContinuousBatchingConfig fields (continuous_batching.py)")
    ap.add_argument("--continuous-warmup-prompts", type=int, default=0,
                    help="the untimed pass before a `continuous` variant's runs: its first N prompts (0: all of them; "
                         "a full pass of generate_batch at 7B shapes takes 150-230 s)")
    ap.add_argument("--old-prompts", type=int, default=160)
    ap.add_argument("--batch1-prompts", type=int, default=48)
    ap.add_argument("--interleave-old", action="store_true",
                    help="run the old path on ALL prompts after each fast run (alternating, so drift in machine load "
                         "hits both alike; medians of --runs each) instead of once on --old-prompts")
    ap.add_argument("--plan", choices=("config", "canonical", "packed", "both"), default="config",
                    help="eval.batch_plan to time (config: as composed); both: canonical and packed alternately")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch

    from ragqa_exp.backends import exact_compile, graph_decode, prefill
    from ragqa_exp.backends.hf import HFBackend
    from ragqa_exp.measure import MemoryTracker, percentile
    from reference_eval import generate_answers_first_wave

    plan_override = [f"eval.batch_plan={a.plan}"] if a.plan in ("canonical", "packed") else []
    cfg = compose([f"quant={a.quant}", *a.overrides, *plan_override])
    prompts = bench_prompts(cfg, a.prompts)
    mnt = a.max_new_tokens
    res: dict = {"quant": a.quant, "overrides": a.overrides, "n_prompts": len(prompts), "max_new_tokens": mnt,
                 "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__}
    t0 = time.perf_counter()
    with MemoryTracker() as load_mem:
        backend = HFBackend.load(cfg, a.model_dir)
    res["load_seconds"] = round(time.perf_counter() - t0, 2)
    res["load_memory"] = vars(load_mem.report)
    res["kernel"], res["bits"], res["kernel_extra"] = backend.info.kernel, backend.info.bits, backend.info.extra
    res["max_batch_tokens"] = backend.max_batch_tokens
    model, tok = backend.model, backend.tok
    prompt_lens = [len(x) for x in prompt_token_ids(tok, prompts)]
    res["prompt_tokens_mean"] = statistics.fmean(prompt_lens)
    print(f"[{a.quant}] loaded in {res['load_seconds']} s, kernel {res['kernel']} {res['kernel_extra']}, budget {backend.max_batch_tokens} tokens,"
          f" prompts {len(prompts)} x {res['prompt_tokens_mean']:.0f} tokens", flush=True)

    res["eval_plan"] = backend.batch_plan
    if a.plan == "both":
        res["plans"] = compare_plans(backend, prompts, prompt_lens, mnt, a.runs)
        Path(a.out).write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
        return
    list(backend.generate(prompts[:32], mnt))  # warm-up (kernel JIT, allocator)
    fast_texts: list[str] = []
    old_walls: list[float] = []
    res["variants"] = {}
    with MemoryTracker() as eval_mem:
        for variant in a.variants.split(","):
            kind, *flags = variant.split(":")
            if kind == "continuous":  # transformers' generate_batch on the same loaded model (continuous_batching.py)
                import continuous_batching

                cb = continuous_batching.settings(flags)
                run = lambda: continuous_batching.generate(backend, prompts, mnt, cb)  # noqa: E731
                warm = lambda: continuous_batching.generate(  # noqa: E731
                    backend, prompts[:a.continuous_warmup_prompts or None], mnt, cb)
            else:
                backend.kv_cache = kind
                run = warm = lambda: sorted(backend.generate(prompts, mnt))  # noqa: E731
            torch.utils.deterministic.fill_uninitialized_memory = "nanfill" in flags
            prefill.KEEP_VIEWS = "cat" not in flags
            prefill.CAUSAL_ROWS = "causal" in flags
            graph_decode.COLLECT_ON_RELEASE = "gc" in flags
            exact_compile.DYNAMIC = None if "auto-dynamic" in flags else True
            restore = None
            if "eager-dequantize" in flags:
                from ragqa_exp.quantize import _awq_torch

                assert _awq_torch.use_for(model, compiled=False) == "eager", "not an AWQ torch-kernel model"
                restore = lambda: print(f"[{a.quant}] AWQ dequantize back to {_awq_torch.use_for(model)}", flush=True)
            compiling = {"compiled", "compiled-eager-norms", "compiled-fused", "compiled-whole-mlp", "compiled-layer"} & set(flags)
            if compiling:
                from compile_elementwise import compile_elementwise

                restore = compile_elementwise(model, exact="compiled-fused" not in flags,
                                              norms="compiled-eager-norms" not in flags,
                                              whole_mlp="compiled-whole-mlp" in flags,
                                              whole_layer="compiled-layer" in flags)
            if compiling or kind == "continuous":
                sync()
                t = time.perf_counter()
                try:
                    warm()  # compiles every shape the runs meet, captures generate_batch's graphs (untimed)
                except Exception as ex:  # noqa: BLE001  a peer's settings that do not run: say so, time the rest
                    if kind != "continuous":
                        raise
                    res["variants"][variant] = {"error": f"{type(ex).__name__}: {first_line(str(ex))}"}
                    print(f"[{a.quant}] {variant}: {res['variants'][variant]['error']}", flush=True)
                    continue
                sync()
                res.setdefault("compile_warmup_seconds", {})[variant] = round(time.perf_counter() - t, 1)
                if kind == "continuous":
                    res.setdefault("warmup_prompts", {})[variant] = a.continuous_warmup_prompts or len(prompts)
                print(f"[{a.quant}] {variant}: compile + warm-up pass {res['compile_warmup_seconds'][variant]} s", flush=True)
            walls, p50s, p95s, gens, setups, releases = [], [], [], None, [], []
            for _ in range(a.runs):
                setup = backend.decoders.setup_seconds if backend.decoders is not None else 0.0
                release = backend.decoders.release_seconds if backend.decoders is not None else 0.0
                sync()
                t = time.perf_counter()
                out = run()
                sync()
                walls.append(time.perf_counter() - t)
                if backend.decoders is not None:  # graph: releasing, making and capturing each shape's decoder
                    setups.append(backend.decoders.setup_seconds - setup)
                    releases.append(backend.decoders.release_seconds - release)
                if a.interleave_old and variant == a.variants.split(",")[0]:
                    sync()
                    t = time.perf_counter()
                    old = generate_answers_first_wave(model, tok, prompts, batch_size=8, max_new_tokens=mnt)
                    sync()
                    old_walls.append(time.perf_counter() - t)
                lat = [g.seconds * 1000 for _, g in out]
                p50s.append(percentile(lat, 0.5))
                p95s.append(percentile(lat, 0.95))
                gens = [g for _, g in out]
            gen_lens = [g.completion_tokens for g in gens]
            wall = statistics.median(walls)
            flops = dense_flops(model.config, prompt_lens, gen_lens)
            res["variants"][variant] = {
                "eval_seconds_runs": [round(w, 3) for w in walls], "eval_seconds_median": round(wall, 3),
                "latency_ms_p50": round(statistics.median(p50s), 2), "latency_ms_p95": round(statistics.median(p95s), 2),
                "prompt_tokens_per_s": round(sum(prompt_lens) / wall), "gen_tokens_mean": statistics.fmean(gen_lens),
                "dense_tflops_per_s": round(flops / wall / 1e12, 1),
            }
            if setups:
                res["variants"][variant]["decode_setup_seconds_runs"] = [round(x, 3) for x in setups]
                res["variants"][variant]["decode_release_seconds_runs"] = [round(x, 3) for x in releases]
            if not fast_texts:
                fast_texts, first_ids = [g.text for g in gens], [g.token_ids for g in gens]
            same = sum(g.token_ids == ids for g, ids in zip(gens, first_ids))
            res["variants"][variant]["token_ids_equal_to_first_variant"] = same
            print(f"[{a.quant}] {variant}: {wall:.2f} s (runs {res['variants'][variant]['eval_seconds_runs']}),"
                  f" {res['variants'][variant]['dense_tflops_per_s']} TFLOP/s, token ids equal to the first variant's "
                  f"{same}/{len(gens)}", flush=True)
            if kind == "continuous":
                res["variants"][variant]["continuous_batching_config"] = cb
            Path(a.out).write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")  # so far (a call may time out)
            if backend.decoders is not None:  # kv_cache=graph: its static cache goes before the next variant
                backend.decoders.release()
            if restore is not None:
                restore()
    res["eval_memory"] = vars(eval_mem.report)

    if old_walls:
        res["old_path_interleaved"] = {
            "prompts": len(prompts), "batch_size": 8, "seconds_runs": [round(w, 3) for w in old_walls],
            "seconds_median": round(statistics.median(old_walls), 3),
            "answers_equal_to_fast_path": answers_equal(old, fast_texts)}
        print(f"[{a.quant}] old path (interleaved): {res['old_path_interleaved']}", flush=True)
    elif a.old_prompts:
        n = min(a.old_prompts, len(prompts))
        sync()
        t = time.perf_counter()
        old = generate_answers_first_wave(model, tok, prompts[:n], batch_size=8, max_new_tokens=mnt)
        sync()
        old_s = time.perf_counter() - t
        res["old_path"] = {"prompts": n, "batch_size": 8, "seconds": round(old_s, 3),
                           "seconds_per_prompt": round(old_s / n, 4),
                           "projected_seconds_all_prompts": round(old_s / n * len(prompts), 1),
                           "answers_equal_to_fast_path": answers_equal(old, fast_texts[:n])}
        print(f"[{a.quant}] old path: {old_s:.2f} s for {n} prompts", flush=True)
    if a.batch1_prompts:
        n = min(a.batch1_prompts, len(prompts))
        b1 = HFBackend(model, tok, 1, None, backend.info)
        one = [g.text for _, g in sorted(b1.generate(prompts[:n], mnt))]
        res["batch1_agreement"] = {"prompts": n, "answers_equal": answers_equal(one, fast_texts),
                                   "raw_equal": sum(x == y for x, y in zip(one, fast_texts)) / n}
        if old_walls or a.old_prompts:  # the first-wave path (batches of 8) against batch 1 on the same prompts
            res["batch1_agreement"]["old_path_answers_equal"] = answers_equal(one, old)
        print(f"[{a.quant}] batch-1 agreement: {res['batch1_agreement']}", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
