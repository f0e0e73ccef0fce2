"""pytest plugin (`pytest_plugins = ["quantized_fixtures"]`) shared by test_quantize.py, test_quant_fidelity.py,
test_gptqmodel_patches.py, test_batch_invariance.py and test_e2e.py: the session's model under test is trained
once and each quant variant is quantized at most ONCE per test session, whichever xdist worker needs it first.

The model is the one experiment=tiny trains (a real `python -m ragqa_exp` job) in a stage cache of this session's
own, shared by all its xdist workers (the tests of one variant run on one worker, tests/conftest.py
`xdist_group`, so the variants are quantized and evaluated side by side): the stage cache's own lock makes the
first worker build an entry and the others wait for it and reuse it, as the jobs of a sweep do. A variant goes
through the quantize stage (`quantize.build_artifact`, run in the test process, on CPU, with small calibration:
8 samples x 128 tokens) into that cache's entry for its config (helpers_quant.SHARED_RUN), so test_e2e.py's quant
sweep of the same config reuses the training and the artifacts instead of building them again. `loaded()` runs
the method's own `load` (what the eval stage runs), once per worker. The fidelity items and the unquantized
model's NLL on them are session fixtures too.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import cli, linked_cache, run_config
from helpers_quant import (SHARED_RUN, Artifact, build_cache_entry, fidelity_rows, gptqmodel_state, load,
                           reuse_dequantized_weights)


class QuantizedModels:
    """Artifacts and loaded models of the variants, built on first use and kept for the session."""

    def __init__(self, source_dir: Path, source_id: str, cache: Path) -> None:
        """`source_dir`: the model to quantize, `source_id` its identity in the cache keys (its train key);
        `cache`: the session's stage cache."""
        self.source_dir, self.source_id, self.cache = source_dir, source_id, cache
        self._artifacts: dict[str, Artifact] = {}
        self._loaded: dict[str, object] = {}
        self._nll: dict[tuple, float] = {}
        self.quantized_here: set[str] = set()  # variants this process quantized (not another worker)

    def artifact(self, variant: str) -> Artifact:
        if variant not in self._artifacts:
            art = build_cache_entry(variant, self.source_dir, self.source_id, self.cache)
            if not art.reused:
                self.quantized_here.add(variant)
            self._artifacts[variant] = art
        return self._artifacts[variant]

    def loaded(self, variant: str):
        """The variant's `LoadedModel` (shared: tests must not modify it), its dequantized weights kept
        (helpers_quant.reuse_dequantized_weights: the same numbers, several times faster on a CPU)."""
        if variant not in self._loaded:
            lm = load(self.artifact(variant))
            reuse_dequantized_weights(lm.model)
            self._loaded[variant] = lm
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
def shared_cache(base_model_dir, tmp_path_factory, worker_id) -> Path:
    """This session's stage cache (empty but for the converted base model), one for all its xdist workers: what
    the session trains and quantizes for SHARED_RUN, built once whatever an earlier session left in
    RAGQA_TEST_CACHE."""
    base = tmp_path_factory.getbasetemp()
    root = base if worker_id == "master" else base.parent  # xdist: <session tmp>/popen-gwN per worker
    return linked_cache(root / "shared_quantized_cache", base_model_dir, exist_ok=True)


@pytest.fixture(scope="session")
def tiny_trained(shared_cache, tmp_path_factory) -> tuple[str, Path]:
    """(train key, merged model dir) of SHARED_RUN's training, by a real job on the shared cache."""
    from ragqa_exp.cache import stage_dir

    job = tmp_path_factory.mktemp("tiny_trained") / "job"
    r = cli(*SHARED_RUN, "quant=none", "eval.limit=1", "wandb.mode=disabled", f"cache_dir={shared_cache}",
            f"hydra.run.dir={job}")
    assert r.returncode == 0, r.stderr[-3000:]
    key = json.loads((job / "metrics.json").read_text(encoding="utf-8"))["train_key"]
    return key, stage_dir(shared_cache, "train", key) / "merged"


@pytest.fixture(scope="session")
def quantized_models(tiny_trained, shared_cache, gptqmodel_baseline) -> QuantizedModels:
    """(Takes gptqmodel's baseline first, so that it is gptqmodel before any quantization.)"""
    train_key, merged = tiny_trained
    return QuantizedModels(merged, train_key, shared_cache)


@pytest.fixture(scope="session")
def fidelity_items() -> tuple[list[str], list[str]]:
    return fidelity_rows()


@pytest.fixture(scope="session")
def reference_nll(quantized_models, fidelity_items) -> float:
    """Answer NLL of the unquantized source model, loaded as quant=none loads it."""
    from ragqa_exp.runtime import release_memory
    from ragqa_exp.nll import answer_nll
    from ragqa_exp.quantize import method_module

    cfg = run_config()
    lm = method_module("none").load(cfg.quant, str(quantized_models.source_dir), cfg.model)
    nll = answer_nll(lm.model, lm.tokenizer, *fidelity_items)
    del lm
    release_memory()
    return nll
