"""pytest plugin (`pytest_plugins = ["quantized_fixtures"]`) shared by test_quantize.py, test_quant_fidelity.py and
test_gptqmodel_patches.py: each quant variant is quantized at most ONCE per test session and loaded at most once.

A variant goes through the quantize stage (`quantize.build_artifact`, run in the test process) on the embedded
model on CPU, with small calibration (8 samples x 128 tokens), into a session temp dir; `loaded()` runs the
method's own `load` (what the eval stage runs). The fidelity items and the unquantized model's NLL on them
are session fixtures too.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import run_config
from helpers_quant import Artifact, build, fidelity_rows, gptqmodel_state, load


class QuantizedModels:
    """Artifacts and loaded models of the variants, built on first use and kept for the session."""

    def __init__(self, source_dir: Path, root: Path) -> None:
        self.source_dir, self.root = source_dir, root
        self._artifacts: dict[str, Artifact] = {}
        self._loaded: dict[str, object] = {}
        self._nll: dict[tuple, float] = {}

    def artifact(self, variant: str) -> Artifact:
        if variant not in self._artifacts:
            self._artifacts[variant] = build(variant, self.source_dir, self.root / variant / "artifact")
        return self._artifacts[variant]

    def loaded(self, variant: str):
        """The variant's `LoadedModel` (shared: tests must not modify it)."""
        if variant not in self._loaded:
            self._loaded[variant] = load(self.artifact(variant))
        return self._loaded[variant]

    def nll(self, variant: str, items: tuple[list[str], list[str]]) -> float:
        """Answer NLL of the loaded variant on `items` (prompts, answers)."""
        from ragqa_exp.nll import answer_nll

        key = (variant, tuple(items[0]), tuple(items[1]))
        if key not in self._nll:
            lm = self.loaded(variant)
            self._nll[key] = answer_nll(lm.model, lm.tokenizer, *items)
        return self._nll[key]


@pytest.fixture(scope="session")
def gptqmodel_baseline() -> dict[str, object] | None:
    """gptqmodel as imported, before this session quantizes anything (None without gptqmodel)."""
    if importlib.util.find_spec("gptqmodel") is None:
        return None
    return gptqmodel_state()


@pytest.fixture(scope="session")
def quantized_models(base_model_dir, tmp_path_factory, gptqmodel_baseline) -> QuantizedModels:
    """(Takes gptqmodel's baseline first, so that it is gptqmodel before any quantization.)"""
    return QuantizedModels(base_model_dir, tmp_path_factory.mktemp("quantized"))


@pytest.fixture(scope="session")
def fidelity_items() -> tuple[list[str], list[str]]:
    return fidelity_rows()


@pytest.fixture(scope="session")
def reference_nll(base_model_dir, fidelity_items) -> float:
    """Answer NLL of the unquantized source model, loaded as quant=none loads it."""
    from ragqa_exp.models import release_memory
    from ragqa_exp.nll import answer_nll
    from ragqa_exp.quantize import method_module

    cfg = run_config()
    lm = method_module("none").load(cfg.quant, str(base_model_dir), cfg.model)
    nll = answer_nll(lm.model, lm.tokenizer, *fidelity_items)
    del lm
    release_memory()
    return nll
