"""Real runs of `python -m ragqa_exp` (CPU, tiny limits): single runs, resume, sweeps whose jobs each run in their
own processes, the stage cache and its lock, failures and crashes. The quant sweep runs the embedded model (the
session's quantized artifacts); the plumbing tests run conftest.TINY_RANDOM_MODEL."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import REPO, TINY_RANDOM_MODEL, check_job_dir, cli
from ragqa_exp.tracking import sweep_group
from helpers_quant import SHARED_RUN
from ragqa_exp.wandb_offline import find_run_dirs, read_run

pytest_plugins = ["quantized_fixtures"]

TINY = ["experiment=tiny"]
TINY_RANDOM = [*TINY, *TINY_RANDOM_MODEL]


def jobs_of(sweep: Path) -> list[Path]:
    """The sweep's job dirs, by job number (each must be a direct child: flat layout)."""
    jobs = [p for p in sweep.iterdir() if p.is_dir() and (p / "status.json").exists()]
    return sorted(jobs, key=lambda p: int(p.name.split("_")[0]))


def check_wandb(job: Path, metrics: dict, trained: bool = True) -> dict:
    runs = find_run_dirs(job / "wandb")
    assert len(runs) == 1, runs  # one wandb run per job
    run = read_run(runs[0])
    assert run.exit_code == 0
    if trained:
        losses = [h["train/loss"] for h in run.history if "train/loss" in h]
        assert losses and all(v > 0 for v in losses)
        assert any("eval/loss" in h for h in run.history)
    assert run.summary["exact_match"] == pytest.approx(metrics["exact_match"])
    table = run.tables["eval/mismatches"]
    assert len(table["data"]) == round(metrics["n"] * (1 - metrics["exact_match"])) > 0
    assert table["columns"] == ["qid", "question", "answer", "pred", "exact", "partial", "context"]
    return run


