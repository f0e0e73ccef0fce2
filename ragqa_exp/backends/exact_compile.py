"""Eager's numbers under torch.compile (backends/elementwise.py's pieces, backends/compiled_layers.py's whole layers):
RMSNorm forwards whose mean is an eager reduction (`mean_last`, a custom op Inductor cannot see into: a compiled
reduction picks its own summation order), and `compiled`, torch.compile with Inductor's `emulate_precision_casts` (a
fused kernel rounds to bf16/fp16 wherever the eager ops would)."""
from __future__ import annotations

from typing import Callable

_compiled: dict = {}  # one compiled function per key and process (dynamic shapes: every bucket, every row count)
RECOMPILE_LIMIT = 64  # graphs per compiled piece (`compiled`)
DYNAMIC = True  # torch.compile's `dynamic`: None, Dynamo's automatic dynamic shapes (eval_speed.py's `:auto-dynamic`;
# on an H100 the 7B eval no faster with it, session 21)


def mean_last():
    """`mean_last(y)` = `y.mean(-1, keepdim=True)` as a custom op: opaque to Inductor, so a compiled norm around it
    keeps eager's reduction."""
    import torch

    if "mean_last" not in _compiled:
        @torch.library.custom_op("ragqa_exp::mean_last", mutates_args=(), schema="(Tensor y) -> Tensor")
        def op(y):
            return y.mean(-1, keepdim=True)

        @op.register_fake
        def _(y):
            return y.new_empty(*y.shape[:-1], 1)

        _compiled["mean_last"] = torch.ops.ragqa_exp.mean_last
    return _compiled["mean_last"]


def llama_rms_norm(x, weight, eps: float):
    """LlamaRMSNorm.forward's numbers (transformers 5.2x; Qwen2's and Mistral's are copies), the mean eager."""
    import torch

    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(mean_last()(h.pow(2)) + eps)
    return weight * h.to(dtype)


def gemma_rms_norm(x, weight, eps: float):
    """Gemma3RMSNorm.forward's numbers: the scale (1 + weight) applied in float32, the mean eager."""
    import torch

    h = x.float()
    h = h * torch.rsqrt(mean_last()(h.pow(2)) + eps)
    return (h * (1.0 + weight.float())).type_as(x)


NORMS = {"LlamaRMSNorm": (llama_rms_norm, "variance_epsilon"), "Qwen2RMSNorm": (llama_rms_norm, "variance_epsilon"),
         "MistralRMSNorm": (llama_rms_norm, "variance_epsilon"), "Gemma3RMSNorm": (gemma_rms_norm, "eps")}


def compiled(key, fn: Callable) -> Callable:
    import torch

    # Dynamo traces a piece again per rank and per size-1 dimension (a decode step's one token, a batch of one row,
    # Gemma 3's one KV head under its k_norm): one eval of the embedded model on a CPU took Gemma3RMSNorm's 8
    # graphs, Dynamo's default limit, past which a new shape runs eager without a word. Each eval has its process.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    key = (key, DYNAMIC)
    if key not in _compiled:
        mean_last()  # registered before any trace: made while tracing a norm, it broke the norm's graph in two (its
        # x.to(float32) then ran alone, one more pass over memory)
        _compiled[key] = torch.compile(fn, dynamic=DYNAMIC, options={"emulate_precision_casts": True})
    return _compiled[key]


def norm_forward(module, fn: Callable, eps: float) -> Callable:
    return lambda x: fn(x, module.weight, eps)


def compile_failure(ex: Exception) -> str:
    """The one line eval_plan.elementwise gives for a compile that failed (the exception's first line)."""
    first_line = (str(ex).strip().splitlines() or [""])[0][:200]
    return f"torch.compile failed: {type(ex).__name__}: {first_line}"
