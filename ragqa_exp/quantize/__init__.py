"""Stage 2: quantize the (merged) model into an artifact, and load an artifact for evaluation.

Each public module here is one method (see `base.py` for what it provides); `methods()` finds them, so
adding a method is one module + one yaml. Modules import their libraries inside functions (this package is
imported when `config_store.register_configs` stores the schemas, before any job runs).
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from ragqa_exp.quantize.base import LoadedModel, QuantConfig

__all__ = ["LoadedModel", "QuantConfig", "build_artifact", "method_module", "methods", "quant_key_parts"]


@lru_cache(maxsize=None)
def methods() -> dict[str, ModuleType]:
    """name -> module of every quant method (modules defining `Config`, `quantize` and `load`)."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if all(hasattr(module, a) for a in ("Config", "quantize", "load")):
            found[info.name] = module
    return found


def method_module(name: str) -> ModuleType:
    return methods()[name]


RESULT_FILE = "quant_result.json"  # written last into a quant cache entry


QUANT_SETTINGS = ("quant.device", "quant.model_dtype")  # the resolved settings the quant key holds


def quant_key_parts(cfg: Any, source_id: str, train_rows_id: str, settings: dict | None = None) -> dict:
    """What determines the artifact: the source model (train key or base identity), the model config, the
    method's options except how the artifact is run (`backend`), and — for calibrating methods — the
    calibration config and the data it is drawn from (config and training rows' content,
    `data.rows_identity`), and what `quant.device` / `model.dtype` resolved to (`settings`:
    runtime.build_settings). Not eval or wandb settings."""
    from ragqa_exp.config import to_plain
    from ragqa_exp.quantize.base import LOAD_ONLY_FIELDS
    from ragqa_exp.train import training_data_parts

    plain = to_plain(cfg)
    parts = {"source": source_id, "model": plain["model"],
             "quant": {k: v for k, v in plain["quant"].items() if k not in LOAD_ONLY_FIELDS}}
    if method_module(cfg.quant.method).Config.needs_calibration:
        parts["calib_data"] = plain["calib_data"]
        parts["data"] = training_data_parts(plain["data"])  # less the validation file and check-only flags
        parts["train_rows"] = train_rows_id
    if settings is not None:
        parts["resolved"] = {k: settings[k] for k in QUANT_SETTINGS if k in settings}
    return parts


def build_artifact(cfg: Any, model_dir: str, work: Path) -> dict:
    """Quantize `model_dir` into `work`, the quant cache entry's build dir (quant_result.json written last;
    pipeline publishes it). Runs in its own process (ragqa_exp.isolation); returns the facts stored in
    quant_result.json."""
    from ragqa_exp.calib_data import calibration_texts
    from ragqa_exp.data import load_splits
    from ragqa_exp.fsutil import dir_size_mib, disk_space_guard, weights_mib, write_json_atomic
    from ragqa_exp.quantize.base import QuantInputs
    from ragqa_exp.runtime import seed_all

    seed_all(cfg.seed)
    module = method_module(cfg.quant.method)
    calib = []
    if module.Config.needs_calibration:
        calib = calibration_texts(cfg.calib_data, load_splits(cfg.data).train, cfg.data.max_passages)
    inputs = QuantInputs(model_dir=model_dir, model=cfg.model, calib_texts=calib,
                         calib_max_length=cfg.calib_data.max_length)
    # a 4-bit artifact is smaller than its source: the source's size bounds what is written
    with disk_space_guard(work, f"the {cfg.quant.method} artifact", "cache_dir",
                          need=int(dir_size_mib(model_dir) * 2**20)):
        facts = module.quantize(cfg.quant, inputs, work)
        facts.update(size_mib=dir_size_mib(work), weights_mib=weights_mib(work))
        write_json_atomic(work / RESULT_FILE, facts)
    return facts
