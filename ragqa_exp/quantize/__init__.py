"""Stage 2: quantize the (merged) model and load it for evaluation.

One module per method, each exposing `quantize_and_load(req: QuantRequest) -> QuantResult`.
Adding a method = `conf/quant/<name>.yaml` + `ragqa_exp/quantize/<name>.py` + a QuantMethod value.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ragqa_exp.config import RunConfig


@dataclass
class QuantRequest:
    cfg: RunConfig
    model_dir: str  # the merged (or base) model in full precision
    out_dir: Path  # where a quantized artifact is saved (the job's output dir / "quantized")
    calib_texts: list[str] = field(default_factory=list)


@dataclass
class QuantResult:
    model: Any
    tokenizer: Any
    method: str
    bits: Optional[int] = None
    group_size: Optional[int] = None
    kernel: Optional[str] = None  # the layer implementation that runs the 4-bit matmuls
    kernel_fallback_reason: Optional[str] = None
    quant_seconds: Optional[float] = None
    model_size_mib: Optional[float] = None  # weights on disk
    artifact_dir: Optional[str] = None
    extra: dict = field(default_factory=dict)


def quantize_and_load(req: QuantRequest) -> QuantResult:
    method = req.cfg.quant.method.value
    module = importlib.import_module(f"ragqa_exp.quantize.{method}")
    return module.quantize_and_load(req)
