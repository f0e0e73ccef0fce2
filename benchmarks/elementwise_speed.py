"""The compiled element-wise pieces alone at 7B shapes (issue 19's prefill): how fast each way of running RoPE, the
RMSNorm and the MLP's act(gate) * up is, and whether it computes eager's numbers (and strides) bit for bit.
Session 19's whole-layer profile found a fused RoPE kernel at about a seventh of the GPU's memory bandwidth; session
20 ran RoPE's forms (as `rope_speed.py`, commit 7c172a1, with two more forms since removed: RoPE run token-major, and
rotate_half without a cat, both exact and both slower) and found the product's pieces slowed by their dynamic
shapes: with `dynamic=True` every size is symbolic, the head and hidden sizes too, so each kernel indexes with
runtime divisions (benchmarks/H200_PROFILE.md, session 20).

Inputs as Llama-2-7B's decoder makes them: q and k a projection's output [rows, tokens, 4096] viewed as [rows, tokens,
32, 128] and transposed, cos and sin [rows, tokens, 128] (the eval passes each row's position ids); the norm's input
[rows, tokens, 4096]; gate and up [rows, tokens, 11008]; bf16. `rope_shared_cos`: RoPE with cos and sin [1, tokens,
128], as transformers makes them for a forward without position ids (profile_eval.py's before session 21, whose
compiled RoPE ran at a quarter of its speed alone).

Forms:
  eager          the model's own (transformers' apply_rotary_pos_emb, LlamaRMSNorm, SiLU(gate) * up)
  dynamic        eval.elementwise=compiled's piece as it is (exact_compile.compiled, dynamic=True, eager's roundings)
  auto           the same with Dynamo's automatic dynamic shapes (exact_compile.DYNAMIC=None, eval_speed.py's
                 `:auto-dynamic`): first called at one more row and 8 more tokens, so the graph timed is the one whose
                 changed sizes (rows, tokens) are symbolic and whose head and hidden sizes stay constants
  static         compiled for each shape (dynamic=False)

Each form: CUDA-event median of --reps calls after a warm-up, the bytes the piece must move over that time, and
whether its outputs equal eager's.

  python benchmarks/elementwise_speed.py --out elementwise_speed.json   # a GPU; on a CPU small shapes, the check only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FORMS = ("eager", "dynamic", "auto", "static")


def compiled(fn, dynamic):
    """exact_compile.compiled with that `dynamic` (True: the product's; None: automatic; False: per shape)."""
    from ragqa_exp.backends import exact_compile

    before, exact_compile.DYNAMIC = exact_compile.DYNAMIC, dynamic
    try:
        return exact_compile.compiled(("elementwise_speed", fn), fn)
    finally:
        exact_compile.DYNAMIC = before


class Piece:
    """One piece: its eager function, the compiled function each form runs, its inputs at a shape, and the bytes it
    must move."""

    def __init__(self, name: str, device: str) -> None:
        import torch
        import transformers.models.llama.modeling_llama as llama
        from transformers.activations import ACT2FN

        from ragqa_exp.backends import exact_compile

        self.name = name
        gpu = device == "cuda"
        self.hidden, self.heads, self.head_dim, self.inter = (4096, 32, 128, 11008) if gpu else (256, 4, 64, 512)
        if name in ("rope", "rope_shared_cos"):
            self.eager = getattr(llama.apply_rotary_pos_emb, "__wrapped__", llama.apply_rotary_pos_emb)
            self.own = self.eager
        elif name == "norm":
            self.module = llama.LlamaRMSNorm(self.hidden, eps=1e-5)
            self.module.weight.data.normal_(1.0, 0.3, generator=torch.Generator().manual_seed(0))
            self.module.to(device=device, dtype=torch.bfloat16)
            self.eager = lambda x: type(self.module).forward(self.module, x)
            self.own = exact_compile.llama_rms_norm
        else:
            act = ACT2FN["silu"]
            self.eager = lambda gate, up: act(gate) * up
            self.own = self.eager

    def form(self, form: str):
        if form == "eager":
            return self.eager
        fn = compiled(self.own, {"dynamic": True, "auto": None, "static": False}[form])
        if self.name == "norm":
            return lambda x: fn(x, self.module.weight, self.module.variance_epsilon)
        return fn

    def inputs(self, rows: int, tokens: int, device: str) -> tuple:
        import torch

        gen = torch.Generator(device=device).manual_seed(rows * 1000 + tokens)

        def randn(*shape):
            return torch.randn(*shape, generator=gen, device=device, dtype=torch.bfloat16)

        if self.name.startswith("rope"):  # a projection's output, viewed and transposed as LlamaAttention does
            q, k = (randn(rows, tokens, self.heads * self.head_dim).view(rows, tokens, self.heads, self.head_dim)
                    .transpose(1, 2) for _ in range(2))
            cos_rows = 1 if self.name == "rope_shared_cos" else rows
            angle = torch.rand(cos_rows, tokens, self.head_dim, generator=gen, device=device) * 6.3
            return q, k, angle.cos().to(torch.bfloat16), angle.sin().to(torch.bfloat16)
        if self.name == "norm":
            return (randn(rows, tokens, self.hidden),)
        return randn(rows, tokens, self.inter), randn(rows, tokens, self.inter)

    @staticmethod
    def moved(args, outs) -> int:
        return sum(t.numel() * t.element_size() for t in (*args, *outs))


def as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def same_strides(a, b) -> bool:
    """Equal strides on every dimension longer than 1 (a dimension of size 1 has no stride that matters)."""
    return a.shape == b.shape and all(x == y for x, y, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def timed(fn, args, reps: int, device: str) -> list[float]:
    import torch

    for _ in range(3):
        fn(*args)
    out = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn(*args)
            out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pieces", default="rope,norm,act_mul")
    ap.add_argument("--forms", default=None, help="comma-separated; default: every form of each piece")
    ap.add_argument("--shapes", default=None, help="rows x tokens, comma-separated (GPU default: the eval's "
                    "16,384-token prefill slice, session 19's 32,768-token batch, a decode step; CPU: small ones)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    gpu = a.device == "cuda"
    shapes = (a.shapes or ("19x832,38x832,77x1" if gpu else "2x64,3x1")).split(",")
    shapes = [tuple(int(x) for x in s.split("x")) for s in shapes]
    res = {"device": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__, "reps": a.reps,
           "pieces": {}}
    for name in a.pieces.split(","):
        piece = Piece(name, a.device)
        forms = [f for f in FORMS if a.forms is None or f in a.forms.split(",")]
        fns = {form: piece.form(form) for form in forms}
        res["pieces"][name] = {"hidden": piece.hidden, "heads": piece.heads, "head_dim": piece.head_dim,
                               "intermediate": piece.inter, "shapes": {}}
        for rows, tokens in shapes:
            args = piece.inputs(rows, tokens, a.device)
            row = res["pieces"][name]["shapes"][f"{rows}x{tokens}"] = {}
            with torch.inference_mode():
                want = as_tuple(piece.eager(*args))
                moved = piece.moved(args, want)
                row["bytes"] = moved
                for form, fn in fns.items():
                    t = time.perf_counter()
                    if form == "auto":  # another shape first: the graph timed has its changed sizes symbolic
                        fn(*piece.inputs(rows + 1, tokens + 8 if tokens > 1 else 1, a.device))
                    got = as_tuple(fn(*args))  # the first call compiles
                    first = time.perf_counter() - t
                    med = statistics.median(ms := timed(fn, args, a.reps, a.device))
                    row[form] = {"ms_median": round(med, 4), "ms_runs": [round(x, 4) for x in ms],
                                 "first_call_s": round(first, 2), "GB_per_s": round(moved / med / 1e6, 1),
                                 "values_equal": all(torch.equal(g, w) for g, w in zip(got, want)),
                                 "strides_equal": all(same_strides(g, w) for g, w in zip(got, want))}
                    print(f"{name} {rows}x{tokens} {form}: {med:.3f} ms, {row[form]['GB_per_s']} GB/s, values equal "
                          f"{row[form]['values_equal']}, strides equal {row[form]['strides_equal']}, first call "
                          f"{first:.1f} s", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
