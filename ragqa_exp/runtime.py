"""Where and in what precision this process computes: the device, what `auto` dtypes and `quant.device`
resolve to (`build_settings`: the resolved settings the cache keys and the fingerprint hold), and releasing
memory between measurements. Imports torch inside functions (the job process never imports it)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ragqa_exp.errors import ConfigError, ResourceError

if TYPE_CHECKING:
    import torch


DTYPE_NAMES = ("float32", "bfloat16", "float16")  # torch attribute names


def seed_all(seed: int) -> None:
    """Seed `random`, numpy and torch (every CUDA device too): what `transformers.set_seed` does, without importing
    transformers' trainer utilities (they import peft, bitsandbytes and torchao: ~3 s of CPU per process)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


INVARIANT_CUBLAS_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":16:8", "CUBLASLT_WORKSPACE_SIZE": "1"}


def batch_invariant_kernels() -> dict:
    """`eval.invariant_kernels`: GEMMs whose result for a row does not depend on the other rows or the row's
    place in the batch. On Hopper the one source of that dependence in cuBLAS is split-K / stream-K, which needs
    a workspace: vLLM's `VLLM_BATCH_INVARIANT=1` recipe (vllm/model_executor/layers/batch_invariant.py) gives
    cuBLAS and cuBLASLt (almost) none, turns reduced-precision reductions off and prefers cuBLASLt. The
    workspace sizes are read when this process creates its first cuBLAS handle: call this before the first GEMM
    on the GPU (the eval process calls it before loading). Returns what it set, for metrics.json; on a CPU
    nothing (fixed shapes are what keeps a CPU's answers)."""
    import os

    import torch

    if not torch.cuda.is_available():
        return {"invariant_kernels": False, "reason": "no CUDA device: fixed shapes alone"}
    changed = any(os.environ.get(k) != v for k, v in INVARIANT_CUBLAS_ENV.items())
    os.environ.update(INVARIANT_CUBLAS_ENV)
    m = torch.backends.cuda.matmul
    m.allow_bf16_reduced_precision_reduction = False
    m.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.preferred_blas_library("cublaslt")
    return {"invariant_kernels": True, **INVARIANT_CUBLAS_ENV, "preferred_blas_library": "cublaslt",
            "reduced_precision_reduction": False,
            "set_after_cuda_init": changed and torch.cuda.is_initialized()}


# The CUBLAS_WORKSPACE_CONFIG values torch accepts in deterministic mode; the first is set when none is.
CUBLAS_DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")


def deterministic_algorithms() -> dict:
    """`eval.deterministic`: `torch.use_deterministic_algorithms(True)` for this process on a GPU. CUDA ops with a
    deterministic implementation then use it, and one without raises, naming itself (the hf backend turns that
    into a one-line error). On an H100 at 7B shapes the canonical plan's greedy answers moved run to run in the
    decode loop without it (408 of 941 questions) and not at all with it (benchmarks/H200_BATCH_PLAN.md,
    2026-12-05). cuBLAS needs a fixed workspace for it: CUBLAS_WORKSPACE_CONFIG is set unless already set
    (`eval.invariant_kernels` sets a smaller one, which also qualifies). Deterministic mode would also fill every
    `torch.empty` with NaN (`torch.utils.deterministic.fill_uninitialized_memory`, a debugging aid that torch's
    docs call detrimental to performance: an extra write of every GEMM output and KV cache); it is turned off, as
    torch advises for programs that never read uninitialized memory (the GPU batch-invariance tests and the noise
    check still compare every answer). Returns what it set, for metrics.json; on a CPU nothing (there the answers
    were already the same run to run)."""
    import os

    import torch

    if not torch.cuda.is_available():
        return {"deterministic_algorithms": False, "deterministic_reason": "no CUDA device"}
    workspace = os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACES[0])
    if workspace not in CUBLAS_DETERMINISTIC_WORKSPACES:  # torch would raise at the first GEMM, many lines
        raise ConfigError(
            f"eval.deterministic=true: CUBLAS_WORKSPACE_CONFIG={workspace} in the environment, and cuBLAS is "
            f"deterministic only with {' or '.join(CUBLAS_DETERMINISTIC_WORKSPACES)}: unset it, set one of those, or "
            "set eval.deterministic=false"
        )
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    return {"deterministic_algorithms": True, "CUBLAS_WORKSPACE_CONFIG": workspace, "fill_uninitialized_memory": False}


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_quant_device(requested: str) -> str:
    """`quant.device` (auto | cpu | cuda[:N]) -> the device the quant stage runs on."""
    import torch

    req = (requested or "auto").strip().lower()
    if req == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if req == "cpu":
        return "cpu"
    if req == "cuda" or req.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ResourceError(
                f"quant.device={requested}: no CUDA GPU is visible to torch; "
                "set quant.device=cpu (or auto) or run on a GPU machine"
            )
        n = torch.cuda.device_count()
        if req.startswith("cuda:") and int(req[5:]) >= n:
            raise ResourceError(f"quant.device={requested}: torch sees {n} GPU(s), cuda:0 to cuda:{n - 1}; pick one of them")
        return req
    raise ConfigError(f"quant.device={requested!r}: choose auto, cpu or cuda")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX): bf16 is then ~2.5x faster than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, dev: str | None = None) -> torch.dtype:
    """`auto`: bf16 on a GPU that supports it, fp16 on an older GPU; on CPU bf16 where the CPU has native
    bf16 instructions, else fp32."""
    import torch

    if name == "auto":
        dev = dev or device()
        if dev == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in DTYPE_NAMES:
        raise ConfigError(f"dtype {name!r}: choose auto, {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_settings(cfg) -> dict:
    """What `auto` means here, for cache keys and the job's fingerprint: the device class a stage computes on
    and the dtypes/devices that `model.dtype`, `train.merge_dtype` and `quant.device` resolve to. Runs in a
    stage process (pipeline: the job process does not import torch); the stages resolve with the same
    functions, so the keys name what they build."""
    dev = device()
    out = {"device": dev, "model.dtype": dtype_name(resolve_dtype(cfg.model.dtype, dev))}
    if cfg.train.enabled:
        out["train.merge_dtype"] = dtype_name(resolve_dtype(cfg.train.merge_dtype, dev))
    if cfg.quant.produces_artifact and hasattr(cfg.quant, "device"):
        qdev = resolve_quant_device(cfg.quant.device)
        out["quant.device"] = qdev
        out["quant.model_dtype"] = dtype_name(resolve_dtype(cfg.model.dtype, "cuda" if qdev.startswith("cuda") else "cpu"))
    return out


def release_memory(collect: bool = True) -> None:
    """Free dropped tensors now (and CUDA's cached blocks), so the next measurement sees only its own. `collect`:
    with a garbage-collector pass (~0.2 s with a model loaded), for what a reference cycle keeps; without, only what
    reference counts already freed goes back."""
    import gc

    if collect:
        gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
