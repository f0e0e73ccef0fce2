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
from ragqa_exp.stats import binom_two_sided_p, bootstrap_ci, holm, mcnemar, paired_bootstrap_ci
from ragqa_exp.tracking import sweep_group
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


def test_holm_by_hand() -> None:
    """m=4: sorted 0.005·4=0.02, 0.01·3=0.03, 0.03·2=0.06, 0.04·1=0.04 → made non-decreasing: 0.06."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5·2 = 1 (capped), then max(1, 0.6)
    assert holm([0.2]) == [0.2] and holm([]) == []
    assert holm([0.01, 0.01, 0.04]) == pytest.approx([0.03, 0.03, 0.04], abs=1e-15)  # ties: 3·, 2· → max 0.03


def test_paired_bootstrap_by_hand() -> None:
    """Per-item differences [1, 0]: a resampled mean is 0, ½ or 1 with probability ¼, ½, ¼, so the 10%/90%
    quantiles are 0 and 1 and the 40%/60% ones ½ (each well inside its plateau for 2000 resamples)."""
    ref, job = [False, True], [True, True]
    assert paired_bootstrap_ci(ref, job, level=0.8) == (0.0, 1.0)
    assert paired_bootstrap_ci(ref, job, level=0.2) == (0.5, 0.5)
    assert paired_bootstrap_ci([True, False] * 10, [True, False] * 10) == (0.0, 0.0)
    assert paired_bootstrap_ci([True] * 5, [False] * 5) == (-1.0, -1.0)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([True], [True, False])


def test_paired_bootstrap_keeps_pairs_and_matches_normal_approximation() -> None:
    """b=64 right→wrong, c=35 wrong→right of 300: d̄ = -29/300, var(d) = 99/300 - d̄², se = sqrt(var/300)
    = 0.0327, so ±1.96·se ≈ [-0.161, -0.033]. One flip of 300 (negative control for resampling the two
    jobs independently, which gives about ±0.08): the paired interval stays within [-3/300, 0]."""
    ref, job = flags_with_flips(300, 150, 64, 35)
    mean = -29 / 300
    se = math.sqrt((99 / 300 - mean ** 2) / 300)
    lo, hi = paired_bootstrap_ci(ref, job)
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.01) and hi == pytest.approx(mean + 1.96 * se, abs=0.01)
    ref, job = flags_with_flips(300, 150, 1, 0)
    lo, hi = paired_bootstrap_ci(ref, job)
    assert hi == 0.0 and -3 / 300 <= lo < 0


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
    assert rows["1_quant=bnb"]["label"] == "bnb" and rows["1_quant=bnb"]["ref_differs"] == ["quant=none"]
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
    # Holm over the 2 comparisons: 2·0.00464 = 0.0093 for the smaller p, max(0.0093, 1·0.314) for the other
    assert bnb["p_holm"] == pytest.approx(2 * 0.0046406540884343, rel=1e-12)
    assert gptq["p_holm"] == pytest.approx(0.3143065798639371, rel=1e-12)
    lo, hi = bnb["diff_ci"]
    assert bnb["diff"] == pytest.approx(-29 / 300) and lo < bnb["diff"] < hi < 0
    assert (f"- quant=bnb vs quant=none: 64 right→wrong, 35 wrong→right, Δ exact -0.097 [{lo:+.3f}, {hi:+.3f}], "
            f"McNemar p=0.0046, Holm p=0.0093 — a real difference at α=0.05") in md
    assert "- quant=gptq vs quant=none: 45 right→wrong, 35 wrong→right, Δ exact -0.033 [" in md
    assert "Holm p=0.31 — not distinguishable from no change" in md
    assert "| reference |" in md and "| quant=none | 64 | 35 | -0.097 [" in md
    assert "Verdicts: Holm-adjusted over 2 comparisons at α=0.05" in md


def test_verdicts_use_holm_adjusted_p(tmp_path: Path) -> None:
    """Two rows each with b=12, c=3: raw p = 2·576/2^15 = 0.035 < 0.05, Holm 2·0.035 = 0.070: no verdict
    of a real difference, though each test alone would give one."""
    ref, bnb = flags_with_flips(100, 50, 12, 3)
    _, gptq = flags_with_flips(100, 50, 12, 3)
    write_job(tmp_path, "0_quant=none", ["quant=none"], ref)
    write_job(tmp_path, "1_quant=bnb", ["quant=bnb"], bnb)
    write_job(tmp_path, "2_quant=gptq", ["quant=gptq"], gptq[::-1], qids=[f"q{i:04d}" for i in range(100)][::-1])
    rows = rows_by_job(report.collect(tmp_path))
    for name in ("1_quant=bnb", "2_quant=gptq"):
        t = rows[name]["paired"]["exact_match"]
        assert t["p"] == pytest.approx(2 * 576 / 2 ** 15) and t["p_holm"] == pytest.approx(4 * 576 / 2 ** 15)
    md = report.markdown(list(rows.values()))
    assert md.count("McNemar p=0.035, Holm p=0.07 — not distinguishable from no change") == 2
    assert "| 0.035 | 0.07 |" in md  # raw and adjusted p in the table


def test_pairs_by_qid_not_by_line(tmp_path: Path) -> None:
    ref, job = flags_with_flips(60, 30, 6, 2)
    qids = [f"q{i:04d}" for i in range(60)]
    order = list(range(60))
    random.Random(3).shuffle(order)
    write_job(tmp_path, "0_quant=none", ["quant=none"], ref)
    write_job(tmp_path, "1_quant=bnb", ["quant=bnb"], [job[i] for i in order], qids=[qids[i] for i in order])
    t = rows_by_job(report.collect(tmp_path))["1_quant=bnb"]["paired"]["exact_match"]
    assert (t["right_to_wrong"], t["wrong_to_right"]) == (6, 2)


def write_multirun_yaml(sweep: Path, task: list[str]) -> None:
    """The part of Hydra's `multirun.yaml` the report reads: the sweep command's overrides."""
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n" + "".join(f"    - {t}\n" for t in task),
                                         encoding="utf-8")


def test_neftune_sweep_is_compared_with_its_first_value(tmp_path: Path) -> None:
    """The issue's case: `neftune.alpha=0,5 -m` gets a paired line naming its reference's override."""
    ref, job = flags_with_flips(80, 40, 3, 12)
    write_job(tmp_path, "0_neftune.alpha=0", [*COMMON, "neftune.alpha=0"], ref)
    write_job(tmp_path, "1_neftune.alpha=5", [*COMMON, "neftune.alpha=5"], job)
    rows = rows_by_job(report.collect(tmp_path))
    five = rows["1_neftune.alpha=5"]
    assert rows["0_neftune.alpha=0"]["ref"] == "0_neftune.alpha=0"
    assert five["ref"] == "0_neftune.alpha=0" and five["ref_differs"] == ["neftune.alpha=0"]
    t = five["paired"]["exact_match"]
    assert (t["right_to_wrong"], t["wrong_to_right"]) == (3, 12)
    assert t["p_holm"] == t["p"]  # one comparison: nothing to adjust
    md = report.markdown(list(rows.values()))
    assert "- neftune.alpha=5 vs neftune.alpha=0: 3 right→wrong, 12 wrong→right, Δ exact +0.113 [" in md
    assert f"McNemar p={t['p']:.2g}, Holm p={t['p']:.2g}" in md
    assert "| neftune.alpha=0 | 3 | 12 | +0.113 [" in md  # the `vs` column names the reference's override
    assert "Holm-adjusted over 1 comparison at α=0.05" in md
    # multirun.yaml lists the values in the command's order: `neftune.alpha=5,0` makes 5 the reference
    write_multirun_yaml(tmp_path, ["neftune.alpha=5,0", *COMMON])
    rows = rows_by_job(report.collect(tmp_path))
    assert rows["0_neftune.alpha=0"]["ref"] == rows["1_neftune.alpha=5"]["ref"] == "1_neftune.alpha=5"


def test_trained_row_is_compared_with_the_untrained_one(tmp_path: Path) -> None:
    ref, job = flags_with_flips(50, 10, 1, 20)
    write_job(tmp_path, "0_train.enabled=false", ["train.enabled=false", "eval.limit=50"], ref, train_key=None)
    write_job(tmp_path, "1_train.enabled=true", ["train.enabled=true", "eval.limit=50"], job, train_key="T9")
    write_multirun_yaml(tmp_path, ["train.enabled=false,true", "eval.limit=50"])
    md = report.markdown(report.collect(tmp_path))
    assert "- train.enabled=true vs train.enabled=false: 1 right→wrong, 20 wrong→right, Δ exact +0.380 [" in md


def two_key_sweep(sweep: Path, task: list[str], failed: tuple[str, ...] = ()) -> None:
    """`quant=none,gptq lora.r=8,16 -m`: Hydra's product order, the first key slowest; every job different."""
    rng = random.Random(5)
    num = 0
    for quant in ("none", "gptq"):
        for r in ("8", "16"):
            name = f"{num}_quant={quant},lora.r={r}"
            overrides = [f"quant={quant}", f"lora.r={r}"]
            if name in failed:
                write_job(sweep, name, overrides, error="out of memory")
            else:
                write_job(sweep, name, overrides, [rng.random() < 0.5 for _ in range(40)], train_key=f"T{r}")
            num += 1
    write_multirun_yaml(sweep, task)


