"""Helpers of the quantization tests: the quantized variants under test and how each is built (through the
quantize stage) and loaded, the fidelity items, and a snapshot of gptqmodel's attributes (to detect patches
that outlive quantizing). The session fixtures built from them: quantized_fixtures.py."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_config

# The quantized variants under test (conf/quant options + overrides). Every method that produces an artifact
# needs one (tests/test_quant_fidelity.py checks that, and holds each variant's NLL tolerance).
VARIANTS: dict[str, list[str]] = {
    "bnb-nf4": ["quant=bnb"],
    "bnb-int8": ["quant=bnb", "quant.bits=8"],
    "gptq": ["quant=gptq"],
    "awq": ["quant=awq"],
}
SMALL_CALIB = ["quant.device=cpu", "calib_data.n_samples=8", "calib_data.max_length=128"]
# The run every shared artifact belongs to (its model is the one experiment=tiny trains): tests/test_e2e.py's quant
# sweep runs exactly this, so it finds the session's training and artifacts in the stage cache.
# The session's model trains on every training row (experiment=tiny stops at 64): the fidelity tolerances and the
# batch-invariance controls were measured on this model. On the 64-row one (2026-12-06) the plain-transformers GPTQ
# reload came 0.0240 from the stage's NLL, over test_quantize.py's 0.02.
SHARED_RUN = ["experiment=tiny", "train.limit=null", *SMALL_CALIB]
N_FIDELITY_ITEMS = 8  # validation items whose answer NLL is compared (short prompts: the supporting passage only)


PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # what every method quantizes, per decoder layer


def projections(model) -> list:
    """The projection modules of every decoder layer, in order."""
    return [layer.get_submodule(p) for layer in model.model.layers for p in PROJECTIONS]


def variant_config(variant: str, *extra: str):
    return run_config([*VARIANTS[variant], *SHARED_RUN, *extra])


@dataclass
class Artifact:
    variant: str
    cfg: object  # the RunConfig it was built with
    dir: Path
    facts: dict  # what build_artifact returned (= quant_result.json)
    reused: bool = False  # quantized by another process (another xdist worker of the session)


def build(variant: str, source_dir: Path, entry: Path, *extra: str) -> Artifact:
    """Quantize `source_dir` into `entry` through the quantize stage; a missing quant library skips."""
    from ragqa_exp.errors import DependencyError
    from ragqa_exp.quantize import build_artifact

    cfg = variant_config(variant, *extra)
    try:
        facts = build_artifact(cfg, str(source_dir), entry)
    except DependencyError as e:
        pytest.skip(str(e))
    return Artifact(variant, cfg, entry, facts)


def build_cache_entry(variant: str, source_dir: Path, source_id: str, cache: Path) -> Artifact:
    """Quantize `source_dir` in this process into the stage-cache entry a job of the same config uses (key and
    manifest as `pipeline.run` makes them), so that jobs run on `cache` reuse it; a missing quant library skips."""
    from ragqa_exp.cache import cached_stage
    from ragqa_exp.data import load_splits, rows_identity
    from ragqa_exp.errors import DependencyError
    from ragqa_exp.runtime import build_settings
    from ragqa_exp.stages import QUANTIZE, StageInput

    cfg = variant_config(variant, f"cache_dir={cache}")
    rows_id = rows_identity(load_splits(cfg.data).train)
    settings = build_settings(cfg)  # what `auto` resolves to, as pipeline.plan keys it
    inp = StageInput(cfg, settings, rows_id, source_id=source_id)
    key, parts = QUANTIZE.key(inp)  # the key and entry a job's quantize stage uses
    entry = QUANTIZE.entry(inp, key)
    built: dict = {}
    try:
        reused = cached_stage(entry, QUANTIZE.marker, QUANTIZE.what,
                              lambda work: built.update(QUANTIZE.build(cfg, str(source_dir), work, key)),
                              config=parts, verify=cfg.cache_verify)
    except DependencyError as e:
        pytest.skip(str(e))
    if reused:  # built by another xdist worker of this session (the session's stage cache starts empty)
        built = json.loads((entry / QUANTIZE.marker).read_text(encoding="utf-8"))
    return Artifact(variant, cfg, entry, built, reused)


def reuse_dequantized_weights(model) -> int:
    """Test speed only: gptqmodel's CPU kernels (TorchLinear for GPTQ, AwqTorchLinear for AWQ) dequantize every
    layer's 4-bit weights again at every forward, ~80% of an AWQ evaluation's CPU time here. This keeps each
    layer's dequantized weights after its first forward and multiplies by them (GPTQ: gptqmodel's own switch,
    GPTQ_TORCH_CACHE_WEIGHTS, set per layer; AWQ: the product's forward, quantize._awq_torch, with a weight kept).
    The numbers do not change (the same function of the same packed weights, the same matmul): the first switched
    layer of each model is checked bit for bit against gptqmodel's own forward here. Returns how many layers were
    switched."""
    import torch

    from ragqa_exp.quantize import _awq_torch

    try:
        from gptqmodel.nn_modules.qlinear.torch import TorchLinear
        from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear
    except ImportError:
        return 0
    switched = 0
    for module in model.modules():
        if isinstance(module, TorchLinear):
            module._cache_enabled = True
        elif isinstance(module, AwqTorchLinear):
            module.forward = _awq_torch.forward_of(module, keep={})
        else:
            continue
        if switched == 0:  # the control, once per model: the same output bits as the layer's own forward
            x = torch.randn(3, 5, module.in_features, generator=torch.Generator().manual_seed(0))
            x = x.to(device=module.qweight.device, dtype=model.dtype)  # AWQ's forward moves its scales to x's device
            with torch.no_grad():
                own = type(module).forward(module, x)
                assert torch.equal(module(x), own) and torch.equal(module(x), own), type(module).__name__
        switched += 1
    return switched


def load(art: Artifact):
    from ragqa_exp.quantize import method_module

    return method_module(art.cfg.quant.method).load(art.cfg.quant, str(art.dir), art.cfg.model)


# Modules whose attributes ragqa_exp's gptqmodel workarounds replace while quantizing.
PATCHED_GPTQMODEL_MODULES = (
    "gptqmodel.models.auto", "gptqmodel.looper.awq_processor", "gptqmodel.quantization.awq.quantize.scale",
)


def is_code(value: object) -> bool:
    import inspect

    return inspect.isroutine(value) or inspect.isclass(value) or isinstance(value, (staticmethod, classmethod, property))


def gptqmodel_state() -> dict[str, object]:
    """Every function, class and method of the imported gptqmodel modules and of their classes, and every
    MODEL_MAP entry, by name: what a monkeypatch of gptqmodel replaces (compare with `is`). Data attributes are
    left out: gptqmodel fills its own caches lazily (thread pool, compiled extensions)."""
    import importlib
    import inspect

    for name in PATCHED_GPTQMODEL_MODULES:
        importlib.import_module(name)
    state: dict[str, object] = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "gptqmodel" or name.startswith("gptqmodel.")):
            continue
        for attr, value in list(vars(mod).items()):
            if not is_code(value):
                continue
            state[f"{name}.{attr}"] = value
            if inspect.isclass(value) and getattr(value, "__module__", None) == name:
                for k, v in list(vars(value).items()):
                    if is_code(v):
                        state[f"{name}.{attr}.{k}"] = v
    from gptqmodel.models import auto

    for k, v in auto.MODEL_MAP.items():
        state[f"gptqmodel.models.auto.MODEL_MAP[{k!r}]"] = v
    return state


def changed_since(before: dict[str, object]) -> list[str]:
    """Names in `before` that now hold another object or are gone."""
    now = gptqmodel_state()
    missing = object()
    return sorted(k for k, v in before.items() if now.get(k, missing) is not v)


def fidelity_rows(n: int = N_FIDELITY_ITEMS) -> tuple[list[str], list[str]]:
    """(prompts, answers) of the first `n` validation items; each prompt holds only the passage that contains
    the answer (short, and answerable)."""
    from ragqa_exp.data import format_prompt, load_splits

    rows = load_splits(run_config().data).validation[:n]
    prompts = [format_prompt(r["question"], [next(p for p in r["context"] if r["answer"] in p)]) for r in rows]
    return prompts, [r["answer"] for r in rows]


