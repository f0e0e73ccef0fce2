"""Real runs of `python -m ragqa_exp` on the embedded model (CPU, few steps, small eval slice)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from ragqa_exp.wandb_offline import find_run_dirs, read_run

TINY = ["train.max_steps=3", "train.logging_steps=1", "train.eval_steps=2", "train.eval_holdout=8",
        "train.per_device_train_batch_size=2", "eval.limit=6", "eval.batch_size=6"]
METRIC_KEYS = {
    "exact_match", "partial_match", "exact_match_normalized", "partial_match_normalized", "n", "eval_seconds",
    "latency_ms_p50", "latency_ms_p95", "latency_ms_mean", "gpu_mem_load_mib", "gpu_mem_peak_mib",
    "torch_peak_allocated_mib", "torch_peak_reserved_mib", "rss_peak_mib", "gpu_mem_unavailable_reason",
    "quant", "quant_kernel", "quant_seconds", "model_size_mib", "train_seconds", "train_loss", "eval_loss",
    "reused", "versions", "seed",
}


def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "ragqa_exp", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_job_dir(job: Path, n: int) -> dict:
    metrics = json.loads((job / "metrics.json").read_text(encoding="utf-8"))
    assert METRIC_KEYS <= set(metrics), METRIC_KEYS - set(metrics)
    assert metrics["n"] == n
    for k in ("exact_match", "partial_match", "exact_match_normalized", "partial_match_normalized"):
        assert 0.0 <= metrics[k] <= 1.0
    assert metrics["partial_match"] >= metrics["exact_match"]
    assert metrics["eval_seconds"] > 0 and metrics["latency_ms_p95"] >= metrics["latency_ms_p50"] > 0
    assert metrics["gpu_mem_load_mib"] is None and metrics["gpu_mem_unavailable_reason"]  # CPU run
    assert metrics["rss_peak_mib"] > 100
    preds = [json.loads(line) for line in (job / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == n
    assert {"qid", "question", "answer", "pred", "exact", "partial"} <= set(preds[0])
    assert sum(p["exact"] for p in preds) / n == pytest.approx(metrics["exact_match"], abs=1e-4)
    assert sum(p["partial"] for p in preds) / n == pytest.approx(metrics["partial_match"], abs=1e-4)
    assert json.loads((job / "status.json").read_text())["status"] == "ok"
    return metrics


def check_wandb(job: Path, metrics: dict, trained: bool = True) -> str:
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
    n_mismatch = round(metrics["n"] * (1 - metrics["exact_match"]))
    assert len(table["data"]) == n_mismatch > 0
    assert table["columns"] == ["qid", "question", "answer", "pred", "exact", "partial", "context"]
    assert run.config["lora"]["r"] in (8, 16, 32)
    return run.run_id


@pytest.mark.slow
def test_single_run_end_to_end_and_resume(tmp_path):
    job = tmp_path / "job"
    r = cli(*TINY, f"hydra.run.dir={job}")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = check_job_dir(job, 6)
    assert metrics["train_loss"] > 0 and metrics["eval_loss"] > 0 and metrics["train_seconds"] > 0
    assert metrics["quant"] == "none" and metrics["reused"] == []
    check_wandb(job, metrics)
    # resume: the job's metrics.json exists, so the same job is skipped, not recomputed
    stamp = (job / "metrics.json").stat().st_mtime_ns
    r2 = cli(*TINY, f"hydra.run.dir={job}")
    assert r2.returncode == 0 and (job / "metrics.json").stat().st_mtime_ns == stamp
    # a new job with the same training config reuses the cached training stage (and replays its loss curves)
    job2 = tmp_path / "job2"
    r3 = cli(*TINY, "eval.limit=4", f"hydra.run.dir={job2}")
    assert r3.returncode == 0, r3.stderr[-3000:]
    m2 = check_job_dir(job2, 4)
    assert m2["reused"] == ["train"] and m2["train_loss"] == metrics["train_loss"]
    check_wandb(job2, m2)


@pytest.mark.slow
def test_multirun_sweep_makes_one_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    r = cli("-m", "neftune.alpha=5", "lora.r=8,16", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert len(jobs) == 2
    ids = set()
    for job, r_ in zip(jobs, (8, 16)):
        assert f"lora.r={r_}" in job.name
        m = check_job_dir(job, 6)
        ids.add(check_wandb(job, m))
        cfg = read_run(find_run_dirs(job / "wandb")[0]).config
        assert cfg["lora"]["r"] == r_ and cfg["neftune"]["alpha"] == 5
    assert len(ids) == 2  # separate wandb runs, not merged


@pytest.mark.slow
def test_failed_sweep_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    r = cli("-m", "data=jsonl,bundled", "train.enabled=false", "eval.limit=2", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 1
    assert "1 sweep job(s) failed" in r.stderr and "data.train_path is not set" in r.stderr
    status = {p.name: json.loads((p / "status.json").read_text()) for p in sweep.iterdir() if p.is_dir()}
    failed = [s for s in status.values() if s["status"] == "failed"]
    ok = [name for name, s in status.items() if s["status"] == "ok"]
    assert len(failed) == 1 and failed[0]["error"].startswith("data.train_path is not set")
    assert len(ok) == 1 and (sweep / ok[0] / "metrics.json").exists()


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return errors[0]


def test_bad_input_gives_one_line_errors(tmp_path):
    assert "available options in 'quant': awq, bnb, gptq, none" in _one_line_error(cli("quant=foo"))
    assert "Key 'foo' not in 'ModelConfig'" in _one_line_error(cli("model.foo=1"))
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


@pytest.mark.slow
def test_quant_sweep_runs_all_four_methods(tmp_path):
    """`quant=none,bnb,gptq,awq -m`: four jobs, training done once, real 4-bit layers in each quantized job."""
    sweep = tmp_path / "q"
    r = cli("-m", "quant=none,bnb,gptq,awq", *TINY, "eval.limit=4", "calib_data.n_samples=4",
            "calib_data.max_length=64", f"hydra.sweep.dir={sweep}", timeout=2400)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0]))
    rows = {method: check_job_dir(job, 4) for job, method in zip(jobs, ("none", "bnb", "gptq", "awq"))}
    for method, m in rows.items():
        assert m["quant"] == method
        check_wandb(jobs[list(rows).index(method)], m)
    assert len({m["train_key"] for m in rows.values()}) == 1  # one training stage for the whole sweep
    assert all(rows[k]["reused"] == ["train"] for k in ("bnb", "gptq", "awq"))
    full = rows["none"]["model_size_mib"]
    for method in ("bnb", "gptq", "awq"):
        m = rows[method]
        assert m["quant_bits"] == 4 and m["quant_seconds"] > 0 and m["model_size_mib"] < 0.8 * full
        assert Path(m["quant_artifact_dir"], "config.json").is_file()
    assert rows["bnb"]["quant_kernel"].startswith("bitsandbytes-Linear4bit") and rows["bnb"]["quant_linear4bit_layers"] > 0
    assert "TorchLinear" in rows["gptq"]["quant_kernel"] and rows["gptq"]["quant_format"] == "gptq"
    assert "Awq" in rows["awq"]["quant_kernel"] and rows["awq"]["quant_format"] == "gemm"
