"""The API baseline row: eval.backend=openai through the real `openai` client against a scripted
OpenAI-compatible server on 127.0.0.1 (tests/helpers_openai_server.py). No model: fast, except the one
slow test that runs a real `model=gemma3_270m,openai -m` sweep and its report."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, run_config
from helpers_openai_server import (ECHO_KEY_400, HOLD, OK, RATE_LIMIT, SERVER_ERROR, SLOW, FakeOpenAIServer, Script)
from ragqa_exp.backends import get_backend
from ragqa_exp.backends.openai_api import REDACTED, REQUEST_THREAD_PREFIX, require_openai, served_model_id
from ragqa_exp.data import format_prompt, load_splits
from ragqa_exp.errors import ConfigError, DependencyError, SourceError
from ragqa_exp.evaluate import PARTIAL, evaluate
from ragqa_exp.metrics import clean_prediction
from ragqa_exp.wandb_offline import find_run_dirs, read_run

KEY = "sk-test-SECRET-7f3a9c1e"  # must never appear in anything a job writes
SERVED = "fake-served-model"


@pytest.fixture(autouse=True)
def api_key_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture(scope="session")
def rows() -> list[dict]:
    return load_splits(run_config().data).validation[:12]


def replies_for(rows: list[dict]) -> dict[str, str]:
    """Right answers for even rows, a wrong one for odd rows; each followed by a second line to cut."""
    return {r["question"]: (r["answer"] if i % 2 == 0 else "まちがい") + "\n次の行" for i, r in enumerate(rows)}


def api_cfg(server: FakeOpenAIServer, *overrides: str):
    return run_config(["model=openai", f"model.base_url={server.base_url}", f"model.name={SERVED}", *overrides])


def run_eval(cfg, rows, job_dir: Path, backend=None):
    job_dir.mkdir(parents=True, exist_ok=True)
    backend = backend or get_backend(cfg.eval.backend).load(cfg, None)
    try:
        return evaluate(backend, rows, cfg.eval, cfg.data.max_passages, job_dir)
    finally:
        backend.close()


def files_containing(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# ---------------------------------------------------------------- the requests

@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_requests_carry_the_local_prompt_and_greedy_settings(endpoint, rows, tmp_path):
    """Same prompt bytes as a local model reads (chat: one user message), temperature 0, max_tokens,
    stop at newline; answers scored like a local model's, token usage summed from the server's."""
    rows = rows[:4]
    with FakeOpenAIServer(Script(replies=replies_for(rows)), KEY) as srv:
        cfg = api_cfg(srv, f"model.endpoint={endpoint}", "eval.max_new_tokens=17", "eval.concurrency=2")
        ev = run_eval(cfg, rows, tmp_path)
        path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        bodies = {e.question: e.body for e in srv.log if e.path == path}
    assert sorted(srv.asked(path)) == sorted(r["question"] for r in rows)  # each item asked once
    for r in rows:
        body = bodies[r["question"]]
        prompt = format_prompt(r["question"], r["context"], cfg.data.max_passages)
        if endpoint == "chat":
            assert body["messages"] == [{"role": "user", "content": prompt}]
        else:
            assert body["prompt"] == prompt
        assert (body["model"], body["temperature"], body["max_tokens"], body["stop"]) == (SERVED, 0, 17, ["\n"])
    replies = replies_for(rows)
    for r, p in zip(rows, ev.predictions):
        assert p["qid"] == r["qid"] and p["pred"] == clean_prediction(replies[r["question"]].split("\n")[0])
        assert p["exact"] == (p["pred"] == r["answer"]) and not p.get("failed")
    assert ev.metrics["exact_match"] == pytest.approx(sum(p["exact"] for p in ev.predictions) / len(rows), abs=1e-4)
    prompts = [format_prompt(r["question"], r["context"], cfg.data.max_passages) for r in rows]
    assert ev.metrics["prompt_tokens"] == sum(len(p) for p in prompts)  # the server counts characters
    assert ev.metrics["completion_tokens"] == sum(len(p["raw"]) for p in ev.predictions)
    assert ev.metrics["n_failed"] == 0 and all(p["latency_ms"] > 0 for p in ev.predictions)
    assert json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])["qid"] == rows[0]["qid"]


# ---------------------------------------------------------------- faults

def test_faults_end_answered_or_recorded_failed_nothing_lost(rows, tmp_path):
    """A 429, a 500 and a reply slower than the client's timeout are retried and answered; a 500 at every
    attempt and a 400 are failed items with their error (the 400's echo of the key redacted); none lost."""
    q = [r["question"] for r in rows]
    script = Script(replies=replies_for(rows),
                    faults={q[0]: [RATE_LIMIT], q[1]: [SERVER_ERROR], q[2]: [SLOW], q[3]: [ECHO_KEY_400]},
                    always_fail={q[4]})
    with FakeOpenAIServer(script, KEY, slow_s=2.0) as srv:
        cfg = api_cfg(srv, "model.request_timeout_s=0.5", "model.max_retries=2", "eval.concurrency=4")
        ev = run_eval(cfg, rows, tmp_path)
        asked = srv.asked()
    preds = ev.predictions
    assert [p["qid"] for p in preds] == [r["qid"] for r in rows]  # every item once, in order
    failed = {p["qid"]: p["error"] for p in preds if p.get("failed")}
    assert set(failed) == {rows[3]["qid"], rows[4]["qid"]}
    assert "(500)" in failed[rows[4]["qid"]] and "(400)" in failed[rows[3]["qid"]]
    assert REDACTED in failed[rows[3]["qid"]] and KEY not in failed[rows[3]["qid"]]
    attempts = {x: asked.count(x) for x in q}
    assert attempts == {**{x: 1 for x in q}, q[0]: 2, q[1]: 2, q[2]: 2, q[3]: 1, q[4]: 1 + cfg.model.max_retries}
    assert ev.metrics["n_failed"] == 2 and ev.metrics["n"] == len(rows)
    replies = replies_for(rows)
    right = [not p.get("failed") and replies[r["question"]].split("\n")[0] == r["answer"] for r, p in zip(rows, preds)]
    assert ev.metrics["exact_match"] == pytest.approx(sum(right) / len(rows), abs=1e-4)
    assert all(p["pred"] == "" and not p["exact"] for p in preds if p.get("failed"))
    assert not files_containing(tmp_path, KEY)


def test_interrupted_eval_resumes_asking_only_missing_items(rows, tmp_path):
    """Items reach predictions.partial.jsonl as their requests finish (one is still held at the server
    while others are recorded); after an interruption the rerun asks exactly the items not answered there
    (a failed one included), each once, and the final predictions hold every item once."""
    q = [r["question"] for r in rows]
    script = Script(replies=replies_for(rows), faults={q[0]: [HOLD]}, always_fail={q[1]})
    stop_after = 4

    class InterruptedAfter:  # the eval process stopped (Ctrl-C, kill) after `stop_after` answers
        name = "openai"

        def __init__(self, inner):
            self.inner, self.info = inner, inner.info

        def generate(self, prompts, max_new_tokens, stop="\n"):
            for n, item in enumerate(self.inner.generate(prompts, max_new_tokens, stop)):
                assert not srv.held_answered.is_set(), "an item was yielded only after every request finished"
                if n == stop_after:
                    raise KeyboardInterrupt
                yield item

        def close(self):
            self.inner.close()

        def __getattr__(self, name):  # the rest of the backend protocol (warmup, run_facts, ...) is the inner one's
            return getattr(self.inner, name)

    with FakeOpenAIServer(script, KEY) as srv:
        cfg = api_cfg(srv, "model.max_retries=0", "eval.concurrency=3")
        with pytest.raises(KeyboardInterrupt):
            run_eval(cfg, rows, tmp_path, InterruptedAfter(get_backend("openai").load(cfg, None)))
        srv.release.set()
        for t in threading.enumerate():  # requests in flight when it stopped end now (a killed process's die)
            if t.name.startswith(REQUEST_THREAD_PREFIX):
                t.join(timeout=30)
        partial = [json.loads(line) for line in (tmp_path / PARTIAL).read_text(encoding="utf-8").splitlines()]
        assert len(partial) == stop_after and not (tmp_path / "predictions.jsonl").exists()
        assert rows[1]["qid"] in {p["qid"] for p in partial if p.get("failed")}  # recorded as failed, not lost
        answered = {p["qid"] for p in partial if not p.get("failed")}

        srv.clear_log()
        script.always_fail.clear()
        ev = run_eval(cfg, rows, tmp_path)
        asked = srv.asked()
    missing = [r["question"] for r in rows if r["qid"] not in answered]
    assert sorted(asked) == sorted(missing)  # only the missing items, each once
    assert [p["qid"] for p in ev.predictions] == [r["qid"] for r in rows]
    assert ev.metrics["n_failed"] == 0 and ev.metrics["eval_resumed_items"] == len(answered)
    assert not (tmp_path / PARTIAL).exists()


# ---------------------------------------------------------------- errors a user fixes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_problems_are_one_line_errors(rows, tmp_path, monkeypatch):
    with FakeOpenAIServer(Script(replies=replies_for(rows)), KEY) as srv:
        auto = run_config(["model=openai", f"model.base_url={srv.base_url}"])
        assert auto.model.name == "auto" and served_model_id(auto.model) == SERVED  # the one model it lists

        cfg = api_cfg(srv)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
        with pytest.raises(ConfigError, match=r"model.api_key_env=OPENAI_API_KEY: .*refused the key \(401\)") as ex:
            served_model_id(cfg.model)
        assert "sk-wrong" not in str(ex.value)
        with pytest.raises(ConfigError, match="refused the key"):  # at eval time: the job stops, not 1 failure per item
            run_eval(cfg, rows[:3], tmp_path / "key")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)

        unknown = api_cfg(srv, "model.name=not-served")
        assert served_model_id(unknown.model) == "not-served"  # not listed: a warning, the request decides
        with pytest.raises(ConfigError, match=r"model.name='not-served': .* answered 404"):
            run_eval(unknown, rows[:3], tmp_path / "model")
    down = run_config(["model=openai", f"model.base_url=http://127.0.0.1:{free_port()}/v1"])
    with pytest.raises(SourceError, match=r"model.base_url=http://127.0.0.1:\d+/v1: no answer"):
        served_model_id(down.model)


