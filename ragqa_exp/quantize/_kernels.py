"""Which gptqmodel kernel runs a GPTQ/AWQ artifact: chosen here, never by gptqmodel's automatic choice (on
Hopper that picks Machete, which downloads CUTLASS at first use and fails offline).

- `quant.backend=auto`: the torch kernel (dequantize, then the dense matmul: cuBLAS on a GPU) on every device. On
  a GPU it keeps a question's answers whatever its batch-mates under the canonical plan, where Marlin does not
  (tests/test_batch_invariance.py, GPU_CASES), and at 7B shapes it evaluated faster than Marlin and loaded
  without Marlin's JIT build (benchmarks/H200_BATCH_PLAN.md, fourth follow-up). Marlin, ExLlamaV2, Triton:
  by name (`quant.backend=marlin`).
- any other value: that kernel (a gptqmodel BACKEND name or value, case-insensitive), used as is.
"""
from __future__ import annotations

from typing import Any

from ragqa_exp.errors import ConfigError, ResourceError, check_choice

# Each method's torch kernel (BACKEND member names): quant.backend=auto's pick on every device, and the kernel that
# packs the weights at the end of quantization (the layout is the same for every kernel of a format).
TORCH_KERNEL = {"gptq": "GPTQ_TORCH", "awq": "AWQ_TORCH"}
# Names gptqmodel does not map for a method but that mean one kernel here (`quant.backend=triton` for AWQ).
BACKEND_ALIASES = {"awq": {"triton": "awq_gemm_triton"}}

# The names `quant.backend` accepts, checked at compose time without importing gptqmodel (slow to import).
# Written from gptqmodel 7.6.0's BACKEND enum; tests/test_quant_schema.py checks them against the installed one.
KERNEL_NAMES = {
    "gptq": (
        "auto", "gptq_torch_fused", "gptq_torch_int8", "gptq_torch", "gptq_triton", "gptq_exllama_v2", "gptq_machete",
        "gptq_swordfish", "gptq_marlin", "gptq_w4afp8", "gptq_w4a_nvfp4", "gptq_bitblas", "gptq_torch_aten",
        "torch_fused", "torch_int8", "torch", "triton", "exllama_v2", "machete", "swordfish", "marlin", "bitblas",
    ),
    "awq": (
        "auto", "awq_gemm", "awq_gemm_triton", "awq_gemv", "awq_gemv_fast", "awq_torch_int8", "awq_torch_fused",
        "awq_torch_aten", "awq_torch", "awq_bitblas", "awq_machete", "awq_marlin", "awq_swordfish", "awq_exllama_v2",
        "gemm", "gemm_triton", "gemv", "gemv_fast", "torch", "torch_awq", "torch_int8", "torch_int8_awq", "torch_fused",
        "torch_fused_awq", "bitblas", "bitblas_awq", "machete", "marlin", "swordfish", "exllama_v2", "triton",
    ),
}


def check_backend_name(method: str, name: str) -> None:
    check_choice("quant.backend", str(name).strip().lower(), KERNEL_NAMES[method])


def valid_backend_names(method: str) -> list[str]:
    """The names the installed gptqmodel accepts for `method` (what KERNEL_NAMES was written from)."""
    from gptqmodel import BACKEND

    own = [m.lower() for m in BACKEND.__members__ if m.lower().startswith(method + "_")]
    try:  # generic names gptqmodel maps onto this method's kernels (torch -> gptq_torch / awq_torch, ...)
        from gptqmodel.utils.backend import _LEGACY_BACKEND_BY_METHOD

        generic = [b.value for b in _LEGACY_BACKEND_BY_METHOD.get(method, {})]
    except ImportError:
        generic = []
    return ["auto", *own, *generic, *BACKEND_ALIASES.get(method, {})]


def resolve_backend(method: str, name: str) -> tuple[Any, bool]:
    """(the kernel, whether the user named it). An unknown name is a ConfigError."""
    from gptqmodel import BACKEND
    from gptqmodel.utils.backend import normalize_backend

    raw = (name or "auto").strip()
    raw = BACKEND_ALIASES.get(method, {}).get(raw.lower(), raw)
    if raw.lower() == "auto":
        return BACKEND[TORCH_KERNEL[method]], False
    member = BACKEND.__members__.get(raw.upper())
    if member is None:
        try:
            member = BACKEND(raw.lower())
        except ValueError:
            member = None
    if member is not None:
        member = normalize_backend(member, quant_method=method)  # generic names: torch -> gptq_torch / awq_torch
    if member is None or not member.value.startswith(method + "_"):
        raise ConfigError(
            f"quant.backend={raw!r} is not a gptqmodel kernel for quant={method}; "
            f"valid: {', '.join(valid_backend_names(method))}"
        )
    return member, True


def quant_kernels(model) -> list[str]:
    """Class names of the gptqmodel quantized linear layers in `model`."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return sorted({type(m).__name__ for m in model.modules() if isinstance(m, BaseQuantLinear)})


def eager_torch_dequantize(model) -> int:
    """On a CPU: undo gptqmodel's torch.compile of the GPTQ torch kernel's `dequantize_weight` (TorchLinear's
    post_init wraps it, per layer; gptqmodel raises dynamo's cache limit to 128, so every layer is traced and
    compiled again in every process that loads the model: ~10 CPU s of a 270M model's eval process on a 2-core
    CPU, and the eager decode measured no slower). The eager function computes the same numbers (one
    rounding of scale x integer to the model's dtype either way): greedy answers measured token-identical.
    Returns how many layers were switched back."""
    try:
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    except ImportError:
        return 0
    switched = 0
    for m in model.modules():
        if type(m) is TorchLinear and "dequantize_weight" in vars(m):  # the compiled wrapper, set on the instance
            del m.dequantize_weight  # the class's own method again
            switched += 1
    return switched


def _one_line(e: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:limit]}"


def load_quantized(gptqmodel, out_dir, backend, dev: str, dtype, user_given: bool, trust: bool = False):
    """The saved artifact loaded on `backend`; a kernel that does not load is one line saying what to try."""
    try:
        return gptqmodel.GPTQModel.load(str(out_dir), backend=backend, device=dev, dtype=dtype, trust_remote_code=trust)
    except Exception as e:  # noqa: BLE001  any kernel failure: one line
        raise ResourceError(
            f"quant.backend={backend.value}: the quantized model in {out_dir} did not load with it ({_one_line(e)})"
            + ("; try quant.backend=auto or another kernel" if user_given
               else "; name another kernel (on a GPU e.g. quant.backend=marlin)")
        ) from e