def test_two_key_sweep_varies_one_key_at_a_time(tmp_path: Path) -> None:
    """Each job's reference differs from it in one key, set to its first value: the first key in the sweep's
    order at which the job is not at its first value."""
    two_key_sweep(tmp_path, ["quant=none,gptq", "lora.r=8,16"])
    rows = rows_by_job(report.collect(tmp_path))
    assert {j: (r["ref"], r["ref_differs"]) for j, r in rows.items()} == {
        "0_quant=none,lora.r=8": ("0_quant=none,lora.r=8", []),
        "1_quant=none,lora.r=16": ("0_quant=none,lora.r=8", ["lora.r=8"]),
        "2_quant=gptq,lora.r=8": ("0_quant=none,lora.r=8", ["quant=none"]),
        "3_quant=gptq,lora.r=16": ("1_quant=none,lora.r=16", ["quant=none"]),
    }
    md = report.markdown(list(rows.values()))
    assert "- quant=gptq vs quant=none (at lora.r=16): " in md and "- lora.r=16 vs lora.r=8 (at quant=none): " in md
    assert "Holm-adjusted over 3 comparisons" in md
    # the key listed first in the command is compared first: with lora.r first, gptq/16 is compared with gptq/8
    write_multirun_yaml(tmp_path, ["lora.r=8,16", "quant=none,gptq"])
    assert rows_by_job(report.collect(tmp_path))["3_quant=gptq,lora.r=16"]["ref_differs"] == ["lora.r=8"]


