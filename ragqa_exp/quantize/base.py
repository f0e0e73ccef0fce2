"""The schema every `quant` option extends, and what a quant method module provides.

A method is one module `ragqa_exp/quantize/<name>.py` holding:
- `Config`: a dataclass subclassing `QuantConfig` (e.g. `GptqQuantConfig`; its fields are the method's
  options, checked in `__post_init__` (a fixed set of values: `choice(default, values)`); `needs_calibration`
  says whether the stage gets calibration text; `requires` names the modules it imports, which the job checks
  for before any work starts);
- `quantize(cfg, inputs: QuantInputs, out_dir) -> dict` (writes the artifact into out_dir, returns facts about
  it: `quant_seconds`, `format`, ...);
- `load(cfg, artifact_dir, model_cfg) -> LoadedModel` (the artifact on its kernel, on the eval device);
plus `conf/quant/<name>.yaml` (`defaults: [/quant_schema/<name>@_here_, _self_]`). Nothing else is edited:
`ragqa_exp.quantize.methods()` finds the module and the config store registers its schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional

from ragqa_exp.errors import check, check_choices

# options that choose how an artifact is run, not what it is (not in the cache key)
LOAD_ONLY_FIELDS = ("backend", "int8_threshold")


def check_device(value: str) -> None:
    v = str(value).strip().lower()
    ok = v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())
    check(ok, "quant.device", value, "choose auto, cpu, cuda or cuda:N")


@dataclass
class QuantConfig:
    method: str = "none"
    device: str = "auto"  # where quantization runs: auto | cpu | cuda | cuda:N

    needs_calibration: ClassVar[bool] = False
    produces_artifact: ClassVar[bool] = True  # false: evaluation loads the (merged) model as it is
    requires: ClassVar[tuple[str, ...]] = ()  # modules the method imports (pip install -e '.[quant]')

    def __post_init__(self) -> None:
        own = next(f.default for f in fields(self) if f.name == "method")
        check(self.method == own, "quant.method", self.method,
              f"the method is chosen with the quant group, e.g. quant=gptq, not quant.method (this config is quant={own})")
        check_device(self.device)
        check_choices(self, "quant")


@dataclass
class QuantInputs:
    """What the quantize stage hands a method: the full-precision model and its calibration text."""

    model_dir: str  # the merged (or base) model
    model: Any  # its ModelConfig (dtype, trust_remote_code, revision)
    calib_texts: list = field(default_factory=list)  # empty unless the method's Config.needs_calibration
    calib_max_length: int = 512  # tokens per calibration text


@dataclass
class LoadedModel:
    """A model ready for generation, with what the report needs to know about how it runs."""

    model: Any
    tokenizer: Any
    kernel: str  # the layer implementation that runs the matmuls
    bits: Optional[int] = None
    group_size: Optional[int] = None
    kernel_fallback_reason: Optional[str] = None
    extra: dict = field(default_factory=dict)  # method facts, reported as quant_<key>
