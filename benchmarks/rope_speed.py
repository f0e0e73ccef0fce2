"""RoPE alone at 7B shapes (issue 19's prefill): how fast each way of running `apply_rotary_pos_emb` is, and whether it
computes eager's numbers and strides bit for bit. Session 19's whole-layer profile found the fused RoPE kernel at about
a seventh of the GPU's memory bandwidth; this says whether the product's compiled piece is as slow, and which exact
form is not.

q and k are laid out as Llama's attention makes them: a projection's output [rows, tokens, 4096] viewed as
[rows, tokens, 32, 128] and transposed to [rows, 32, tokens, 128]; cos and sin are [rows, tokens, 128] in bf16.

  eager          transformers' apply_rotary_pos_emb (Llama's), as the model runs it without compile
  pieces         eval.elementwise=compiled's piece as it is (exact_compile.compiled: dynamic shapes, eager's roundings)
  pieces-static  the same compiled for each shape (dynamic=False)
  token-major    elementwise.token_major over the pieces' compiled function: RoPE run on [rows, tokens, heads, dim],
                 the layout the projection wrote, and handed back transposed (eval_speed.py's `:rope-tokens`)
  token-major-static  the same with dynamic=False
  flip           exact_compile.flip_rope compiled (dynamic): rotate_half as the halves swapped by a flip and signed by a multiply by
                 -1 / +1 (exact), no cat, so the kernel's index is a plain affine one; token-major-flip: through
                 token_major

Each form: CUDA-event median of --reps calls after a warm-up, the bytes it must move (q and k read and written, cos
and sin read) over that time, and whether its outputs equal eager's (values, then strides).

  python benchmarks/rope_speed.py --out rope_speed.json   # a GPU; on a CPU it runs small shapes, for the check only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FORMS = ("eager", "pieces", "pieces-static", "token-major", "token-major-static", "flip", "token-major-flip")


def form(name: str, rope):
    import torch

    from ragqa_exp.backends import elementwise, exact_compile

    if name == "eager":
        return rope
    if name.endswith("flip"):
        fn = exact_compile.compiled(("rope", exact_compile.flip_rope), exact_compile.flip_rope)
        return elementwise.token_major(fn) if name.startswith("token-major") else fn
    static = name.endswith("-static")
    fn = (torch.compile(rope, dynamic=False, options={"emulate_precision_casts": True}) if static
          else exact_compile.compiled(("rope", rope), rope))
    return elementwise.token_major(fn) if name.startswith("token-major") else fn


def inputs(rows: int, tokens: int, heads: int, dim: int, device: str):
    import torch

    gen = torch.Generator(device=device).manual_seed(rows * 1000 + tokens)

    def projected():  # a q_proj / k_proj output, viewed and transposed as LlamaAttention does
        x = torch.randn(rows, tokens, heads * dim, generator=gen, device=device, dtype=torch.bfloat16)
        return x.view(rows, tokens, heads, dim).transpose(1, 2)

    angle = torch.rand(rows, tokens, dim, generator=gen, device=device) * 6.3
    return projected(), projected(), angle.cos().to(torch.bfloat16), angle.sin().to(torch.bfloat16)


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
    ap.add_argument("--shapes", default=None, help="rows x tokens, comma-separated (GPU default: the eval's 16,384-token "
                    "prefill slice, session 19's 32,768-token batch, a decode step; CPU: small ones)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import transformers.models.llama.modeling_llama as llama

    rope = getattr(llama.apply_rotary_pos_emb, "__wrapped__", llama.apply_rotary_pos_emb)
    shapes = a.shapes or ("19x832,38x832,77x1" if a.device == "cuda" else "2x64,3x1")
    heads, dim = (32, 128) if a.device == "cuda" else (4, 64)
    res = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "torch": torch.__version__,
           "heads": heads, "head_dim": dim, "reps": a.reps, "shapes": {}}
    fns = {name: form(name, rope) for name in FORMS}
    for shape in shapes.split(","):
        rows, tokens = (int(x) for x in shape.split("x"))
        args = inputs(rows, tokens, heads, dim, a.device)
        with torch.inference_mode():
            want = rope(*args)
            moved = 2 * 2 * args[0].numel() * 2 + 2 * args[2].numel() * 2  # q, k read + written; cos, sin read
            row = res["shapes"][shape] = {"bytes": moved}
            for name, fn in fns.items():
                t = time.perf_counter()
                got = fn(*args)  # the first call compiles
                first = time.perf_counter() - t
                ms = timed(fn, args, a.reps, a.device)
                med = statistics.median(ms)
                row[name] = {"ms_median": round(med, 4), "ms_runs": [round(x, 4) for x in ms],
                             "first_call_s": round(first, 2), "GB_per_s": round(moved / med / 1e6, 1),
                             "values_equal": all(torch.equal(g, w) for g, w in zip(got, want)),
                             "strides_equal": all(same_strides(g, w) for g, w in zip(got, want)),
                             "strides": [list(g.stride()) for g in got]}
                print(f"{shape} {name}: {med:.3f} ms, {row[name]['GB_per_s']} GB/s, values equal "
                      f"{row[name]['values_equal']}, strides equal {row[name]['strides_equal']} {row[name]['strides']}"
                      f" (eager's {[list(w.stride()) for w in want]}), first call {first:.1f} s", flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