def test_two_key_sweep_with_a_failed_reference(tmp_path: Path) -> None:
    """A failed candidate gives way to the next key's finished one; with none finished, the row says why."""
    two_key_sweep(tmp_path / "a", ["quant=none,gptq", "lora.r=8,16"], failed=("1_quant=none,lora.r=16",))
    assert rows_by_job(report.collect(tmp_path / "a"))["3_quant=gptq,lora.r=16"]["ref"] == "2_quant=gptq,lora.r=8"
    two_key_sweep(tmp_path / "b", ["quant=none,gptq", "lora.r=8,16"], failed=("0_quant=none,lora.r=8",))
    rows = rows_by_job(report.collect(tmp_path / "b"))
    gptq8 = rows["2_quant=gptq,lora.r=8"]
    assert gptq8["ref"] == "0_quant=none,lora.r=8" and gptq8["paired"] == {}
    assert gptq8["not_paired"] == "reference 0_quant=none,lora.r=8 failed (out of memory)"
    assert "- quant=gptq vs quant=none (at lora.r=8): not paired: reference 0_quant=none,lora.r=8 failed" in \
        report.markdown(list(rows.values()))


def test_api_row_listed_first_is_still_compared_with_the_local_row(tmp_path: Path) -> None:
    """`model=openai,gemma3_270m -m`: the first value is the API model, yet the local row is the reference
    (an API row is the baseline beside the local model, never a local row's reference)."""
    api, local = flags_with_flips(30, 15, 2, 6)
    write_job(tmp_path, "0_model=openai", ["model=openai"], api, model_source="openai", train_key=None)
    write_job(tmp_path, "1_model=gemma3_270m", ["model=gemma3_270m"], local, model_source="embedded_gguf")
    rows = rows_by_job(report.collect(tmp_path))
    assert rows["1_model=gemma3_270m"]["ref"] == "1_model=gemma3_270m"
    assert rows["0_model=openai"]["ref"] == "1_model=gemma3_270m"
    assert rows["0_model=openai"]["ref_differs"] == ["model=gemma3_270m"]