@pytest.mark.slow
def test_parallel_jobs_train_once_then_resume(tmp_path, empty_cache):
    """Two jobs with one training config started together: the lock makes one train and the other reuse."""
    common = [sys.executable, "-m", "ragqa_exp", *TINY_RANDOM, f"cache_dir={empty_cache}"]
    procs = [subprocess.Popen([*common, f"eval.limit={n}", f"hydra.run.dir={tmp_path / f'job{n}'}"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (3, 4)]
    outs = [p.communicate(timeout=1800) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]
    m3, m4 = check_job_dir(tmp_path / "job3", 3), check_job_dir(tmp_path / "job4", 4)
    assert sorted([m3["reused"], m4["reused"]]) == [[], ["train"]]  # trained exactly once
    assert m3["train_key"] == m4["train_key"] and m3["train_loss"] == m4["train_loss"]
    assert len(list((empty_cache / "train").iterdir())) == 1 + 1  # the entry and its lock file
    assert m3["pid"] != m4["pid"]
    for job, m in ((tmp_path / "job3", m3), (tmp_path / "job4", m4)):
        run = check_wandb(job, m)  # both runs have loss curves: the reusing job replays the cached log
        assert run.config["lora"]["r"] == 32
    # resume: the job's metrics.json exists, so the same job is skipped, not recomputed
    stamp = (tmp_path / "job3" / "metrics.json").stat().st_mtime_ns
    r = cli(*TINY_RANDOM, f"cache_dir={empty_cache}", "eval.limit=3", f"hydra.run.dir={tmp_path / 'job3'}")
    assert r.returncode == 0 and (tmp_path / "job3" / "metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_quant_sweep_isolated_jobs_cache_and_report(tmp_path, quantized_models):
    """`quant=none,bnb,gptq,awq -m`: one process per stage and job, training once, real low-bit layers,
    a report with intervals and paired tests. The sweep runs on the session's stage cache, where its training
    and artifacts were built once for the quantization tests (quantized_fixtures.py, same config, no eval): every
    job reuses them with its own eval settings, as a later job or a second sweep of a config would."""
    shared = {v: quantized_models.artifact(v) for v in ("bnb-nf4", "gptq", "awq")}
    cache = f"cache_dir={quantized_models.cache}"
    sweep = tmp_path / "q"
    r = cli("-m", "quant=none,bnb,gptq,awq", *SHARED_RUN, "eval.limit=4", "eval.max_new_tokens=8",
            "eval.noise_check_items=3", cache, f"hydra.sweep.dir={sweep}", timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = jobs_of(sweep)
    rows = {}
    for job in jobs:
        m = check_job_dir(job, 4)
        rows[m["quant"]] = m
        run = check_wandb(job, m)
        assert run.config["quant"]["method"] == m["quant"]
        assert (run.group, run.job_type) == (sweep_group(sweep), "train-quantize-eval") and run.group == m["wandb_group"]
        assert f"quant:{m['quant']}" in run.tags and "experiment:tiny" in run.tags
    assert list(rows) == ["none", "bnb", "gptq", "awq"]
    # the noise floor: 3 questions again, alone and reversed; the canonical plan keeps every answer on a CPU
    assert {q: (m["eval_noise_checked"], m["eval_noise_changed"]) for q, m in rows.items()} == {
        q: (3, 0) for q in rows}
    assert len({m["pid"] for m in rows.values()}) == 4  # each job evaluated in its own process
    assert len({m["train_key"] for m in rows.values()}) == 1  # one training stage for the whole sweep
    assert sum(m["reused"] == [] for m in rows.values()) <= 1  # trained at most once (or taken from the cache)
    assert all("train" in m["reused"] for m in list(rows.values())[1:])
    full = rows["none"]["model_size_mib"]
    for method in ("bnb", "gptq", "awq"):
        m = rows[method]
        assert m["quant_bits"] == 4 and m["quant_seconds"] > 0 and m["model_size_mib"] < 0.8 * full
        assert Path(m["quant_artifact_dir"], "config.json").is_file() and m["quant_key"]
        # the session's artifact of this config, not a second quantization
        art = shared[method.replace("bnb", "bnb-nf4")]
        assert m["reused"] == ["train", "quantize"] and m["quant_artifact_dir"] == str(art.dir)
        assert m["quant_seconds"] == art.facts["quant_seconds"]
    assert rows["bnb"]["quant_kernel"].startswith("bitsandbytes-Linear4bit") and rows["bnb"]["quant_linear4bit_layers"] > 0
    assert "TorchLinear" in rows["gptq"]["quant_kernel"] and rows["gptq"]["quant_format"] == "gptq"
    assert "Awq" in rows["awq"]["quant_kernel"] and rows["awq"]["quant_format"] == "gemm"

    rep = cli(str(sweep), module="ragqa_exp.report")
    assert rep.returncode == 0, rep.stderr[-2000:]
    for name in ("report.md", "report.csv", "accuracy_vs_eval_seconds.png", "accuracy_vs_memory.png"):
        assert (sweep / name).is_file(), name
    assert "McNemar" in rep.stdout and "right→wrong" in rep.stdout and rep.stdout.count("quant=") >= 4
    assert "0 of 3 answers changed under another batch composition" in (sweep / "report.md").read_text(encoding="utf-8")


def _jsonl_split(path: Path, split: str, n: int) -> Path:
    from ragqa_exp.data import _bundled_path

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_bundled_path(split).read_text(encoding="utf-8").splitlines(keepends=True)[:n]),
                    encoding="utf-8")
    return path


@pytest.mark.slow
def test_path_overrides_keep_job_dirs_flat(tmp_path):
    data = tmp_path / "my data" / "nested" / "dir"
    train = _jsonl_split(data / "train.jsonl", "train", 40)
    val = _jsonl_split(data / "ho.jsonl", "validation", 3)
    sweep = tmp_path / "s"
    r = cli("-m", "quant=none,bnb", *TINY_RANDOM, "data=jsonl", f"data.train_path={train}",
            f"data.validation_path={val}", "train.enabled=false", "wandb.mode=disabled", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = jobs_of(sweep)
    assert len(jobs) == 2 and all(j.parent == sweep for j in jobs)
    # named by what varies: the paths common to both jobs follow (they led before: the jobs looked alike)
    assert [j.name.split(",")[0] for j in jobs] == ["0_quant=none", "1_quant=bnb"], [j.name for j in jobs]
    for job in jobs:
        check_job_dir(job, 3)
        overrides = json.loads((job / "status.json").read_text())["overrides"]
        # the full overrides are kept, as Hydra writes a sweep job's overrides (the space escaped: "my\\ data")
        parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(overrides)}
        assert parsed["data.train_path"] == str(train) and parsed["data.validation_path"] == str(val)
    rep = cli(str(sweep), "--json", module="ragqa_exp.report")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert sorted(row["job"] for row in json.loads(rep.stdout)) == sorted(j.name for j in jobs)


@pytest.mark.slow
def test_failed_and_crashed_jobs_are_recorded_and_the_sweep_goes_on(tmp_path):
    """A bad job fails alone with its one line; an eval process killed by SIGKILL is a failed job too."""
    sweep = tmp_path / "sweep"
    r = cli("-m", "data=jsonl,bundled", "seed=7,8", "train.enabled=false", "eval.limit=2", "wandb.mode=disabled",
            *TINY_RANDOM_MODEL, f"hydra.sweep.dir={sweep}", env={"RAGQA_KILL_STAGE": "eval:_data=bundled,seed=7,"})
    assert r.returncode == 1, r.stderr[-3000:]
    status = {p.name: json.loads((p / "status.json").read_text()) for p in jobs_of(sweep)}
    failed = {name: s["error"] for name, s in status.items() if s["status"] == "failed"}
    ok = [name for name, s in status.items() if s["status"] == "ok"]
    assert "3 sweep job(s) failed" in r.stderr and "Traceback" not in r.stderr
    assert sum(e.startswith("data.train_path is not set") for e in failed.values()) == 2
    (crashed,) = [e for e in failed.values() if "killed by SIGKILL" in e]
    assert crashed.startswith("the eval stage process")
    assert len(ok) == 1 and "seed=8" in ok[0]
    check_job_dir(sweep / ok[0], 2)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return errors[0]


def test_bad_input_gives_one_line_errors(tmp_path):
    assert "available options in 'quant': awq, bnb, gptq, none" in _one_line_error(cli("quant=foo"))
    assert "Key 'foo' not in 'ModelConfig'" in _one_line_error(cli("model.foo=1"))
    assert "eval.batch_size=0" in _one_line_error(cli("eval.batch_size=0", f"hydra.run.dir={tmp_path / 'z'}"))
    missing = tmp_path / "missing.jsonl"
    line = _one_line_error(cli("data=jsonl", f"data.train_path={missing}", f"data.validation_path={missing}",
                               f"hydra.run.dir={tmp_path / 'a'}"))
    assert "file not found" in line and str(missing) in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": "1", "question": "q?", "answer": "a", "answers": ["a"], "context": ["a b"]}\n{oops\n')
    line = _one_line_error(cli("data=jsonl", f"data.train_path={bad}", f"data.validation_path={bad}",
                               f"hydra.run.dir={tmp_path / 'b'}"))
    assert f"{bad}:2: malformed JSON" in line
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    line = _one_line_error(cli("data=jsonl", f"data.train_path={empty}", f"data.validation_path={empty}",
                               f"hydra.run.dir={tmp_path / 'c'}"))
    assert "no rows (empty dataset)" in line
    status = json.loads((tmp_path / "c" / "status.json").read_text())
    assert status["status"] == "failed" and "no rows" in status["error"]
    assert not (tmp_path / "c" / ".stages").exists()  # failed before any stage process started
