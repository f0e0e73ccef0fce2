"""Every config option and preset composes into the typed schema; typos and bad values fail at compose
time or when the config is typed (before any work), naming the key."""
from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import CONF, cli, compose, run_config
from ragqa_exp.config import CalibSource, DataSource, ModelSource, RunConfig
from ragqa_exp.sweep_dirs import job_subdir, varying_keys
from ragqa_exp.errors import ConfigError
from ragqa_exp.quantize import methods

GROUPS = ["model", "lora", "neftune", "quant", "calib_data", "data", "train", "eval"]
API_ENV = {"OPENAI_API_KEY": "test-key"}  # API model presets need their key variable set to compose


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group, monkeypatch):
    for k, v in API_ENV.items():
        monkeypatch.setenv(k, v)
    opts = options(group)
    assert opts, f"conf/{group}/ has no options"
    for opt in opts:
        overrides = [f"{group}={opt}"]
        if group == "data" and opt == "jsonl":
            overrides += ["data.train_path=/x.jsonl", "data.validation_path=/y.jsonl"]
        assert isinstance(run_config(overrides), RunConfig), opt


def test_each_quant_option_is_its_methods_schema():
    for name, module in methods().items():
        cfg = run_config([f"quant={name}"])
        assert type(cfg.quant) is module.Config and cfg.quant.method == name
    assert {"none", "bnb", "gptq", "awq"} <= set(methods()) and set(methods()) == set(options("quant"))


def test_experiment_presets_compose():
    for preset in options("experiment"):
        assert isinstance(run_config([f"experiment={preset}"]), RunConfig), preset
    study = run_config(["experiment=study_7b"])
    assert study.model.path == "rinna/youri-7b-instruction" and study.model.source == ModelSource.hub
    assert study.data.source == DataSource.jaqket
    assert (study.train.max_steps, study.train.num_train_epochs) == (-1, 1.0)
    assert (study.lora.r, study.lora.alpha, study.lora.dropout, study.lora.target_modules) == (32, 16, 0.05, ["q_proj", "v_proj"])
    assert study.neftune.alpha == 5.0
    from omegaconf import OmegaConf

    sweep = OmegaConf.load(CONF / "experiment" / "quant_comparison.yaml")
    assert set(sweep.hydra.sweeper.params.quant.split(",")) == set(methods())


def test_defaults_are_the_embedded_model_and_the_study_settings():
    cfg = run_config()
    assert cfg.model.name == "gemma3_270m" and cfg.model.source == ModelSource.embedded_gguf
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (32, 16, 0.05, ["q_proj", "v_proj"])
    assert cfg.neftune.alpha == 5.0
    assert cfg.quant.method == "none" and cfg.calib_data.source == CalibSource.train
    assert cfg.data.source == DataSource.bundled
    assert cfg.eval.backend == "hf"  # auto resolves to the local backend


def test_overrides_reach_the_typed_config():
    cfg = run_config(["lora.r=8", "neftune.alpha=0", "train.max_steps=3", "eval.limit=5", "train.enabled=false"])
    assert (cfg.lora.r, cfg.neftune.alpha, cfg.train.max_steps, cfg.eval.limit, cfg.train.enabled) == (8, 0, 3, 5, False)
    assert run_config(["neftune.alpha=null"]).neftune.alpha is None
    assert run_config(["neftune=off"]).neftune.alpha is None
    bnb8 = run_config(["quant=bnb", "quant.bits=8"]).quant
    assert bnb8.bits == 8


@pytest.mark.parametrize("override, exc", [
    (["quant=foo"], MissingConfigException),
    (["model.foo=1"], ConfigCompositionException),  # unknown key
    (["lora.r=abc"], ConfigCompositionException),  # wrong type
    (["calib_data.source=nope"], ConfigCompositionException),  # not an enum value
    (["quant=bnb", "quant.group_size=64"], ConfigCompositionException),  # an option bnb does not have
    (["quant=none", "quant.bits=4"], ConfigCompositionException),
])
def test_bad_overrides_fail_at_compose_time(override, exc):
    with pytest.raises(exc):
        compose(override)