def test_missing_client_names_the_extra(monkeypatch):
    from ragqa_exp.preflight import check_model

    monkeypatch.setitem(sys.modules, "openai", None)  # `import openai` fails as if not installed
    with pytest.raises(DependencyError, match=r"pip install -e '\.\[api\]'"):
        require_openai()
    cfg = run_config(["model=openai", "model.base_url=http://127.0.0.1:9/v1"])
    with pytest.raises(DependencyError, match=r"\.\[api\]"):
        check_model(cfg)


@pytest.mark.parametrize("overrides, message", [
    (["model.request_timeout_s=0"], "model.request_timeout_s=0"),
    (["model.max_retries=-1"], "model.max_retries=-1"),
    (["model.endpoint=responses"], "model.endpoint='responses'"),
    (["quant=bnb"], "quant=bnb with model.source=openai"),
    (["eval.backend=hf"], "eval.backend=hf with model.source=openai"),
    (["eval.concurrency=0"], "eval.concurrency=0"),
])
def test_api_config_values_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        run_config(["model=openai", *overrides])


def test_api_presets_and_a_sweep_shared_base_url(monkeypatch):
    gpt = run_config(["model=gpt35_turbo"])
    assert (gpt.model.name, gpt.model.base_url, gpt.model.api_key_env) == (
        "gpt-3.5-turbo", "https://api.openai.com/v1", "OPENAI_API_KEY")
    assert gpt.eval.backend == "openai" and gpt.model.is_api
    # one sweep sets model.base_url for its API row: the local row ignores it
    local = run_config(["model=gemma3_270m", "model.base_url=http://127.0.0.1:8000/v1"])
    assert local.eval.backend == "hf" and not local.model.is_api
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="environment variable OPENAI_API_KEY is not set"):
        run_config(["model=gpt4o_mini"])


