"""Which part of a fixed-shape batch moves a question's numbers (issue 17's follow-up on the H200)?

The canonical plan fixes every batch's shapes, yet on the H200 at 7B shapes 440 of 941 questions' greedy
tokens changed with another batch composition (benchmarks/H200_EVAL.md, 2026-12-05). This probe separates the
candidate causes, bit for bit, on one canonical batch (rows x padded length) of the given model:

- run to run: the same batch twice;
- row position: the same batch with its rows reversed (results un-permuted before comparing);
- batch-mates: the batch with its second half replaced by other prompts of the same bucket (the first half
  compared);
for (a) one `F.linear` at the model's MLP shape (M = rows x padded tokens), (b) SDPA with the padding mask, and
(c) the model's last-position prefill logits. Each line: rows that differ at all, and the largest difference.

  python benchmarks/invariance_probe.py --model-dir DIR --overrides model=llama2_7b_shapes --out OUT.json
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
    return {"run_to_run": compare(base, again), "row_position": compare(base, rev),
            "batch_mates": compare(base[:half], mixed[:half])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="none")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--rows", type=int, default=0, help="rows of the probed batch (0: the canonical plan's)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from bench_setup import load

    torch.manual_seed(0)
    run = load(a.quant, a.model_dir, a.overrides)
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
                 "torch": torch.__version__, "dtype": str(dt), "rows": n, "padded_length": padded}

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

    with torch.inference_mode():
        res["linear"] = probe(linear, (xs,), (others,))
        res["sdpa_masked"] = probe(attn, (q, x_mask), (torch.randn_like(q), other_mask))
        res["model_prefill_logits"] = probe(logits, (x_ids, x_mask), (other_ids, other_mask))
    for part in ("linear", "sdpa_masked", "model_prefill_logits"):
        print(part, json.dumps(res[part]), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
