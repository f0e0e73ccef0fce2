"""Shared test helpers: compose the real Hydra config, run the real CLI, check a job dir; one converted
embedded model for the whole session."""
from __future__ import annotations

import json
import os
import resource
import time
import subprocess
import sys
from pathlib import Path

import pytest

# Before torch is imported (OpenMP reads it once), here and in every process the tests start: the suite runs
# more processes than there are cores (xdist workers, each job's stage processes), and OpenMP threads that
# spin while they wait take the cores the other processes need. Passive waiting measured 1.7x the throughput of
# three 2-thread matmul loops on the 2-core CI machine (0.9x for one alone).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The test processes hold models and quantize in-process, as a stage process does: full garbage collections as
# rarely as there (ragqa_exp/isolation.py, FULL_COLLECTION_EVERY).
import gc  # noqa: E402

from ragqa_exp.isolation import FULL_COLLECTION_EVERY  # noqa: E402

gc.set_threshold(*gc.get_threshold()[:2], FULL_COLLECTION_EVERY)

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

# One cache for the test session (the embedded model is converted once, ~1 min); CI points it at a fresh dir.
os.environ.setdefault("RAGQA_CACHE_DIR", str(Path(os.environ.get("RAGQA_TEST_CACHE", "/tmp/ragqa_test_cache"))))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))

# A model for tests of the job's plumbing (faults, resume, fingerprints, sweeps, launchers), where what is checked
# does not depend on the model: random weights, a few hundred thousand parameters, a character tokenizer
# (model.source=random_init, built into the job's cache in a second): seconds per stage on a CPU, where the
# embedded model's train stage takes ~20 s. The model-facing tests (answers, batch invariance, quantization
# fidelity, the quant sweep) keep the embedded model.
TINY_RANDOM_MODEL = [
    "model=llama2_7b_shapes", "model.init.hidden_size=64", "model.init.intermediate_size=128",
    "model.init.num_hidden_layers=1", "model.init.num_attention_heads=2", "model.init.num_key_value_heads=2",
    "model.init.vocab_size=512", "eval.max_new_tokens=4",
]


def compose(overrides: list[str] | None = None):
    """The composed config, exactly as `python -m ragqa_exp <overrides>` would build it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from ragqa_exp.config_store import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides or [])


def run_config(overrides: list[str] | None = None):
    """The typed, range-checked RunConfig of those overrides."""
    from ragqa_exp.config import as_run_config

    return as_run_config(compose(overrides))


def cli(*args: str, timeout: int = 1800, env: dict | None = None, module: str = "ragqa_exp") -> subprocess.CompletedProcess:
    """`python -m ragqa_exp ARGS` (or another module) from the repo root, as a user would type it."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def check_job_dir(job: Path, n: int) -> dict:
    """A finished CPU job: every metrics.json field, numbers consistent with predictions.jsonl."""
    from ragqa_exp.record import FIELDS

    metrics = json.loads((job / "metrics.json").read_text(encoding="utf-8"))
    assert set(FIELDS) <= set(metrics), set(FIELDS) - set(metrics)
    assert metrics["n"] == n and metrics["n_failed"] == 0
    assert metrics["partial_match"] >= metrics["exact_match"]
    assert metrics["eval_seconds"] > 0 and metrics["latency_ms_p95"] >= metrics["latency_ms_p50"] > 0
    assert metrics["gpu_mem_load_mib"] is None and metrics["gpu_mem_unavailable_reason"]  # CPU run
    assert metrics["rss_peak_mib"] > 100 and metrics["pid"] != os.getpid()
    preds = read_jsonl(job / "predictions.jsonl")
    assert len(preds) == n and not (job / "predictions.partial.jsonl").exists()
    for key in ("exact", "partial", "exact_normalized", "partial_normalized"):
        metric = key.replace("exact", "exact_match").replace("partial", "partial_match")
        assert sum(p[key] for p in preds) / n == pytest.approx(metrics[metric], abs=1e-4), key
    assert metrics["prompt_tokens"] == sum(p["prompt_tokens"] for p in preds) > 0
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "ok" and status["pid"] == metrics["pid"]
    return metrics


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["RAGQA_CACHE_DIR"])


@pytest.fixture(scope="session")
def base_model_dir(cache_dir) -> Path:
    """The embedded model converted to safetensors (the real default model)."""
    from ragqa_exp.base_model import embedded_model_dir

    return embedded_model_dir(run_config().model, cache_dir)


