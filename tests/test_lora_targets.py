"""lora.target_modules against the model's own modules (issue 20), from its config on the meta device: one line
naming the linear layers it has, before training starts and without reading weights. The CLI's side:
tests/test_bad_input_cli.py."""
from __future__ import annotations

import json

import pytest

from conftest import run_config
from ragqa_exp.errors import ConfigError
from ragqa_exp.lora_targets import check_target_modules, model_modules, targets

GEMMA_LINEAR = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"


def _check(location, *overrides: str) -> None:
    cfg = run_config(list(overrides))
    check_target_modules(cfg.lora, cfg.model, str(location))


def test_a_module_the_model_lacks_is_one_line_naming_its_linear_layers(base_model_dir):
    with pytest.raises(ConfigError) as e:
        _check(base_model_dir, "lora.target_modules=[nonexistent_proj]")
    assert str(e.value) == (f"lora.target_modules: 'nonexistent_proj' is not a module of gemma3_270m; its linear layers "
                            f"are {GEMMA_LINEAR}; set lora.target_modules=[q_proj,v_proj]")
    with pytest.raises(ConfigError) as e:
        _check(base_model_dir, "lora.target_modules=[up_proj,qproj,attn.v]")
    assert str(e.value) == (f"lora.target_modules: 'qproj', 'attn.v' are not modules of gemma3_270m; its linear layers "
                            f"are {GEMMA_LINEAR}; set lora.target_modules=[up_proj]")


@pytest.mark.parametrize("modules", ["[q_proj,v_proj]", "[down_proj]", "[self_attn.q_proj]",
                                     "[model.layers.0.mlp.gate_proj]", "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"])
def test_names_the_model_has_pass(base_model_dir, modules):
    _check(base_model_dir, f"lora.target_modules={modules}")


def test_a_name_matches_as_peft_matches_it(base_model_dir):
    """The same modules as PEFT's own rule for a list of names (full name, or its last dotted parts)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    names, _ = model_modules(str(base_model_dir), run_config().model)
    for target in ("q_proj", "self_attn.q_proj", "layers.1.mlp.up_proj", "proj", "lm_head", "mlp", "model.norm", "_proj"):
        peft_cfg = LoraConfig(target_modules=[target])
        ours = [n for n in names if targets(n, target)]
        assert ours == [n for n in names if check_target_module_exists(peft_cfg, n)], target
    assert [n for n in names if targets(n, "proj")] == []  # a name is matched whole, not as a substring


def test_no_weights_are_read(tmp_path):
    """A directory with a config.json and no weights at all is enough: the model is built on the meta device."""
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=100).save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    model = ["model=llama2_7b_shapes"]
    _check(tmp_path, *model, "lora.target_modules=[q_proj,down_proj]")
    with pytest.raises(ConfigError, match=r"^lora.target_modules: 'w1' is not a module of llama2_7b_shapes; its linear "
                                          rf"layers are {GEMMA_LINEAR}; set lora.target_modules=\[q_proj,v_proj\]$"):
        _check(tmp_path, *model, "lora.target_modules=[w1]")
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 2
