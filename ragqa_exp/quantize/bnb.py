"""quant=bnb: bitsandbytes nf4/fp4 4-bit (optional double quant) or LLM.int8() 8-bit, no calibration.

`from_pretrained(quantization_config=BitsAndBytesConfig(...))` quantizes each weight as it loads (that load
is `quant_seconds`); the quantized model is saved as the artifact, which evaluation loads pre-quantized.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

from ragqa_exp.errors import DependencyError, check, choice
from ragqa_exp.quantize.base import LoadedModel, QuantConfig, QuantInputs

warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")  # once per matmul on CPU
COMPUTE_DTYPES = ("auto", "bfloat16", "float16", "float32")
FOUR_BIT_ONLY = ("quant_type", "double_quant", "compute_dtype")
EIGHT_BIT_ONLY = ("int8_threshold",)


@dataclass
class BnbQuantConfig(QuantConfig):
    method: str = "bnb"
    bits: int = choice(4, (4, 8))  # 4: nf4/fp4 (Linear4bit); 8: LLM.int8() (Linear8bitLt)
    quant_type: str = choice("nf4", ("nf4", "fp4"))  # 4-bit only
    double_quant: bool = True  # 4-bit only: quantize the quantization constants too
    compute_dtype: str = choice("auto", COMPUTE_DTYPES)  # 4-bit only: auto (the model's dtype) | bfloat16 | float16 | float32
    # 8-bit only, how the artifact is run (not in the cache key): LLM.int8()'s outlier threshold. Activation columns
    # above it in ANY row of a batch are computed in 16 bit for EVERY row, so a question's answer depends on its
    # batch-mates whatever the batch plan (19 of 48 moved on an H100 and 21 of 48 on a CPU); 0 turns the
    # decomposition off (plain vector-wise int8, one scale per row), which keeps them.
    int8_threshold: float = 6.0

    requires: ClassVar[tuple[str, ...]] = ("bitsandbytes",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.int8_threshold, (int, float)) and not isinstance(self.int8_threshold, bool)
              and self.int8_threshold >= 0, "quant.int8_threshold", self.int8_threshold,
              "a number >= 0 (LLM.int8()'s outlier threshold, 6.0; 0: no outlier decomposition)")
        defaults = {f.name: f.default for f in fields(self)}  # an option of the other width would be silently ignored
        other = 4 if self.bits == 8 else 8
        for key in FOUR_BIT_ONLY if other == 4 else EIGHT_BIT_ONLY:
            check(getattr(self, key) == defaults[key], f"quant.{key}", getattr(self, key),
                  f"only read with quant.bits={other} (this config has quant.bits={self.bits}); "
                  f"remove it or set quant.bits={other}")


Config = BnbQuantConfig  # the schema ragqa_exp.quantize.methods() registers


def _import_bnb():
    try:
        import bitsandbytes
    except ImportError as e:
        raise DependencyError(f"quant=bnb needs bitsandbytes: pip install -e '.[quant]' ({e})") from None
    return bitsandbytes


def _target(dev: str) -> str:
    import torch

    return f"cuda:{torch.cuda.current_device()}" if dev == "cuda" else dev


def quantize(cfg: BnbQuantConfig, inputs: QuantInputs, out_dir: Path) -> dict:
    from transformers import BitsAndBytesConfig

    from ragqa_exp.loading import load_model, load_tokenizer, save_tokenizer

    from ragqa_exp.runtime import resolve_dtype, resolve_quant_device

    dev = resolve_quant_device(cfg.device)
    _import_bnb()
    kind = "cuda" if dev.startswith("cuda") else "cpu"
    dtype = resolve_dtype(inputs.model.dtype, kind)
    if cfg.bits == 8:
        bnb_cfg = BitsAndBytesConfig(load_in_8bit=True)
    else:
        compute = dtype if cfg.compute_dtype == "auto" else resolve_dtype(cfg.compute_dtype, kind)
        bnb_cfg = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type, bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=compute,
        )
    t0 = time.perf_counter()
    model = load_model(inputs.model_dir, dtype, inputs.model, quantization_config=bnb_cfg, device_map={"": _target(dev)})
    quant_seconds = time.perf_counter() - t0
    model.save_pretrained(out_dir)
    save_tokenizer(load_tokenizer(inputs.model_dir, inputs.model), out_dir)
    return {"quant_seconds": round(quant_seconds, 2), "device": dev,
            "format": f"bnb-{cfg.quant_type}" if cfg.bits == 4 else "bnb-int8"}


def load(cfg: BnbQuantConfig, artifact_dir: str, model_cfg) -> LoadedModel:
    from ragqa_exp.loading import load_model, load_tokenizer
    from ragqa_exp.runtime import device, resolve_dtype

    bnb = _import_bnb()
    dev = device()
    model = load_model(str(artifact_dir), resolve_dtype(model_cfg.dtype, dev), model_cfg,
                       device_map={"": _target(dev)}).eval()
    four = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    eight = [m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    if four:
        qs = four[0].weight.quant_state
        kernel, bits, group = f"bitsandbytes-Linear4bit-{qs.quant_type}-{dev}", 4, qs.blocksize
        extra = {"linear4bit_layers": len(four), "compute_dtype": str(four[0].compute_dtype).removeprefix("torch."),
                 "double_quant": qs.nested}
    elif eight:
        for m in eight:  # the artifact's own (its quantization_config's llm_int8_threshold) is replaced
            m.state.threshold = float(cfg.int8_threshold)
        kernel, bits, group = f"bitsandbytes-Linear8bitLt-{dev}", 8, None  # LLM.int8(): one scale per row
        extra = {"linear8bit_layers": len(eight), "int8_threshold": float(cfg.int8_threshold)}
    else:
        from ragqa_exp.errors import ResourceError

        raise ResourceError(f"quant=bnb: the model loaded from {artifact_dir} has no bitsandbytes layers")
    return LoadedModel(model=model, tokenizer=load_tokenizer(str(artifact_dir), model_cfg), kernel=kernel,
                       bits=bits, group_size=group, extra=extra)
