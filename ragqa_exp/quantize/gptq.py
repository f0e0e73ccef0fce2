"""quant=gptq: GPTQ through gptqmodel, saved in GPTQ v1 format (what transformers/optimum, vLLM and TGI read),
run on a kernel chosen by `_kernels.py`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ragqa_exp.errors import check, choice
from ragqa_exp.quantize._kernels import check_backend_name
from ragqa_exp.quantize.base import LoadedModel, QuantConfig, QuantInputs

BITS = (2, 3, 4, 8)  # what gptqmodel's GPTQ packs (Marlin runs 4 and 8; the torch kernel all four)


def check_group_size(value: int) -> None:
    ok = value == -1 or (isinstance(value, int) and value >= 16 and value & (value - 1) == 0)
    check(ok, "quant.group_size", value, "use -1 (one group per row) or a power of two >= 16, e.g. 32, 64, 128")


@dataclass
class GptqQuantConfig(QuantConfig):
    method: str = "gptq"
    bits: int = choice(4, BITS)
    group_size: int = 128
    sym: bool = True
    desc_act: bool = False
    backend: str = "auto"  # kernel that runs the artifact: auto | marlin | exllama_v2 | triton | torch | ...

    needs_calibration: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("gptqmodel", "optimum")  # optimum: transformers' GPTQ loading, peft

    def __post_init__(self) -> None:
        super().__post_init__()
        check_group_size(self.group_size)
        check_backend_name("gptq", self.backend)


Config = GptqQuantConfig  # the schema ragqa_exp.quantize.methods() registers


def quantize(cfg: GptqQuantConfig, inputs: QuantInputs, out_dir: Path) -> dict:
    from ragqa_exp.quantize import _gptqmodel

    def quantize_config(gptqmodel):
        from gptqmodel.quantization import FORMAT, METHOD

        return gptqmodel.QuantizeConfig(bits=cfg.bits, group_size=cfg.group_size, sym=cfg.sym, desc_act=cfg.desc_act,
                                        method=METHOD.GPTQ, format=FORMAT.GPTQ)

    return {**_gptqmodel.quantize("gptq", quantize_config, cfg, inputs, out_dir), "format": "gptq"}


def load(cfg: GptqQuantConfig, artifact_dir: str, model_cfg) -> LoadedModel:
    from ragqa_exp.quantize import _gptqmodel

    return _gptqmodel.load("gptq", cfg, artifact_dir, model_cfg)
