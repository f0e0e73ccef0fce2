"""quant=none: the model as trained, in its full-precision dtype (no artifact: evaluation loads the model dir)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ragqa_exp.quantize.base import LoadedModel, QuantConfig, QuantInputs


@dataclass
class NoQuant(QuantConfig):
    method: str = "none"

    produces_artifact: ClassVar[bool] = False


Config = NoQuant  # the schema ragqa_exp.quantize.methods() registers


def quantize(cfg: NoQuant, inputs: QuantInputs, out_dir: Path) -> dict:
    raise AssertionError("quant=none produces no artifact; the pipeline loads the model directly")


def load(cfg: NoQuant, model_dir: str, model_cfg) -> LoadedModel:
    from ragqa_exp.loading import load_model, load_tokenizer
    from ragqa_exp.runtime import device, resolve_dtype

    dtype = resolve_dtype(model_cfg.dtype)
    model = load_model(model_dir, dtype, model_cfg).to(device()).eval()
    return LoadedModel(model=model, tokenizer=load_tokenizer(model_dir, model_cfg),
                       kernel=f"dense-{str(dtype).removeprefix('torch.')}")