@pytest.fixture
def empty_cache(tmp_path) -> Path:
    """An empty stage cache for jobs on TINY_RANDOM_MODEL, which build their base model in a second: a job run with
    `cache_dir=<it>` trains and quantizes from scratch, and nothing waits for the session's converted embedded
    model (~30 s at the start of a worker)."""
    return tmp_path / "cache"


def linked_cache(cache: Path, base_model_dir: Path, exist_ok: bool = False) -> Path:
    """`cache`, a new stage cache holding only a link to the converted base model (`exist_ok`: or the one that
    another xdist worker of this session made)."""
    (cache / "models").mkdir(parents=True, exist_ok=exist_ok)
    link = cache / "models" / base_model_dir.name
    try:
        link.symlink_to(base_model_dir, target_is_directory=True)
    except FileExistsError:
        if not (exist_ok and link.resolve() == base_model_dir.resolve()):
            raise
    return cache


# Fixtures of the session's trained and quantized model (tests/quantized_fixtures.py): the tests that use them
# share one xdist group, so that one worker builds them once.
QUANTIZED_FIXTURES = {"quantized_models", "shared_cache", "tiny_trained"}
QUANTIZED_GROUP = "quantized"


def xdist_group(item) -> str:
    """The worker group of a test under `pytest -n N --dist loadgroup` (README): the tests of the session's
    quantized models by variant (`quantized-awq`: one worker loads it and its tests run beside the other
    variants'), the others of those files by file; every other test with the rest of its file (so a module
    fixture is built once)."""
    file = item.nodeid.split("::")[0]
    if QUANTIZED_FIXTURES & set(getattr(item, "fixturenames", ())):
        callspec = getattr(item, "callspec", None)
        variant = callspec.params.get("variant") if callspec is not None else None
        return f"{QUANTIZED_GROUP}-{variant}" if isinstance(variant, str) else f"{QUANTIZED_GROUP}-{file}"
    return file


# The order xdist hands out groups (`--dist loadgroup`; its reordering by test count is turned off in
# pytest_configure), longest first as measured (CPU seconds per group of a CI run, RAGQA_TEST_CPU_LOG): one worker
# starts on the gptq group, which trains the session's model, while the other runs test_faults.py, which needs
# none of it; the quant sweep after the variants whose artifacts it reuses; the Ray/SLURM tests, which mostly
# wait, beside CPU-bound groups; then every other group, quantized ones first, in file order.
GROUP_ORDER = (f"{QUANTIZED_GROUP}-gptq", "tests/test_faults.py", f"{QUANTIZED_GROUP}-bnb-nf4", "tests/test_e2e.py",
               f"{QUANTIZED_GROUP}-awq", f"{QUANTIZED_GROUP}-bnb-int8", "tests/test_launchers.py",
               f"{QUANTIZED_GROUP}-tests/test_e2e.py",
               "tests/test_fingerprint.py", "tests/test_eval.py", "tests/test_random_model.py",
               f"{QUANTIZED_GROUP}-tests/test_quant_fidelity.py")


def group_rank(group: str) -> tuple[int, int]:
    if group in GROUP_ORDER:
        return 0, GROUP_ORDER.index(group)
    return (1 if group.startswith(QUANTIZED_GROUP) else 2), 0


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist: hand out groups in collection order (GROUP_ORDER)
        config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the marks to name each test's group
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    items.sort(key=lambda item: group_rank(xdist_group(item)))  # stable: file order within a rank
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine; see benchmarks/)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With RAGQA_TEST_CPU_LOG=<file>: one JSON line per test (setup, call and teardown) with its wall seconds
    and the CPU seconds it cost, its own and its finished child processes' (CLI jobs and their stage
    processes) — the suite on 2 cores is bound by CPU, which `--durations` (wall time, inflated by whatever
    ran beside the test) does not show. `python tools/test_cpu.py <file>` sums and ranks them."""
    log = os.environ.get("RAGQA_TEST_CPU_LOG")
    if not log:
        yield
        return

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    t0, c0 = time.perf_counter(), cpu()
    yield
    row = {"test": item.nodeid, "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(cpu() - c0, 2),
           "worker": os.environ.get("PYTEST_XDIST_WORKER", "master")}
    with open(log, "a", encoding="utf-8") as fh:  # one short append per test: whole lines from every worker
        fh.write(json.dumps(row) + "\n")