def test_order_is_inferred_from_job_numbers_without_multirun_yaml(tmp_path: Path) -> None:
    two_key_sweep(tmp_path, [])
    (tmp_path / "multirun.yaml").unlink()
    sw = report.swept(report.load_sweep(tmp_path), tmp_path)
    assert sw.order_from == "job order" and sw.keys == ["quant", "lora.r"]
    assert sw.values == {"quant": ["quant=none", "quant=gptq"], "lora.r": ["lora.r=8", "lora.r=16"]}
    assert rows_by_job(report.collect(tmp_path))["3_quant=gptq,lora.r=16"]["ref"] == "1_quant=none,lora.r=16"


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
    assert "- quant=bnb vs quant=none: not paired: items differ (24 vs 20 questions, 20 shared)" in md
    assert "| quant=none | not paired: items differ" in md


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


def test_notes_for_noise_floor_overlap_resumed_and_batch_limits(tmp_path: Path) -> None:
    """Fields other stages add to metrics.json: shown when set, absent in old sweeps."""
    ref, job = flags_with_flips(32, 16, 2, 3)
    write_job(tmp_path, "0_neftune.alpha=0", ["neftune.alpha=0"], ref, eval_noise_checked=32, eval_noise_changed=0,
              eval_batch_limits_changed=True, eval_oom_retries=2, items_per_second=3.25, data_overlap_qid=0,
              data_overlap_question=0)
    write_job(tmp_path, "1_neftune.alpha=5", ["neftune.alpha=5"], job, eval_noise_checked=32, eval_noise_changed=2,
              eval_resumed_items=5, eval_batch_limits_changed=False, data_overlap_qid=3, data_overlap_question=4)
    md = report.markdown(report.collect(tmp_path))
    assert "- noise floor of 0_neftune.alpha=0: 0 of 32 answers changed under another batch composition" in md
    assert "noise floor of 1_" not in md  # the floor is the reference's; a compared row's own noise is said apart:
    assert ("- 1_neftune.alpha=5: 2 of 32 of its own answers changed under another batch composition (kernel –): part "
            "of its flips against neftune.alpha=0 can be this noise, not the model") in md
    assert "— not distinguishable from no change (but 2 of its own answers moved with the batch: see Notes)" in md
    assert "answers depend on the batch" not in md  # a floor of 0 needs no warning
    assert "- 1_neftune.alpha=5: validation rows also in training: 3 by qid, 4 by normalized question text" in md
    assert "0_neftune.alpha=0: validation rows" not in md  # zero overlap: no note
    assert "| 1_neftune.alpha=5 † | " in md and "- † 1_neftune.alpha=5: 5 of 32 answers taken from an interrupted" in md
    assert "| 0_neftune.alpha=0 ‡ | " in md and "- ‡ 0_neftune.alpha=0: batch limits lowered after running out of " \
        "memory (2 retries)" in md
    assert "| 3.25 |" in md  # items/s
    assert report.flat_record(report.collect(tmp_path)[1])["data_overlap_question"] == 4


def test_a_nonzero_noise_floor_says_flips_of_its_size_can_be_batching(tmp_path: Path) -> None:
    ref, job = flags_with_flips(32, 16, 2, 3)
    write_job(tmp_path, "0_quant=none", ["quant=none"], ref, eval_noise_checked=32, eval_noise_changed=3)
    write_job(tmp_path, "1_quant=bnb", ["quant=bnb"], job, eval_noise_checked=32, eval_noise_changed=0)
    md = report.markdown(report.collect(tmp_path))
    line = next(x for x in md.splitlines() if x.startswith("- noise floor of 0_quant=none"))
    assert line.startswith("- noise floor of 0_quant=none: 3 of 32 answers changed under another batch composition — "
                           "answers are not reproducible on this device"), line
    assert "read flip counts of that size as noise" in line
    assert "1_quant=bnb: 0 of 32" not in md and "moved with the batch" not in md  # the control: a row without noise


