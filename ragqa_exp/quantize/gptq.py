"""quant=gptq: GPTQ 4-bit through gptqmodel, saved in GPTQ v1 format, reloaded on an explicit kernel."""
from __future__ import annotations

from ragqa_exp.quantize import QuantRequest, QuantResult
from ragqa_exp.quantize._gptqmodel import quantize_and_load as _quantize_and_load


def quantize_and_load(req: QuantRequest) -> QuantResult:
    return _quantize_and_load(req, "gptq")
