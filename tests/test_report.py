"""The sweep report (ragqa_exp.report, .stats, .plots) on synthetic sweep dirs written here: no model, fast."""
from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from ragqa_exp import plots, report
from ragqa_exp.errors import RagqaError
from ragqa_exp.stats import binom_two_sided_p, bootstrap_ci, mcnemar
from ragqa_exp.wandb_offline import find_run_dirs, read_records, read_run

COMMON = ["train.max_steps=3", "eval.limit=300"]  # the same in every job: never a "differing" override


# ---------------------------------------------------------------- synthetic sweeps

def flags_with_flips(n: int, ref_right: int, b: int, c: int) -> tuple[list[bool], list[bool]]:
    """Reference and job flags on n items: b items right→wrong, c wrong→right, the rest unchanged."""
    ref = [i < ref_right for i in range(n)]
    job = list(ref)
    for i in range(b):
        job[i] = False  # reference right, job wrong
    for i in range(ref_right, ref_right + c):
        job[i] = True  # reference wrong, job right
    return ref, job


def write_job(sweep: Path, name: str, overrides: list[str], exact: list[bool] | None = None, *,
              qids: list[str] | None = None, error: str | None = None, **metrics) -> Path:
    """A job dir as the pipeline leaves it: .hydra/overrides.yaml, status.json, and when it finished,
    predictions.jsonl + metrics.json whose accuracies are the means of the flags."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides), encoding="utf-8")
    if error is not None:
        (job / "status.json").write_text(json.dumps({"status": "failed", "error": error, "overrides": overrides}))
        return job
    qids = qids or [f"q{i:04d}" for i in range(len(exact))]
    partial = [e or i % 3 == 0 for i, e in enumerate(exact)]
    preds = [{"qid": q, "question": f"Q{q}", "answer": "a", "pred": "a" if e else "b", "exact": e, "partial": p,
              "exact_normalized": e, "partial_normalized": p, "raw": ""} for q, e, p in zip(qids, exact, partial)]
    (job / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preds), encoding="utf-8")
    n = len(exact)
    quant = next((o.split("=", 1)[1] for o in overrides if o.startswith("quant=")), "none")
    m = {"exact_match": sum(exact) / n, "partial_match": sum(partial) / n, "exact_match_normalized": sum(exact) / n,
         "partial_match_normalized": sum(partial) / n, "n": n, "eval_seconds": 12.5 + len(name),
         "latency_ms_p50": 40.25, "latency_ms_p95": 80.5, "gpu_mem_load_mib": None, "gpu_mem_peak_mib": None,
         "torch_peak_allocated_mib": None, "rss_peak_mib": 2048.0 + len(name), "model_size_mib": 370.5,
         "quant_seconds": None if quant == "none" else 7.75, "quant_kernel": None if quant == "none" else f"{quant}-k",
         "quant": quant, "model": "gemma3-270m", "train_key": "T1", "reused": [], "wandb_mode": "disabled",
         "pid": 1234, **metrics}
    (job / "metrics.json").write_text(json.dumps(m), encoding="utf-8")
    (job / "status.json").write_text(json.dumps({"status": "ok", "overrides": overrides}))
    return job


@pytest.fixture
def quant_sweep(tmp_path: Path) -> Path:
    """none / bnb / gptq / awq on the same 300 questions: bnb flips 64→35 (p≈0.005), gptq 45→35 (p≈0.31)."""
    sweep = tmp_path / "multirun" / "2025-01-02" / "10-00-00"
    ref, bnb = flags_with_flips(300, 150, 64, 35)
    _, gptq = flags_with_flips(300, 150, 45, 35)
    write_job(sweep, "0_quant=none", [*COMMON, "quant=none"], ref)
    write_job(sweep, "1_quant=bnb", [*COMMON, "quant=bnb"], bnb)
    write_job(sweep, "2_quant=gptq", [*COMMON, "quant=gptq"], gptq)
    write_job(sweep, "3_quant=awq", [*COMMON, "quant=awq"], error="AttributeError: 'NoneType' has no attribute 'x'")
    return sweep


def rows_by_job(rows: list[dict]) -> dict[str, dict]:
    return {r["job"]: r for r in rows}


# ---------------------------------------------------------------- stats

def test_mcnemar_small_cases_by_hand() -> None:
    # b=3, c=0: P[X <= 0] = 1/8 with X ~ Bin(3, 1/2), two-sided 2/8
    t = mcnemar([True, True, True, False, True], [False, False, False, False, True])
    assert (t.b, t.c, t.p) == (3, 0, 0.25)
    t = mcnemar([False, False, False, True], [True, True, True, True])
    assert (t.b, t.c, t.p) == (0, 3, 0.25)
    # b=5, c=1: P[X <= 1] = (1 + 6)/64, two-sided 14/64
    t = mcnemar([True] * 5 + [False, True], [False] * 5 + [True, True])
    assert (t.b, t.c) == (5, 1) and t.p == pytest.approx(14 / 64, abs=1e-15)
    assert mcnemar([True, False], [True, False]).p == 1.0  # no discordant pair: p = 1
    assert mcnemar([True, False], [False, True]).p == 1.0  # b = c = 1: 2·P[X <= 1] = 2·3/4 capped at 1
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_mcnemar_reference_numbers() -> None:
    """The issue's two examples. Got here: b=64, c=35 → p=0.0046406540884343; b=45, c=35 → p=0.3143065798639371
    (scipy.stats.binomtest(35, 99).pvalue and binomtest(35, 80).pvalue agree to 1e-15)."""
    assert binom_two_sided_p(64, 99) == pytest.approx(0.0046406540884343, rel=1e-12)
    assert binom_two_sided_p(45, 80) == pytest.approx(0.3143065798639371, rel=1e-12)
    assert binom_two_sided_p(35, 99) == binom_two_sided_p(64, 99)  # symmetric in b and c
    ref, job = flags_with_flips(300, 150, 64, 35)
    assert mcnemar(ref, job).p == pytest.approx(0.0046406540884343, rel=1e-12)


def test_bootstrap_degenerate_and_reproducible() -> None:
    assert bootstrap_ci([True] * 50) == (1.0, 1.0)
    assert bootstrap_ci([False] * 50) == (0.0, 0.0)
    flags = [i % 4 == 0 for i in range(37)]
    lo, hi = bootstrap_ci(flags, seed=7)
    assert 0.0 <= lo < sum(flags) / len(flags) < hi <= 1.0
    # many items, few resamples: the quantiles fall between resampled means, so they depend on the draws
    many = [i % 3 == 0 for i in range(1001)]
    assert bootstrap_ci(many, resamples=301, seed=7) == bootstrap_ci(many, resamples=301, seed=7)
    assert bootstrap_ci(many, resamples=301, seed=7) != bootstrap_ci(many, resamples=301, seed=8)
    lo50, hi50 = bootstrap_ci(flags, level=0.5, seed=7)
    assert lo <= lo50 and hi50 <= hi and hi50 - lo50 < hi - lo
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_bootstrap_matches_normal_approximation() -> None:
    """n=400, 30% right: the Wald interval 0.3 ± 1.96·sqrt(0.3·0.7/400) = [0.2551, 0.3449]."""
    flags = [True] * 120 + [False] * 280
    random.Random(1).shuffle(flags)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    lo, hi = bootstrap_ci(flags)  # got [0.2575, 0.3475]
    assert lo == pytest.approx(0.3 - half, abs=0.01) and hi == pytest.approx(0.3 + half, abs=0.01)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)  # a 90% interval (±1.645 se) would be 16% narrower


# ---------------------------------------------------------------- collect / rows

def test_rows_are_the_jobs_metrics(quant_sweep: Path) -> None:
    rows = rows_by_job(report.collect(quant_sweep))
    assert list(rows) == ["0_quant=none", "1_quant=bnb", "2_quant=gptq", "3_quant=awq"]
    for name in ("0_quant=none", "1_quant=bnb", "2_quant=gptq"):
        metrics = json.loads((quant_sweep / name / "metrics.json").read_text())
        assert {k: rows[name][k] for k in metrics} == metrics
        assert rows[name]["varying"] == [f"quant={metrics['quant']}"]  # the common overrides are not shown
        lo, hi = rows[name]["exact_match_ci"]
        assert lo <= metrics["exact_match"] <= hi
    assert rows["1_quant=bnb"]["label"] == "bnb" and rows["1_quant=bnb"]["ref_label"] == "none"
    md = report.markdown(list(rows.values()))
    bnb = rows["1_quant=bnb"]
    lo, hi = bnb["exact_match_ci"]
    assert f"| 1_quant=bnb | quant=bnb | {bnb['exact_match']:.3f} [{lo:.3f}, {hi:.3f}] |" in md
    assert "| 7.75 | bnb-k |" in md  # quantize seconds and kernel
    assert "| – | – | 370.5 |" in md  # GPU load / peak are null on CPU, then the size on disk


def test_paired_comparison_and_verdicts(quant_sweep: Path) -> None:
    rows = rows_by_job(report.collect(quant_sweep))
    assert rows["0_quant=none"]["ref"] == "0_quant=none"  # the reference row itself
    bnb, gptq = rows["1_quant=bnb"]["paired"]["exact_match"], rows["2_quant=gptq"]["paired"]["exact_match"]
    assert (bnb["right_to_wrong"], bnb["wrong_to_right"]) == (64, 35)
    assert bnb["p"] == pytest.approx(0.0046406540884343, rel=1e-12)
    assert (gptq["right_to_wrong"], gptq["wrong_to_right"]) == (45, 35)
    assert "partial_match" in rows["1_quant=bnb"]["paired"]
    md = report.markdown(list(rows.values()))
    assert "- bnb vs none: 64 right→wrong, 35 wrong→right, McNemar p=0.0046 — a real difference at α=0.05" in md
    assert "- gptq vs none: 45 right→wrong, 35 wrong→right, McNemar p=0.31 — not distinguishable from no change" in md
    assert "| reference |" in md


def test_pairs_by_qid_not_by_line(tmp_path: Path) -> None:
    ref, job = flags_with_flips(60, 30, 6, 2)
    qids = [f"q{i:04d}" for i in range(60)]
    order = list(range(60))
    random.Random(3).shuffle(order)
    write_job(tmp_path, "0_quant=none", ["quant=none"], ref)
    write_job(tmp_path, "1_quant=bnb", ["quant=bnb"], [job[i] for i in order], qids=[qids[i] for i in order])
    t = rows_by_job(report.collect(tmp_path))["1_quant=bnb"]["paired"]["exact_match"]
    assert (t["right_to_wrong"], t["wrong_to_right"]) == (6, 2)


def test_default_reference_is_unquantized_same_training(tmp_path: Path) -> None:
    flags = [i % 2 == 0 for i in range(20)]
    write_job(tmp_path, "0_lora.r=8,quant=none", ["lora.r=8", "quant=none"], flags, train_key="A")
    write_job(tmp_path, "1_lora.r=8,quant=bnb", ["lora.r=8", "quant=bnb"], flags, train_key="A")
    write_job(tmp_path, "2_lora.r=16,quant=none", ["lora.r=16", "quant=none"], flags, train_key="B")
    write_job(tmp_path, "3_lora.r=16,quant=bnb", ["lora.r=16", "quant=bnb"], flags, train_key="B")
    write_job(tmp_path, "4_lora.r=16,quant=gptq", ["lora.r=16", "quant=gptq"], flags, train_key="B", model="other")
    refs = {r["job"]: r["ref"] for r in report.collect(tmp_path)}
    assert refs == {
        "0_lora.r=8,quant=none": "0_lora.r=8,quant=none", "1_lora.r=8,quant=bnb": "0_lora.r=8,quant=none",
        "2_lora.r=16,quant=none": "2_lora.r=16,quant=none", "3_lora.r=16,quant=bnb": "2_lora.r=16,quant=none",
        "4_lora.r=16,quant=gptq": "0_lora.r=8,quant=none",  # no unquantized job of that model: the first ok job
    }
    labels = {r["job"]: r["label"] for r in report.collect(tmp_path)}
    assert labels["3_lora.r=16,quant=bnb"] == "lora.r=16, quant=bnb"  # two keys vary: key=value pairs


def test_no_unquantized_job_falls_back_to_first_finished(tmp_path: Path) -> None:
    flags = [i % 3 == 0 for i in range(30)]
    write_job(tmp_path, "0_quant=bnb", ["quant=bnb"], error="out of GPU memory")
    write_job(tmp_path, "1_quant=gptq", ["quant=gptq"], flags)
    write_job(tmp_path, "2_quant=awq", ["quant=awq"], flags)
    rows = rows_by_job(report.collect(tmp_path))
    assert rows["2_quant=awq"]["ref"] == rows["1_quant=gptq"]["ref"] == "1_quant=gptq"


def test_ref_option(quant_sweep: Path) -> None:
    by_number = rows_by_job(report.collect(quant_sweep, ref="1"))
    assert {r["ref"] for r in by_number.values() if r["status"] == "ok"} == {"1_quant=bnb"}
    t = by_number["0_quant=none"]["paired"]["exact_match"]
    assert (t["right_to_wrong"], t["wrong_to_right"]) == (35, 64)  # the same flips, seen from bnb
    assert rows_by_job(report.collect(quant_sweep, ref="2_quant=gptq"))["1_quant=bnb"]["ref"] == "2_quant=gptq"
    with pytest.raises(RagqaError, match="no such job"):
        report.collect(quant_sweep, ref="9")
    with pytest.raises(RagqaError, match="failed"):
        report.collect(quant_sweep, ref="3")


def test_different_items_are_not_paired(tmp_path: Path) -> None:
    write_job(tmp_path, "0_quant=none", ["quant=none"], [True, False] * 10)
    write_job(tmp_path, "1_quant=bnb", ["quant=bnb"], [True, False] * 12)
    rows = rows_by_job(report.collect(tmp_path))
    assert rows["1_quant=bnb"]["paired"] == {}
    assert rows["1_quant=bnb"]["not_paired"] == "items differ (24 vs 20 questions, 20 shared)"
    md = report.markdown(list(rows.values()))
    assert "- bnb vs none: not paired: items differ (24 vs 20 questions, 20 shared)" in md
    assert "| 0_quant=none | not paired: items differ" in md


def test_failed_api_rows_count_wrong(tmp_path: Path) -> None:
    job = write_job(tmp_path, "0_model=api", ["model=api"], [True, True, False, True])
    lines = (job / "predictions.jsonl").read_text().splitlines()
    row = json.loads(lines[1]) | {"failed": True}
    (job / "predictions.jsonl").write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    assert report.read_items(job / "predictions.jsonl").flags["exact_match"] == [True, False, False, True]


def test_job_without_predictions_has_no_interval_and_is_not_paired(tmp_path: Path) -> None:
    write_job(tmp_path, "0_quant=none", ["quant=none"], [True, False, True, True])
    bnb = write_job(tmp_path, "1_quant=bnb", ["quant=bnb"], [True, False, False, True])
    (bnb / "predictions.jsonl").unlink()
    rows = rows_by_job(report.collect(tmp_path))
    assert rows["1_quant=bnb"]["exact_match_ci"] is None and rows["1_quant=bnb"]["exact_match"] == 0.5
    assert rows["1_quant=bnb"]["not_paired"] == "no predictions.jsonl"
    assert "| 1_quant=bnb | quant=bnb | 0.500 | " in report.markdown(list(rows.values()))
    swapped = rows_by_job(report.collect(tmp_path, ref="1"))
    assert swapped["0_quant=none"]["not_paired"] == "reference: no predictions.jsonl"


def test_sweep_of_failed_jobs_still_reports(tmp_path: Path, capsys) -> None:
    write_job(tmp_path, "0_quant=gptq", ["quant=gptq"], error="gptqmodel is not installed")
    (tmp_path / plots.MEMORY_PLOT).write_bytes(b"stale")  # from an earlier report
    report.main([str(tmp_path)])
    assert "failed: gptqmodel is not installed" in capsys.readouterr().out
    assert (tmp_path / "report.csv").is_file() and not list(tmp_path.glob("*.png"))


def test_unreadable_files_are_reported_per_job(tmp_path: Path) -> None:
    write_job(tmp_path, "0_quant=none", ["quant=none"], [True, False])
    bnb = write_job(tmp_path, "1_quant=bnb", ["quant=bnb"], [True, False])
    gptq = write_job(tmp_path, "2_quant=gptq", ["quant=gptq"], [True, False])
    (bnb / "predictions.jsonl").write_text('{"qid": "q0000", "exact": true}\n{oops\n')
    (gptq / "metrics.json").write_text("[1, 2]")
    rows = rows_by_job(report.collect(tmp_path))
    assert rows["1_quant=bnb"]["not_paired"].startswith("predictions.jsonl:2: malformed JSON")
    assert rows["2_quant=gptq"]["status"] == "failed"
    assert rows["2_quant=gptq"]["error"] == "metrics.json: not a JSON object"


def test_nested_old_layout_job_dirs(tmp_path: Path) -> None:
    """Old sweeps: an override value with "/" made nested dirs; a job's own sub-dirs are never jobs."""
    flags = [True, False, True]
    write_job(tmp_path, "0_data.path=/data/a.jsonl", ["data.path=/data/a.jsonl"], flags)
    b = write_job(tmp_path, "1_data.path=/data/b.jsonl", ["data.path=/data/b.jsonl"], flags)
    (b / "quantized").mkdir()
    (b / "quantized" / "metrics.json").write_text("{}")  # not a job: inside a job dir
    (b / "wandb" / "run").mkdir(parents=True)
    (b / "wandb" / "run" / "status.json").write_text("{}")
    rows = report.collect(tmp_path)
    assert [r["job"] for r in rows] == ["0_data.path=/data/a.jsonl", "1_data.path=/data/b.jsonl"]
    assert [r["label"] for r in rows] == ["/data/a.jsonl", "/data/b.jsonl"]
    assert (tmp_path / "0_data.path=" / "data" / "a.jsonl" / "metrics.json").is_file()