def test_a_compared_row_whose_own_answers_move_says_so_beside_its_verdict(tmp_path: Path) -> None:
    """On a GPU the reference can be reproducible while a quant kernel (Marlin, LLM.int8) moves its row's answers
    with the batch: the row's own noise is said, with its kernel, beside its verdict."""
    ref, job = flags_with_flips(32, 16, 2, 3)
    write_job(tmp_path, "0_quant=none", ["quant=none"], ref, eval_noise_checked=32, eval_noise_changed=0)
    write_job(tmp_path, "1_quant=gptq", ["quant=gptq"], job, eval_noise_checked=32, eval_noise_changed=4,
              quant_kernel="MarlinLinear")
    md = report.markdown(report.collect(tmp_path))
    assert ("- 1_quant=gptq: 4 of 32 of its own answers changed under another batch composition (kernel MarlinLinear): "
            "part of its flips against quant=none can be this noise, not the model") in md
    verdict_line = next(x for x in md.splitlines() if x.startswith("- quant=gptq vs quant=none:"))
    assert verdict_line.endswith("(but 4 of its own answers moved with the batch: see Notes)"), verdict_line
    assert "- noise floor of 0_quant=none: 0 of 32 answers changed under another batch composition\n" in md + "\n"


def test_a_row_decoded_otherwise_than_its_reference_says_so(tmp_path: Path) -> None:
    """On a GPU eval.kv_cache=auto runs LLM.int8 with outlier columns on the dynamic cache, the other rows on the graph
    decode: that row's flips are partly the decode. A row decoded as its reference was gets no such line (control)."""
    ref, job = flags_with_flips(32, 16, 2, 3)
    write_job(tmp_path, "0_quant=none", ["quant=none"], ref, eval_plan={"kv_cache": "graph"})
    write_job(tmp_path, "1_quant=bnb", ["quant=bnb"], job, eval_plan={"kv_cache": "dynamic"})
    write_job(tmp_path, "2_quant=gptq", ["quant=gptq"], job, eval_plan={"kv_cache": "graph"})
    md = report.markdown(report.collect(tmp_path))
    assert ("- 1_quant=bnb: decoded with eval.kv_cache=dynamic, its reference quant=none with graph "
            "(eval_plan.kv_cache): the two decodes can give other bf16 answers on the same weights, so part of its "
            "flips can be the decode, not the model") in md
    assert "2_quant=gptq: decoded" not in md and "0_quant=none: decoded" not in md


def test_old_sweeps_without_the_new_fields_have_no_notes(quant_sweep: Path) -> None:
    md = report.markdown(report.collect(quant_sweep))
    assert "Notes:" not in md and "†" not in md and "‡" not in md
    assert report.flat_record(report.collect(quant_sweep)[0])["eval_noise_checked"] is None


# ---------------------------------------------------------------- files and command line

def test_writes_markdown_csv_and_plots(quant_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    report.main([str(quant_sweep)])
    out = capsys.readouterr().out
    md = (quant_sweep / "report.md").read_text(encoding="utf-8")
    assert out == md and "quant=bnb vs quant=none: 64 right→wrong" in md
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


def test_sweep_groups_are_unique_per_sweep_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same time of day on two days (the issue's collision) gets two groups; one sweep dir one group,
    however it is spelled (relative from its parent, absolute)."""
    day1, day2 = tmp_path / "multirun" / "2026-12-04" / "10-00-00", tmp_path / "multirun" / "2026-12-05" / "10-00-00"
    g1, g2 = sweep_group(day1), sweep_group(day2)
    assert g1 != g2
    assert g1.startswith("2026-12-04_10-00-00-") and g2.startswith("2026-12-05_10-00-00-")
    assert sweep_group(tmp_path / "elsewhere" / "2026-12-04" / "10-00-00") != g1  # another checkout's multirun
    monkeypatch.chdir(tmp_path)
    assert sweep_group("multirun/2026-12-04/10-00-00") == g1 == sweep_group(str(day1) + "/")
    assert len(sweep_group(tmp_path / ("x" * 300))) <= 128  # wandb's limit


def test_wandb_mode_follows_the_jobs(quant_sweep: Path) -> None:
    jobs = report.load_sweep(quant_sweep)
    assert report.wandb_target(jobs, quant_sweep).mode == "disabled"
    assert report.wandb_target(jobs, quant_sweep, "offline").mode == "offline"
    jobs[1].metrics["wandb_mode"] = "online"
    assert report.wandb_target(jobs, quant_sweep).mode == "online"
    jobs[2].metrics["wandb_mode"] = "offline"
    target = report.wandb_target(jobs, quant_sweep)
    # no wandb_group recorded (old sweeps): the group the jobs get by default
    assert target.mode == "offline" and target.group == sweep_group(quant_sweep)
