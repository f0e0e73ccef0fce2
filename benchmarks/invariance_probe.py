"""Which part of a fixed-shape batch moves a question's numbers (issue 17's follow-up on the H200)?

The canonical plan fixes every batch's shapes, yet on the H200 at 7B shapes 440 of 941 questions' greedy
tokens changed with another batch composition (benchmarks/H200_EVAL.md, 2026-12-05). This probe separates the
candidate causes, bit for bit, on one canonical batch (rows x padded length) of the given model:

- run to run: the same batch twice;
- row position: the same batch with its rows reversed (results un-permuted before comparing);
- batch-mates: the batch with its second half replaced by other prompts of the same bucket (the first half
  compared);
- half the rows: the first half alone, a batch of half the rows (other GEMM shapes: would a bucket's last batch
  need its fill rows?);
for one `F.linear` at the model's MLP shape (prefill: M = rows x padded tokens; decode: M = rows), SDPA with the
padding mask (prefill, and one decode query per row), and the model's logits (last prefill position; the 4th
greedy decode step). Each line: rows that differ at all, and the largest difference. `--invariant` runs it
under `eval.invariant_kernels` (runtime.batch_invariant_kernels); run it once with and once without.

  python benchmarks/invariance_probe.py --model-dir DIR --overrides model=llama2_7b_shapes --out OUT.json [--invariant]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def compare(a, b) -> dict:
    """Rows (first dimension) of `a` and `b` that differ in any element, and the largest absolute difference."""
    diff = (a.float() - b.float()).abs().reshape(a.shape[0], -1)
    return {"rows_differing": int((diff.amax(dim=1) > 0).sum()), "rows": int(a.shape[0]),
            "max_abs_diff": float(diff.max())}


def probe(fn, x: tuple, others: tuple) -> dict:
    """fn(*batch) -> per-row outputs; x: the batch's tensors (rows first: inputs, mask, ...); others: the same
    tensors of replacement rows, for the batch-mates case."""
    import torch

    n = x[0].shape[0]
    half = n // 2
    base = fn(*x)
    again = fn(*x)
    rev = fn(*(t.flip(0) for t in x)).flip(0)
    mixed = fn(*(torch.cat([t[:half], o[: n - half]]) for t, o in zip(x, others)))
    fewer = fn(*(t[:half] for t in x))
    return {"run_to_run": compare(base, again), "row_position": compare(base, rev),
            "batch_mates": compare(base[:half], mixed[:half]), "half_the_rows": compare(base[:half], fewer)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="none")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--rows", type=int, default=0, help="rows of the probed batch (0: the canonical plan's)")
    ap.add_argument("--invariant", action="store_true",
                    help="eval.invariant_kernels=true (else false): run once with and once without, each in its own "
                         "process (cuBLAS reads its workspace size once per process)")
    ap.add_argument("--sdpa-backend", default="", help="pin SDPA to one backend (math|efficient|cudnn) for every part")
    ap.add_argument("--attn", default="", help="the model's attention implementation (eager|sdpa; default: the backend's)")
    ap.add_argument("--parts", default="", help="comma-separated parts to run (default: all)")
    ap.add_argument("--deterministic", action="store_true",
                    help="what eval.deterministic=true does (runtime.deterministic_algorithms: on a GPU "
                         "torch.use_deterministic_algorithms(True) with CUBLAS_WORKSPACE_CONFIG=:4096:8 unless set; a "
                         "non-deterministic op then raises, naming itself, or runs its deterministic implementation; "
                         "nothing on a CPU)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    if a.deterministic:
        from ragqa_exp.runtime import deterministic_algorithms

        deterministic_algorithms()

    from bench_setup import load

    torch.manual_seed(0)
    run = load(a.quant, a.model_dir, [*a.overrides, f"eval.invariant_kernels={str(a.invariant).lower()}"])
    kernels = run.backend.kernels  # set by the load, before the model's first GEMM
    model, ids = run.model, run.ids
    plan = run.plan(16)
    by_bucket: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_bucket.setdefault(plan.padded_length(len(x)), []).append(i)
    padded = max(by_bucket, key=lambda p: len(by_bucket[p]))  # the fullest bucket: real batch-mates to swap in
    n = a.rows or plan.rows(padded)
    members = (by_bucket[padded] * (2 * n // len(by_bucket[padded]) + 2))[: 2 * n]
    dev = next(model.parameters()).device
    enc = run.padded(members, padded)
    x_ids, other_ids = enc["input_ids"][:n], enc["input_ids"][n:]
    x_mask, other_mask = enc["attention_mask"][:n], enc["attention_mask"][n:]
    c = getattr(model.config, "text_config", None) or model.config
    dt = next(model.parameters()).dtype
    res: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "dtype": str(dt), "rows": n, "padded_length": padded, "kernels": kernels}

    # (a) one linear layer at the MLP's shape, M = rows x padded
    h, inter = c.hidden_size, c.intermediate_size
    w = torch.randn(inter, h, device=dev, dtype=dt) / h**0.5
    xs = torch.randn(n, padded, h, device=dev, dtype=dt)
    others = torch.randn(n, padded, h, device=dev, dtype=dt)
    heads = c.num_attention_heads
    hd = getattr(c, "head_dim", None) or h // heads
    q = torch.randn(n, heads, padded, hd, device=dev, dtype=dt)
    causal = torch.ones(padded, padded, device=dev, dtype=torch.bool).tril()

    def linear(b):
        return F.linear(b.reshape(-1, h), w).reshape(b.shape[0], padded, inter)

    def attn(qb, keep):  # SDPA with the padding mask (the model's heads and head size)
        return F.scaled_dot_product_attention(qb, qb, qb, attn_mask=causal & keep.bool()[:, None, None, :])

    def logits(b, keep):  # the model: last-position prefill logits
        return model(input_ids=b, attention_mask=keep, use_cache=False, logits_to_keep=1).logits[:, -1]

    def linear_decode(b):  # a decode step's GEMM: one token per row, M = rows (cuBLAS picks split-K here)
        return F.linear(b[:, -1], w)

    w_down = torch.randn(h, inter, device=dev, dtype=dt) / inter**0.5
    x_inter = torch.randn(n, 1, inter, device=dev, dtype=dt)
    head = model.get_output_embeddings().weight

    def linear_decode_down(b):  # the MLP's down projection at decode (K = intermediate size: the split-K case)
        return F.linear(b[:, -1], w_down)

    def linear_decode_head(b):  # the LM head at decode
        return F.linear(b[:, -1], head)

    def attn_decode(qb, keep):  # a decode step's SDPA: one query per row against its padded keys
        return F.scaled_dot_product_attention(qb[:, :, -1:], qb, qb, attn_mask=keep.bool()[:, None, None, :])

    def decode_logits(b, keep):  # the model: prefill, then 4 greedy decode steps; the 4th step's logits
        out = model(input_ids=b, attention_mask=keep, use_cache=True, logits_to_keep=1)
        cache, steps = out.past_key_values, []
        for _ in range(4):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            keep = torch.cat([keep, torch.ones_like(nxt)], dim=1)
            out = model(input_ids=nxt, attention_mask=keep, past_key_values=cache, use_cache=True)
            steps.append(out.logits[:, -1])
        return steps[-1]

    unaligned = padded - 13  # a decode step's key length is padded + t: not a multiple of 8 or 16 most steps

    def attn_decode_unaligned(qb, keep):
        return F.scaled_dot_product_attention(qb[:, :, unaligned - 1:unaligned], qb[:, :, :unaligned],
                                              qb[:, :, :unaligned], attn_mask=keep.bool()[:, None, None, :unaligned])

    def generate_logits(cache):  # transformers' generate as the hf backend runs it: the 5th step's logits
        def fn(b, keep):
            out = model.generate(input_ids=b, attention_mask=keep, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                 num_beams=1, cache_implementation=cache, disable_compile=True, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=run.backend.tok.pad_token_id)
            return out.logits[4]
        return fn

    parts = {"linear": (linear, (xs,), (others,)),
             "linear_decode_down": (linear_decode_down, (x_inter,), (torch.randn_like(x_inter),)),
             "linear_decode_head": (linear_decode_head, (xs,), (others,)),
             "sdpa_decode_unaligned": (attn_decode_unaligned, (q, x_mask), (torch.randn_like(q), other_mask)),
             "generate_dynamic_logits": (generate_logits("dynamic"), (x_ids, x_mask), (other_ids, other_mask)),
             "generate_static_logits": (generate_logits("static"), (x_ids, x_mask), (other_ids, other_mask)),
             "sdpa_masked": (attn, (q, x_mask), (torch.randn_like(q), other_mask)),
             "model_prefill_logits": (logits, (x_ids, x_mask), (other_ids, other_mask)),
             "linear_decode": (linear_decode, (xs,), (others,)),
             "sdpa_decode": (attn_decode, (q, x_mask), (torch.randn_like(q), other_mask)),
             "model_decode_logits": (decode_logits, (x_ids, x_mask), (other_ids, other_mask))}
    if a.parts:
        parts = {k: v for k, v in parts.items() if k in a.parts.split(",")}
    if a.attn:
        model.set_attn_implementation(a.attn)
    res.update(sdpa_backend=a.sdpa_backend or "auto", attn_implementation=model.config._attn_implementation,
               deterministic_algorithms=a.deterministic)
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel

    pinned = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION}
    with torch.inference_mode(), (sdpa_kernel([pinned[a.sdpa_backend]]) if a.sdpa_backend else nullcontext()):
        for part, (fn, x, o) in parts.items():
            try:
                res[part] = probe(fn, x, o)
            except RuntimeError as ex:  # --deterministic: the op without a deterministic implementation
                if not a.deterministic:
                    raise
                res[part] = {"error": str(ex).splitlines()[0][:500]}
                print(part, "error:", res[part]["error"], flush=True)
    for part in parts:
        print(part, json.dumps(res[part]), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