@pytest.mark.parametrize("override, key", [
    (["quant=bnb", "quant.bits=3"], "quant.bits=3"),
    (["quant=awq", "quant.bits=8"], "quant.bits=8"),
    (["quant=gptq", "quant.group_size=100"], "quant.group_size=100"),
    (["quant=gptq", "quant.backend=no_such_kernel"], "quant.backend='no_such_kernel'"),
    (["eval.batch_size=0"], "eval.batch_size=0"),
    (["lora.r=0"], "lora.r=0"),
    (["data=jsonl"], "data.train_path"),
    (["data.train_path=/x.jsonl"], "data.train_path='/x.jsonl'"),  # only read with data=jsonl
])
def test_bad_values_fail_when_typed_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        run_config(override)
    assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("overrides", [
    "", "quant=gptq", "data=jsonl,data.train_path=/abs/dir/train.jsonl,data.validation_path=/abs/ho.jsonl,quant=none",
    "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj],model.name=日本語モデル" * 3,
])
def test_job_subdir_is_one_flat_safe_level(overrides):
    items = overrides.split(",") if overrides else []  # (a list value's commas split it too: fine here)
    for varies in ("", "quant", "model.name,quant"):
        name = job_subdir(7, overrides, items, varies)
        assert name.startswith("7") and "/" not in name and name.isascii() and len(name) <= 80
        assert job_subdir(7, overrides, items, varies) == name  # stable
        if overrides:
            assert name != job_subdir(7, overrides + ",x=1", [*items, "x=1"], varies)  # distinct overrides, distinct dirs


# A sweep's jobs as the issue showed them: a long path common to both jobs, then what the sweep varies.
TRAIN_PATH = "data.train_path=/work/main/ragqa_exp/resources/jaqket_style_train.jsonl"


def test_job_dir_names_lead_with_what_the_sweep_varies():
    jobs = [[TRAIN_PATH, f"quant={q}"] for q in ("none", "bnb")]
    names = [job_subdir(n, ",".join(sorted(job)), job, "quant") for n, job in enumerate(jobs)]
    assert names[0].startswith("0_quant=none,data.train_path=") and names[1].startswith("1_quant=bnb,")
    # negative control: without the sweep's varying keys the common path leads and the names look alike
    alike = [job_subdir(n, ",".join(sorted(job)), job, "") for n, job in enumerate(jobs)]
    assert all(name.split("_", 1)[1].startswith("data.train_path=_work_main") for name in alike)


@pytest.mark.parametrize("sweep,varies", [
    (["quant=none,bnb", TRAIN_PATH], ["quant"]),
    (["seed=range(3)", "+lora.r=8,16", "eval.limit=2"], ["lora.r", "seed"]),
    (["quant=glob(*)", "lora.target_modules=[q_proj,v_proj]"], ["quant"]),  # a list value is one value
    (["eval.limit=2"], []),
])
def test_varying_keys_are_the_sweep_overrides(sweep, varies):
    assert varying_keys(sweep) == varies


def test_a_sweeps_job_dirs_lead_with_what_varies(tmp_path):
    """Through Hydra (the callback hands the varying keys to every job's config): two jobs that stop at the
    config check, a path common to both."""
    sweep = tmp_path / "s"
    r = cli("-m", "eval.batch_size=0,-1", f"data.train_path={tmp_path / 'train.jsonl'}", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 1 and "2 sweep job(s) failed" in r.stderr, r.stderr[-2000:]
    names = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [n.split(",")[0] for n in names] == ["0_eval.batch_size=0", "1_eval.batch_size=-1"], names
    assert all("data.train_path=" in n and "/" not in n for n in names)


def test_validate_expands_a_presets_sweep_params_like_hydras_basic_sweeper():
    """`--validate -m` checks the jobs Hydra would launch, presets' `hydra.sweeper.params` included (a preset's
    quant list was once validated as one job); the command line's value of a key wins over the preset's."""
    from ragqa_exp.cli import sweep_jobs

    jobs = sweep_jobs(["experiment=study_7b_shapes"])
    assert [j for j in jobs] == [[f"quant={q}", "experiment=study_7b_shapes"] for q in ("none", "bnb", "gptq", "awq")]
    assert sweep_jobs(["experiment=quant_comparison", "quant=none,gptq"]) == [
        ["quant=none", "experiment=quant_comparison"], ["quant=gptq", "experiment=quant_comparison"]]
    assert sweep_jobs(["eval.limit=1,2"]) == [["eval.limit=1"], ["eval.limit=2"]]  # no preset: as before


def test_study_7b_shapes_preset_is_the_study_at_7b_shapes():
    """issue 16's preset: the study's LoRA/NEFTune/epoch on the 7B-shapes model, every validation item."""
    cfg = run_config(["experiment=study_7b_shapes", "quant=gptq"])
    assert (cfg.model.name, cfg.model.source.value) == ("llama2_7b_shapes", "random_init")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, list(cfg.lora.target_modules)) == (32, 16, 0.05, ["q_proj", "v_proj"])
    assert cfg.neftune.alpha == 5 and cfg.train.max_steps == -1 and cfg.train.num_train_epochs == 1
    assert cfg.eval.limit is None and cfg.calib_data.source.value == "train" and cfg.quant.method == "gptq"
    assert run_config(["experiment=study_7b_shapes", "model=youri_7b_instruction"]).model.path == "rinna/youri-7b-instruction"
