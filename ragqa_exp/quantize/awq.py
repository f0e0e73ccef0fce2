"""quant=awq: AWQ through gptqmodel (GEMM format), with ragqa_exp's Gemma 3 workarounds, run on a kernel
chosen by `_kernels.py`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ragqa_exp.errors import choice
from ragqa_exp.quantize._kernels import check_backend_name
from ragqa_exp.quantize.base import LoadedModel, QuantConfig, QuantInputs

BITS = (4,)  # the GEMM format packs 4-bit weights only
GROUP_SIZES = (32, 64, 128)


@dataclass
class AwqQuantConfig(QuantConfig):
    method: str = "awq"
    bits: int = choice(4, BITS)
    group_size: int = choice(128, GROUP_SIZES)
    # false (default): asymmetric, a zero point per group (the original AWQ recipe; measured better than
    # symmetric on the embedded model: benchmarks/QUANT_NOTES.md); true: symmetric, no zero points
    sym: bool = False
    backend: str = "auto"  # kernel that runs the artifact: auto | marlin | exllama_v2 | triton | torch | ...

    needs_calibration: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("gptqmodel",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_backend_name("awq", self.backend)


Config = AwqQuantConfig  # the schema ragqa_exp.quantize.methods() registers


def quantize(cfg: AwqQuantConfig, inputs: QuantInputs, out_dir: Path) -> dict:
    from ragqa_exp.quantize import _gptqmodel

    def quantize_config(gptqmodel):
        from gptqmodel.quantization import FORMAT, METHOD

        return gptqmodel.QuantizeConfig(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.sym, method=METHOD.AWQ,
                                        format=FORMAT.GEMM)

    return {**_gptqmodel.quantize("awq", quantize_config, cfg, inputs, out_dir), "format": "gemm"}


def load(cfg: AwqQuantConfig, artifact_dir: str, model_cfg) -> LoadedModel:
    from ragqa_exp.quantize import _gptqmodel

    return _gptqmodel.load("awq", cfg, artifact_dir, model_cfg)