def test_failed_job_row_shows_error(quant_sweep: Path) -> None:
    rows = rows_by_job(report.collect(quant_sweep))
    awq = rows["3_quant=awq"]
    assert awq["status"] == "failed" and awq["error"] == "AttributeError: 'NoneType' has no attribute 'x'"
    assert awq["varying"] == ["quant=awq"]
    md = report.markdown(list(rows.values()))
    assert "| 3_quant=awq | quant=awq | failed: AttributeError: 'NoneType' has no attribute 'x' |" in md
    assert "awq vs" not in md  # no verdict for a job without results


# ---------------------------------------------------------------- files and command line

def test_writes_markdown_csv_and_plots(quant_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    report.main([str(quant_sweep)])
    out = capsys.readouterr().out
    md = (quant_sweep / "report.md").read_text(encoding="utf-8")
    assert out == md and "bnb vs none: 64 right→wrong" in md
    with open(quant_sweep / "report.csv", encoding="utf-8") as f:
        records = {r["job"]: r for r in csv.DictReader(f)}
    bnb = json.loads((quant_sweep / "1_quant=bnb" / "metrics.json").read_text())
    assert float(records["1_quant=bnb"]["exact_match"]) == bnb["exact_match"]
    assert float(records["1_quant=bnb"]["eval_seconds"]) == bnb["eval_seconds"]
    assert records["1_quant=bnb"]["exact_match_right_to_wrong"] == "64"
    assert records["3_quant=awq"]["error"].startswith("AttributeError")
    for name in (plots.EVAL_SECONDS_PLOT, plots.MEMORY_PLOT):
        assert (quant_sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert not list(quant_sweep.glob(".*.tmp"))  # atomic writes leave no temporaries
    assert not (quant_sweep / "wandb").exists()  # every job had wandb disabled


def test_json_output(quant_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    report.main([str(quant_sweep), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["job"] for r in rows] == [r["job"] for r in report.collect(quant_sweep)]
    assert rows[1]["paired"]["exact_match"]["right_to_wrong"] == 64


def test_memory_axis_falls_back_to_rss_on_cpu() -> None:
    cpu = [{"status": "ok", "gpu_mem_peak_mib": None, "rss_peak_mib": 2000.0}]
    assert plots.memory_axis(cpu) == ("rss_peak_mib", "peak RSS (MiB, CPU run)")
    gpu = [*cpu, {"status": "ok", "gpu_mem_peak_mib": 9000.0, "rss_peak_mib": 3000.0}]
    assert plots.memory_axis(gpu)[0] == "gpu_mem_peak_mib"


def test_default_sweep_is_the_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    flags = [True, False]
    write_job(tmp_path / "multirun" / "2025-01-01" / "23-00-00", "0_quant=none", ["quant=none"], flags)
    write_job(tmp_path / "multirun" / "2025-01-02" / "09-00-00", "0_quant=none", ["quant=none"], flags)
    (tmp_path / "multirun" / "2025-01-02" / "11-00-00" / ".hydra").mkdir(parents=True)  # no job dirs (yet)
    monkeypatch.chdir(tmp_path)
    assert report.latest_sweep(Path("multirun")) == Path("multirun/2025-01-02/09-00-00")
    report.main([])
    assert (tmp_path / "multirun" / "2025-01-02" / "09-00-00" / "report.md").is_file()
    assert not (tmp_path / "multirun" / "2025-01-01" / "23-00-00" / "report.md").exists()


def cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ragqa_exp.report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_missing_sweep_dir_is_one_line_error(tmp_path: Path) -> None:
    for args in ([str(tmp_path / "nope")], []):  # a missing dir; no sweep under ./multirun
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
        assert r.stdout == ""


# ---------------------------------------------------------------- wandb

@pytest.fixture
def wandb_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "wandb_home"
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_API_KEY": "", "WANDB_DIR": str(home / "dir"),
            "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_CACHE_DIR": str(home / "cache"),
            "WANDB_DATA_DIR": str(home / "data"), "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true"}


def test_wandb_report_run_offline(tmp_path: Path, wandb_env: dict[str, str]) -> None:
    sweep = tmp_path / "sweep"
    ref, bnb = flags_with_flips(40, 20, 6, 1)
    write_job(sweep, "0_quant=none", ["quant=none"], ref, wandb_mode="offline", wandb_group="g-quant")
    write_job(sweep, "1_quant=bnb", ["quant=bnb"], bnb, wandb_mode="offline", wandb_group="g-quant")
    r = cli(str(sweep), "--json", env=wandb_env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["job"] for row in json.loads(r.stdout)] == ["0_quant=none", "1_quant=bnb"]  # stdout stays JSON
    (run_dir,) = find_run_dirs(sweep / "wandb")
    (run_rec,) = [rec.run for rec in read_records(next(run_dir.glob("run-*.wandb")))
                  if rec.WhichOneof("record_type") == "run"]
    assert (run_rec.job_type, run_rec.run_group, run_rec.display_name) == ("report", "g-quant", "report")
    run = read_run(run_dir)
    assert run.exit_code == 0 and run.config["jobs"] == ["0_quant=none", "1_quant=bnb"]
    table = run.tables["report/table"]
    rec = dict(zip(table["columns"], table["data"][1]))
    assert rec["job"] == "1_quant=bnb" and rec["exact_match_right_to_wrong"] == 6
    assert rec["exact_match_wrong_to_right"] == 1
    assert table["columns"] == list(report.flat_record(report.collect(sweep)[0]))  # the CSV's columns
    assert run.summary["report/accuracy_vs_eval_seconds/_type"] == "image-file"
    assert run.summary["report/accuracy_vs_memory/_type"] == "image-file"


def test_wandb_failure_is_only_a_warning(quant_sweep: Path, monkeypatch, caplog) -> None:
    wandb = pytest.importorskip("wandb")

    def broken_init(**kw):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    rows = report.collect(quant_sweep)
    report.log_to_wandb(report.WandbTarget(mode="online"), quant_sweep, rows, [], {})
    assert "wandb report run failed (RuntimeError: no network)" in caplog.text


def test_wandb_mode_follows_the_jobs(quant_sweep: Path) -> None:
    jobs = report.load_sweep(quant_sweep)
    assert report.wandb_target(jobs, quant_sweep).mode == "disabled"
    assert report.wandb_target(jobs, quant_sweep, "offline").mode == "offline"
    jobs[1].metrics["wandb_mode"] = "online"
    assert report.wandb_target(jobs, quant_sweep).mode == "online"
    jobs[2].metrics["wandb_mode"] = "offline"
    target = report.wandb_target(jobs, quant_sweep)
    assert target.mode == "offline" and target.group == "10-00-00"  # no wandb_group: the sweep dir's name