# ---------------------------------------------------------------- the report

def test_report_pairs_the_api_row_with_the_local_unquantized_row(tmp_path):
    from test_report import flags_with_flips, write_job

    from ragqa_exp import report

    ref, api = flags_with_flips(60, 30, 3, 15)
    write_job(tmp_path, "0_model=gemma3_270m,quant=none", ["model=gemma3_270m", "quant=none"], ref,
              train_key=None, model_source="embedded_gguf")
    write_job(tmp_path, "1_model=openai,quant=none", ["model=openai", "quant=none"], api, train_key=None,
              model="gpt-x", model_source="openai", quant_kernel="api:chat", model_size_mib=None)
    rows = {r["job"]: r for r in report.collect(tmp_path)}
    api_row = rows["1_model=openai,quant=none"]
    assert api_row["ref"] == "0_model=gemma3_270m,quant=none"
    assert api_row["paired"]["exact_match"]["right_to_wrong"] == 3
    assert api_row["paired"]["exact_match"]["wrong_to_right"] == 15
    assert rows["0_model=gemma3_270m,quant=none"]["ref"] == "0_model=gemma3_270m,quant=none"


def test_api_only_sweep_compares_with_its_first_job_and_draws_no_memory_plot(tmp_path):
    from test_report import flags_with_flips, write_job

    from ragqa_exp import plots, report

    a, b = flags_with_flips(40, 20, 2, 9)
    for i, (name, flags) in enumerate([("gpt35_turbo", a), ("gpt4", b)]):
        write_job(tmp_path, f"{i}_model={name}", [f"model={name}"], flags, train_key=None, model=name,
                  model_source="openai")
    rows = report.collect(tmp_path)
    assert [r["ref"] for r in rows] == ["0_model=gpt35_turbo", "0_model=gpt35_turbo"]
    written = plots.write_plots(rows, tmp_path)
    assert [p.name for p in written] == [plots.EVAL_SECONDS_PLOT]  # the client's RSS is not the model's memory


