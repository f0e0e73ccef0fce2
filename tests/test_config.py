"""Every config option composes into the typed schema; typos and bad values fail at compose time."""
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import CONF, compose, run_config
from ragqa_exp.config import CalibSource, DataSource, ModelSource, QuantMethod, RunConfig

GROUPS = ["model", "lora", "neftune", "quant", "calib_data", "data", "train", "eval"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    opts = options(group)
    assert opts, f"conf/{group}/ has no options"
    for opt in opts:
        cfg = run_config([f"{group}={opt}"])
        assert isinstance(cfg, RunConfig)


def test_defaults_are_the_embedded_model_and_the_study_settings():
    cfg = run_config()
    assert cfg.model.name == "gemma3_270m" and cfg.model.source == ModelSource.embedded_gguf
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (32, 16, 0.05, ["q_proj", "v_proj"])
    assert cfg.neftune.alpha == 5.0
    assert cfg.quant.method == QuantMethod.none
    assert cfg.calib_data.source == CalibSource.train
    assert cfg.data.source == DataSource.bundled


def test_contract_names():
    assert set(options("quant")) == {"none", "bnb", "gptq", "awq"}
    assert set(options("calib_data")) == {"train", "context"}
    assert {"bundled", "jaqket", "jsonl"} <= set(options("data"))
    assert {"gemma3_270m", "youri_7b_instruction"} <= set(options("model"))
    youri = run_config(["model=youri_7b_instruction"]).model
    assert youri.path == "rinna/youri-7b-instruction" and youri.source == ModelSource.hub
    cfg = run_config(["lora.r=8", "neftune.alpha=0", "train.max_steps=3", "eval.limit=5", "train.enabled=false"])
    assert (cfg.lora.r, cfg.neftune.alpha, cfg.train.max_steps, cfg.eval.limit, cfg.train.enabled) == (8, 0, 3, 5, False)
    assert run_config(["neftune.alpha=null"]).neftune.alpha is None
    assert run_config(["neftune=off"]).neftune.alpha is None


@pytest.mark.parametrize("override, exc", [
    (["quant=foo"], MissingConfigException),
    (["model.foo=1"], ConfigCompositionException),  # unknown key
    (["lora.r=abc"], ConfigCompositionException),  # wrong type
    (["quant.method=xyz"], ConfigCompositionException),  # not an enum value
    (["calib_data.source=nope"], ConfigCompositionException),
])
def test_bad_overrides_fail_at_compose_time(override, exc):
    with pytest.raises(exc):
        compose(override)
