"""Shared test helpers: compose the real Hydra config, a cache dir shared by the whole session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

# One cache for the test session (the embedded model is converted once, ~1 min); CI may point it elsewhere.
os.environ.setdefault("RAGQA_CACHE_DIR", str(Path(os.environ.get("RAGQA_TEST_CACHE", "/tmp/ragqa_test_cache"))))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))


def compose(overrides: list[str] | None = None):
    """The composed (typed) config, exactly as `python -m ragqa_exp <overrides>` would build it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    import ragqa_exp.config  # noqa: F401  registers the schema

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides or [])


def run_config(overrides: list[str] | None = None):
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose(overrides))


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["RAGQA_CACHE_DIR"])


@pytest.fixture(scope="session")
def base_model_dir(cache_dir) -> Path:
    """The embedded model converted to safetensors (the real default model)."""
    from ragqa_exp.models import embedded_model_dir

    return embedded_model_dir(run_config().model, cache_dir)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine; see benchmarks/)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