# ---------------------------------------------------------------- a real sweep

@pytest.mark.slow
def test_sweep_puts_the_api_row_beside_the_local_row(tmp_path, rows):
    """`python -m ragqa_exp model=gemma3_270m,openai model.base_url=... -m` on the real CLI: two rows on the
    same questions, the report pairs them by qid, and the key is in nothing the sweep wrote."""
    q = [r["question"] for r in rows]
    script = Script(replies=replies_for(rows), faults={q[0]: [RATE_LIMIT], q[1]: [SERVER_ERROR]},
                    always_fail={q[2]})
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OPENAI_API_KEY": KEY}
    with FakeOpenAIServer(script, KEY) as srv:
        r = subprocess.run(
            [sys.executable, "-m", "ragqa_exp", "model=gemma3_270m,openai", f"model.base_url={srv.base_url}",
             "experiment=tiny", "train.enabled=false", "eval.max_new_tokens=8", "model.max_retries=1", f"hydra.sweep.dir={sweep}", "-m"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        asked = srv.asked()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training and quantization are skipped" in r.stderr + r.stdout
    n = 6  # experiment=tiny: eval.limit=6
    assert sorted(set(asked)) == sorted(q[:n]) and asked.count(q[2]) == 2  # 1 + model.max_retries
    rep = subprocess.run([sys.executable, "-m", "ragqa_exp.report", str(sweep)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    print(rep.stdout)  # the report's Markdown, shown with -s
    from ragqa_exp import report

    rows_by_label = {row["label"]: row for row in report.collect(sweep)}
    local, api = rows_by_label["gemma3_270m"], rows_by_label["openai"]
    assert (local["status"], api["status"]) == ("ok", "ok")
    assert (api["model"], api["model_source"], api["quant_kernel"], api["n"], api["n_failed"]) == (
        SERVED, "openai", "api:chat", n, 1)
    assert api["ref"] == local["job"] and local["ref"] == local["job"]
    assert "exact_match" in api["paired"] and api["not_paired"] is None  # same qids, paired
    assert api["prompt_tokens"] > 0 and api["train_key"] is None and api["model_size_mib"] is None
    run = read_run(find_run_dirs(sweep / api["job"] / "wandb")[0])
    assert run.summary["exact_match"] == pytest.approx(api["exact_match"]) and run.summary["n_failed"] == 1
    assert len(run.tables["eval/mismatches"]["data"]) == api["mismatch_rows_logged"] == round(n * (1 - api["exact_match"]))
    assert run.config["model"]["api_key_env"] == "OPENAI_API_KEY"
    assert not files_containing(sweep, KEY)
