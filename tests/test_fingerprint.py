"""A job dir is checked, not trusted: a finished job is skipped, and a killed evaluation resumed, only when the
fingerprint recorded with it matches this run's (ragqa_exp/fingerprint.py). The changed default is simulated the
way it happens: an edited copy of conf/ (`--config-path`), which changes no override and so no job dir name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import CONF, TINY_RANDOM_MODEL, cli, read_jsonl
from ragqa_exp import fingerprint
from ragqa_exp.faults import EVAL_KILL_AFTER

TINY = ["experiment=tiny", "train.enabled=false", "data.max_passages=1", "eval.limit=2", "eval.batch_size=1",
        "wandb.mode=disabled", *TINY_RANDOM_MODEL]  # (4 new tokens)


def error_lines(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def edited_conf(tmp_path: Path) -> Path:
    """conf/ with one preset value changed, as a pulled commit or a hand edit would: the neftune=default preset
    (today `{}`: NeftuneConfig's alpha=5) now sets alpha 3."""
    conf = tmp_path / "conf_edited"
    shutil.copytree(CONF, conf)
    (conf / "neftune" / "default.yaml").write_text("alpha: 3\n")
    return conf


def test_parts_leave_out_what_does_not_change_results_and_name_the_differences():
    base = {"wandb": {"mode": "offline"}, "eval": {"table_max_rows": 500, "limit": 4}, "skip_existing": True,
            "train": {"save_steps": 50, "max_length": 1024}, "lora": {"r": 32}}
    run_only = json.loads(json.dumps(base))
    run_only.update(wandb={"mode": "disabled"}, skip_existing=False)
    run_only["eval"]["table_max_rows"], run_only["train"]["save_steps"] = 10, 0
    args = ({"device": "cpu"}, {"train": "k1"}, "rows1", {"torch": "2.13"})
    same = fingerprint.parts(base, *args)
    assert fingerprint.digest(fingerprint.parts(run_only, *args)) == fingerprint.digest(same)
    changed = json.loads(json.dumps(base))
    changed["lora"]["r"], changed["eval"]["limit"] = 16, 8
    other = fingerprint.parts(changed, {"device": "cuda"}, {"train": "k2"}, "rows1", {"torch": "2.14"})
    assert fingerprint.digest(other) != fingerprint.digest(same)
    assert fingerprint.differences(same, other) == 'eval.limit: 4 → 8; lora.r: 32 → 16; resolved.device: "cpu" → "cuda" (+2 more)'
    with pytest.raises(fingerprint.FingerprintMismatch, match=r"^m\.json was made by a different setup: eval\.limit.*; to run it fresh: X$"):
        fingerprint.check(fingerprint.digest(same), same, fingerprint.digest(other), other, "m.json", "X")
    fingerprint.check(fingerprint.digest(same), same, fingerprint.digest(same), same, "m.json", "X")  # matches: no error
    with pytest.raises(fingerprint.FingerprintMismatch, match="recorded no fingerprint"):
        fingerprint.check(None, None, fingerprint.digest(same), same, "m.json", "X")


@pytest.mark.slow
def test_a_changed_default_rerun_into_a_finished_sweep_is_not_served_the_old_results(tmp_path, empty_cache):
    sweep = tmp_path / "sweep"
    args = [*TINY, f"cache_dir={empty_cache}", f"hydra.sweep.dir={sweep}", "neftune=default,off", "-m"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(jobs) == 2
    default_job, off_job = jobs  # 0_neftune=default..., 1_neftune=off...
    before = {j: read_json(j / "metrics.json") for j in jobs}
    assert all(len(m["fingerprint"]) == 16 and m["fingerprint_parts"]["config"]["neftune"] for m in before.values())
    assert read_json(default_job / "status.json")["fingerprint"] == before[default_job]["fingerprint"]

    # the preset's alpha changed (not an override: the job dirs keep their names): the neftune=default job fails
    # alone with one line naming the change; the neftune=off job is unchanged and still skipped
    conf = edited_conf(tmp_path)
    r = cli("--config-path", str(conf), *args)
    assert r.returncode == 1, r.stderr[-3000:]
    status = read_json(default_job / "status.json")
    assert status["status"] == "failed" and status["error_type"] == "FingerprintMismatch"
    assert "neftune.alpha: 5.0 → 3.0" in status["error"] and "skip_existing=false" in status["error"], status["error"]
    assert read_json(off_job / "status.json")["status"] == "ok"
    assert {j: read_json(j / "metrics.json") for j in jobs} == before  # nothing recomputed, nothing served
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == sorted(j.name for j in jobs)  # no new job dirs

    # the same job run alone: exit 2, one line
    r = cli("--config-path", str(conf), *TINY, f"cache_dir={empty_cache}", f"hydra.run.dir='{default_job}'",
            "neftune=default")
    assert r.returncode == 2 and len(error_lines(r)) == 1, r.stderr[-3000:]
    assert f"{default_job}/metrics.json was made by a different setup: neftune.alpha: 5.0 → 3.0" in error_lines(r)[0]

    # the unchanged config is still skipped (same metrics.json, untouched)
    stamps = {j: (j / "metrics.json").stat().st_mtime_ns for j in jobs}
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {j: (j / "metrics.json").stat().st_mtime_ns for j in jobs} == stamps
    assert (r.stdout + r.stderr).count("job already done, skipping") == 2  # a sweep logs to stdout

    # and skip_existing=false runs the changed job fresh, recording its new fingerprint
    r = cli("--config-path", str(conf), *TINY, f"cache_dir={empty_cache}", f"hydra.run.dir='{default_job}'",
            "neftune=default", "skip_existing=false")
    assert r.returncode == 0, r.stderr[-3000:]
    after = read_json(default_job / "metrics.json")
    assert after["fingerprint"] != before[default_job]["fingerprint"]
    assert after["fingerprint_parts"]["config"]["neftune"]["alpha"] == 3.0


@pytest.mark.slow
def test_a_killed_eval_resumes_only_under_the_same_fingerprint(tmp_path, empty_cache):
    job = tmp_path / "job"
    args = [*TINY, "eval.limit=3", f"cache_dir={empty_cache}", f"hydra.run.dir={job}"]
    r = cli(*args, env={EVAL_KILL_AFTER: "1"})
    assert r.returncode == 1 and "killed by SIGKILL" in r.stderr, r.stderr[-3000:]
    assert len(read_jsonl(job / "predictions.partial.jsonl")) == 1
    recorded = read_json(job / fingerprint.PARTIAL_FINGERPRINT)["fingerprint"]

    conf = edited_conf(tmp_path)  # another setup: its answers must not be mixed with the partial ones
    r = cli("--config-path", str(conf), *args)
    assert r.returncode == 2 and len(error_lines(r)) == 1, r.stderr[-3000:]
    assert f"{job}/predictions.partial.jsonl was made by a different setup: neftune.alpha: 5.0 → 3.0" in error_lines(r)[0]
    assert len(read_jsonl(job / "predictions.partial.jsonl")) == 1
    assert read_json(job / fingerprint.PARTIAL_FINGERPRINT)["fingerprint"] == recorded

    # skip_existing=false: the partial answers are dropped and the evaluation starts afresh
    r = cli("--config-path", str(conf), *args, "skip_existing=false")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval: resuming" not in r.stderr
    metrics = read_json(job / "metrics.json")
    assert metrics["eval_resumed_items"] == 0 and metrics["n"] == 3 and metrics["fingerprint"] != recorded
    assert not (job / fingerprint.PARTIAL_FINGERPRINT).exists() and not (job / "predictions.partial.jsonl").exists()


def test_the_eval_plan_held_to_on_resume_leaves_out_counts_and_packed_sizes():
    from ragqa_exp.evaluate import plan_choices

    class Facts:
        def __init__(self, plan):
            self.plan = plan

        def run_facts(self):
            return {"eval_plan": self.plan, "eval_oom_retries": 0}

    canonical = {"batch_plan": "canonical", "kv_cache": "graph", "decode_graphs_made": 3, "max_batch_tokens": 65536,
                 "max_rows": 256}
    assert plan_choices(Facts(canonical)) == {"batch_plan": "canonical", "kv_cache": "graph", "max_batch_tokens": 65536,
                                              "max_rows": 256}  # a canonical plan's sizes decide its shapes
    packed = {"batch_plan": "packed", "kv_cache": "dynamic", "max_batch_tokens": 31000, "max_rows": 64,
              "max_batch_tokens_requested": None}
    assert plan_choices(Facts(packed)) == {"batch_plan": "packed", "kv_cache": "dynamic",
                                           "max_batch_tokens_requested": None}  # sized by the free memory
    assert plan_choices(Facts(None)) == {}  # an API backend


@pytest.mark.slow
def test_a_killed_eval_resumes_only_under_the_same_eval_plan(tmp_path, empty_cache):
    """What `auto` resolved to at load (eval.kv_cache, eval.elementwise) is not in the fingerprint: an upgrade
    (here: the recorded plan edited, as an older version's `auto` would have resolved it) must not mix decodes."""
    job = tmp_path / "job"
    args = [*TINY, "eval.limit=3", f"cache_dir={empty_cache}", f"hydra.run.dir={job}"]
    r = cli(*args, env={EVAL_KILL_AFTER: "1"})
    assert r.returncode == 1 and "killed by SIGKILL" in r.stderr, r.stderr[-3000:]
    plan_file = job / fingerprint.PARTIAL_PLAN
    plan = read_json(plan_file)
    assert plan["kv_cache"] == "dynamic" and plan["kv_cache_requested"] == "auto" and plan["elementwise"] == "eager"
    plan_file.write_text(json.dumps({**plan, "kv_cache": "graph"}), encoding="utf-8")

    r = cli(*args)
    assert r.returncode == 2 and len(error_lines(r)) == 1, r.stderr[-3000:]
    assert (f"{job}/predictions.partial.jsonl was answered under another eval plan: kv_cache: \"graph\" → \"dynamic\"; "
            "to run it fresh: skip_existing=false") in error_lines(r)[0]
    assert len(read_jsonl(job / "predictions.partial.jsonl")) == 1

    r = cli(*args, "skip_existing=false")  # the same fingerprint: the eval drops the partial answers itself
    assert r.returncode == 0, r.stderr[-3000:]
    assert "another eval plan" in r.stderr and "eval: resuming" not in r.stderr
    metrics = read_json(job / "metrics.json")
    assert metrics["eval_resumed_items"] == 0 and metrics["n"] == 3 and metrics["eval_plan"]["kv_cache"] == "dynamic"
    assert not plan_file.exists() and not (job / "predictions.partial.jsonl").exists()
