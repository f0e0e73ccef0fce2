"""Scale-out launchers: `hydra/launcher=ray` (a local Ray, one fresh worker process per job) and
`hydra/launcher=slurm` (a real single-node SLURM from tests/slurm_cluster.py), each running real 2-job sweeps
of the embedded model; plus their configs, the one-line error without the extra, and failure collection."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import CONF, REPO, TINY_RANDOM_MODEL
from slurm_cluster import SlurmCluster, unavailable
from test_e2e import TINY, check_job_dir
from ragqa_exp.wandb_offline import find_run_dirs, read_run

# TINY of test_e2e on conftest.TINY_RANDOM_MODEL (what a launcher does does not depend on the model), smaller
# still: 2 train steps, 2 questions, 4 new tokens. `eval.batch_size` is swept: it leaves the training key alone,
# so two jobs run one after the other share one training stage.
_MINE = {"train.max_steps": "2", "eval.limit": "2", "eval.max_new_tokens": "4"}
LAUNCH_TINY = [o for o in [*TINY, *TINY_RANDOM_MODEL] if o.split("=")[0] not in {*_MINE, "eval.batch_size"}] + \
    [f"{k}={v}" for k, v in _MINE.items()]
# A seed of this session only: its training stage is not in the cache yet, so the first job trains.
SEED = random.randrange(10**6, 10**7)
N_EVAL = 2


def run_cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python -m ragqa_exp ARGS` (as test_e2e.cli), with the driver's pid in `.pid`."""
    env = {**(env or os.environ), "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    with subprocess.Popen([sys.executable, "-m", "ragqa_exp", *args], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    r.pid = p.pid
    return r


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: int(p.name.split("_")[0]))


def record(job: Path) -> dict:
    return json.loads((job / "launcher.json").read_text(encoding="utf-8"))


def check_wandb_closed(job: Path) -> None:
    runs = find_run_dirs(job / "wandb")
    assert len(runs) == 1 and read_run(runs[0]).exit_code == 0, runs


@pytest.fixture(scope="module")
def train_cache_cleanup(cache_dir):
    """Training stages made with this session's SEED are removed at the end (they are ~1 GB each)."""
    keys: set[str] = set()
    yield keys
    for key in keys:
        shutil.rmtree(cache_dir / "train" / key, ignore_errors=True)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{p.name}: {cmd[:200]}")
    return found


# ---------------------------------------------------------------- configs and errors (fast)

def _hydra_launcher(name: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ragqa_exp.config_store import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    return cfg.hydra.launcher, OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def test_launcher_configs():
    ray, raw = _hydra_launcher("ray")
    assert ray._target_ == "hydra_plugins.ragqa_exp_launchers.ray_launcher.RayLauncher"
    assert raw["ray"]["remote"] == {"max_calls": 1, "num_gpus": "auto", "num_cpus": 1}
    init = raw["ray"]["init"]
    assert init["address"] is None and init["include_dashboard"] is False and init["object_store_memory"] <= 100 * 2**20

    slurm, raw = _hydra_launcher("slurm")
    assert slurm._target_ == "hydra_plugins.ragqa_exp_launchers.slurm_launcher.SlurmLauncher"
    assert raw["submitit_folder"].startswith("${hydra.sweep.dir}/")  # SLURM's files live in the sweep dir
    assert raw["gpus_per_node"] == 1 and raw["setup"] == [] and raw["array_parallelism"] > 1
    upstream = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.config", reason="needs the slurm extra")
    from omegaconf import OmegaConf

    # every field of hydra-submitit-launcher's SlurmQueueConf, and no other (our yaml is its full schema)
    assert set(raw) == set(OmegaConf.structured(upstream.SlurmQueueConf)), set(raw) ^ set(OmegaConf.structured(upstream.SlurmQueueConf))


def _site_without(root: Path, hidden: set[str]) -> Path:
    """A copy (symlinks) of site-packages without the `hidden` packages: an environment lacking the extras."""
    site = root / "site"
    (site / "hydra_plugins").mkdir(parents=True)
    for lib in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        for entry in Path(lib).iterdir():
            top = entry.name.split("-")[0].split(".")[0].lower()
            if entry.name == "hydra_plugins":
                for plugin in entry.iterdir():
                    if plugin.name not in hidden and not (site / "hydra_plugins" / plugin.name).exists():
                        (site / "hydra_plugins" / plugin.name).symlink_to(plugin)
            elif top not in hidden and not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry)
    return site


def test_missing_extra_is_one_line_error(tmp_path):
    """Without the extras installed, `hydra/launcher=ray|slurm -m` is one line + exit 2, and no job starts."""
    site = _site_without(tmp_path, {"ray", "submitit", "hydra_ray_launcher", "hydra_submitit_launcher"})
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{site}", "PYTHONWARNINGS": "ignore"}
    for name in ("ray", "slurm"):
        sweep = tmp_path / name
        r = subprocess.run([sys.executable, "-S", "-m", "ragqa_exp", "-m", f"hydra/launcher={name}", "eval.limit=1",
                            f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
        assert r.stderr.strip() == f"error: hydra/launcher={name} needs the {name} extra: pip install -e '.[{name}]'", r.stderr[-2000:]
        assert not sweep.exists()


def test_ray_init_and_remote_options(monkeypatch):
    """What reaches ray.init / ray.remote: a small local Ray; with an address only what joining accepts;
    `num_gpus: auto` = 1 GPU per job when the cluster has GPUs, else 0 (no GPU needed to check this)."""
    ray = pytest.importorskip("ray", reason="needs the ray extra")
    from hydra_plugins.ragqa_exp_launchers.ray_launcher import RayLauncher

    launcher_cfg, _ = _hydra_launcher("ray")
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    launcher = RayLauncher(ray=launcher_cfg.ray)
    assert launcher._start_ray() is True
    assert calls[-1] == {"include_dashboard": False, "object_store_memory": 78643200, "logging_level": "warning",
                         "log_to_driver": True, "_node_ip_address": "127.0.0.1"}

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 4.0})
    assert launcher._remote_options() == {"max_calls": 1, "num_gpus": 1, "num_cpus": 1}
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert launcher._remote_options() == {"max_calls": 1, "num_gpus": 0, "num_cpus": 1}

    # joining a running cluster: no local-only init keys; this shell's RAGQA_*/WANDB_*/HF_* reach the jobs
    launcher_cfg.ray.init.address = "ray://head:10001"
    launcher_cfg.ray.init.num_cpus = 8
    launcher._start_ray()
    assert calls[-1] == {"address": "ray://head:10001", "logging_level": "warning", "log_to_driver": True}
    monkeypatch.setenv("RAGQA_CACHE_DIR", "/shared/cache")
    monkeypatch.setenv("WANDB_MODE", "offline")
    remote = launcher._remote_options()
    assert remote["runtime_env"]["env_vars"]["RAGQA_CACHE_DIR"] == "/shared/cache"
    assert remote["runtime_env"]["env_vars"]["WANDB_MODE"] == "offline"
    assert not any(k.startswith(("PATH", "HOME")) for k in remote["runtime_env"]["env_vars"])
    launcher_cfg.ray.remote.num_gpus = 2  # an explicit number is passed as it is
    assert launcher._remote_options()["num_gpus"] == 2


def test_failures_are_collected_in_the_driver(tmp_path, monkeypatch):
    """A job's failed status.json, a job without one, and a job Ray/SLURM killed all reach the failure list
    that the entrypoint prints (exit 1); the killed one gets a status.json."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra_plugins.ragqa_exp_launchers._common import collect

    from ragqa_exp import job

    monkeypatch.setattr(job, "FAILED", [])
    ok, failed, silent, killed, raised = (tmp_path / n for n in ("ok", "failed", "silent", "killed", "raised"))
    for d in (ok, failed, silent, killed, raised):
        d.mkdir()
    (ok / "status.json").write_text(json.dumps({"status": "ok"}))
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "data.train_path is not set"}))
    done = JobReturn(status=JobStatus.COMPLETED)
    out = collect("slurm", [
        (ok, done, None), (failed, done, None), (silent, done, None),
        (killed, None, RuntimeError("Job 7_1 has not produced any output (state: TIMEOUT)\nlog...")),
        (raised, JobReturn(status=JobStatus.FAILED, _return_value=ValueError("boom")), None),  # raised in the task
    ])
    assert [r.status for r in out] == [JobStatus.COMPLETED] * 5  # Hydra's sweeper must not re-raise and stop
    assert all(isinstance(f, job.Failure) for f in job.FAILED)  # what the entrypoint reads (cli.guarded)
    assert {f.job_dir: f.message for f in job.FAILED} == {
        str(failed): "data.train_path is not set",
        str(silent): f"slurm job wrote no {silent / 'status.json'}",
        str(killed): "slurm job did not finish: RuntimeError: Job 7_1 has not produced any output (state: TIMEOUT) log...",
        str(raised): "slurm job did not finish: ValueError: boom",
    }
    for d in (killed, raised):
        assert json.loads((d / "status.json").read_text())["status"] == "failed"


# ---------------------------------------------------------------- Ray (real sweeps)

@pytest.mark.slow
def test_ray_sweep_runs_each_job_in_a_fresh_worker(tmp_path, train_cache_cleanup):
    pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rq-ray-", dir="/tmp"))  # short: Ray puts unix sockets in it
    try:
        sweep = tmp_path / "sweep"
        # 2 CPU slots, 2 per job: one job at a time, so the second reuses the first one's training stage
        r = run_cli("-m", "hydra/launcher=ray", "hydra.launcher.ray.init.num_cpus=2",
                    "hydra.launcher.ray.remote.num_cpus=2", f"hydra.launcher.ray.init._temp_dir={ray_tmp}",
                    *LAUNCH_TINY, f"seed={SEED}", "eval.batch_size=1,2", f"hydra.sweep.dir={sweep}")
        assert r.returncode == 0, r.stderr[-3000:]
        jobs = job_dirs(sweep)
        assert len(jobs) == 2
        metrics = [check_job_dir(j, N_EVAL) for j in jobs]
        train_cache_cleanup.update(m["train_key"] for m in metrics)
        for j in jobs:
            check_wandb_closed(j)
        recs = [record(j) for j in jobs]
        assert all(rec["launcher"] == "ray" for rec in recs)
        if torch.cuda.is_available():  # num_gpus: auto -> one GPU per job, which Ray makes the job's only visible one
            assert all(len(rec["ray"]["gpu_ids"]) == 1 and rec["cuda_visible_devices"] == rec["ray"]["gpu_ids"][0]
                       for rec in recs), recs
        else:
            assert [rec["ray"]["gpu_ids"] for rec in recs] == [[], []]
        pids = [rec["pid"] for rec in recs]
        assert len(set(pids)) == 2 and r.pid not in pids, pids  # each job in its own fresh worker process
        # TODO(pipeline): assert metrics["pid"] == launcher.json's pid once the pipeline records it
        assert metrics[0]["train_key"] == metrics[1]["train_key"]
        assert sorted(m["reused"] for m in metrics) == [[], ["train"]]  # trained once
        # Ray ran with its files in ray_tmp, and nothing of it is left running
        assert list(ray_tmp.glob("session_*/logs")), list(ray_tmp.iterdir())
        deadline = time.time() + 15
        while _processes_mentioning(str(ray_tmp)) and time.time() < deadline:
            time.sleep(0.5)
        assert not _processes_mentioning(str(ray_tmp))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_sweep_joins_a_running_cluster(tmp_path):
    """`hydra.launcher.ray.init.address=` runs the jobs on a cluster started with `ray start` (token auth on, as
    Ray 2.60 does when a token exists), whose environment lacks this shell's RAGQA_CACHE_DIR."""
    pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
    home = tmp_path / "home"  # the cluster's and the driver's ~ (~/.ray/auth_token), so as not to touch the real one
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rq-rayc-", dir="/tmp"))
    ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    cluster_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGQA_", "WANDB_", "RAY_"))}
    cluster_env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0",
                       PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    subprocess.run([*ray_cli, "get-auth-token", "--generate"], env=cluster_env, capture_output=True, check=True, timeout=120)
    assert (home / ".ray" / "auth_token").is_file()
    port = _free_port()
    head = subprocess.Popen([*ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={ray_tmp}"],
                            env=cluster_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        r = run_cli("-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
                    "train.enabled=false", "eval.limit=1", *TINY_RANDOM_MODEL, "eval.max_new_tokens=2",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    env={**os.environ, "HOME": str(home)}, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        [job] = job_dirs(tmp_path / "sweep")
        check_job_dir(job, 1)
        rec = record(job)
        assert rec["launcher"] == "ray" and rec["pid"] != r.pid
        assert not (home / ".cache" / "ragqa_exp").exists()  # the job used this shell's RAGQA_CACHE_DIR
        assert list(ray_tmp.glob("session_*/logs/worker-*"))  # the job ran in the cluster's workers
    finally:
        head.terminate()  # `ray start --block` stops the cluster's processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        deadline = time.time() + 20
        while _processes_mentioning(str(ray_tmp)) and time.time() < deadline:
            time.sleep(0.5)
        left = _processes_mentioning(str(ray_tmp))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left


@pytest.mark.slow
def test_ray_sweep_reports_a_failed_job(tmp_path):
    """A job failing inside a Ray worker is listed by the driver and the sweep exits 1, as with the basic launcher."""
    pytest.importorskip("ray", reason="needs the ray extra: pip install -e '.[ray]'")
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "hydra/launcher=ray", "data=jsonl", "train.enabled=false", "eval.limit=1",
                f"hydra.sweep.dir={sweep}")
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "1 sweep job(s) failed" in r.stderr and "data.train_path is not set" in r.stderr, r.stderr[-3000:]
    [job] = job_dirs(sweep)
    assert json.loads((job / "status.json").read_text())["status"] == "failed"
    assert record(job)["pid"] != r.pid


# ---------------------------------------------------------------- SLURM (a real single-node cluster)

@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = unavailable()
    if why:
        if os.environ.get("RAGQA_REQUIRE_SLURM") == "1":
            pytest.fail(f"RAGQA_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    root = Path(tempfile.mkdtemp(prefix="rq-slurm-", dir="/tmp"))  # short: munge's socket lives there
    cluster = SlurmCluster(root)
    try:
        cluster.start()
    except Exception as ex:  # noqa: BLE001
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        msg = f"a local SLURM (munged, slurmctld, slurmd) could not start here: {ex}"
        if os.environ.get("RAGQA_REQUIRE_SLURM") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def _files(job: Path) -> set[str]:
    return {p.name for p in job.iterdir()}


@pytest.mark.slow
def test_slurm_sweep_matches_the_basic_launcher_and_resumes(slurm, tmp_path, train_cache_cleanup):
    pytest.importorskip("submitit", reason="needs the slurm extra: pip install -e '.[slurm]'")
    sweep, basic = tmp_path / "slurm", tmp_path / "basic"
    common = [*LAUNCH_TINY, f"seed={SEED}"]
    cpus = os.cpu_count() or 1
    launcher = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.timeout_min=30"]
    # all the node's CPUs per job: the two array tasks run one after the other
    r = run_cli("-m", *launcher, f"hydra.launcher.cpus_per_task={cpus}", *common, "eval.batch_size=1,2",
                f"hydra.sweep.dir={sweep}", env=slurm.env)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    metrics = [check_job_dir(j, N_EVAL) for j in jobs]
    train_cache_cleanup.update(m["train_key"] for m in metrics)
    for j in jobs:
        check_wandb_closed(j)
    recs = [record(j) for j in jobs]
    assert [rec["launcher"] for rec in recs] == ["slurm", "slurm"]
    assert len({rec["slurm"]["slurm_array_job_id"] for rec in recs}) == 1  # one array, one task per job
    assert sorted(rec["slurm"]["slurm_array_task_id"] for rec in recs) == ["0", "1"]
    assert len({rec["pid"] for rec in recs} | {r.pid}) == 3
    assert "train" in metrics[1]["reused"] or "train" in metrics[0]["reused"]  # one training stage for both
    assert (sweep / ".submitit").is_dir()

    # the same job under the basic launcher: same files (plus launcher.json), same metric keys, same answers
    rb = run_cli("-m", *common, "eval.batch_size=1", f"hydra.sweep.dir={basic}")
    assert rb.returncode == 0, rb.stderr[-3000:]
    [bj] = job_dirs(basic)
    mb = check_job_dir(bj, N_EVAL)
    assert bj.name == jobs[0].name
    assert _files(bj) | {"launcher.json"} == _files(jobs[0])
    assert set(mb) == set(metrics[0]) and mb["train_key"] == metrics[0]["train_key"]
    preds = [[json.loads(ln)["pred"] for ln in (j / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
             for j in (bj, jobs[0])]
    assert preds[0] == preds[1]

    # resume: the same sweep again goes through SLURM (a new array) and skips both finished jobs
    stamps = [(j / "metrics.json").stat().st_mtime_ns for j in jobs]
    r2 = run_cli("-m", *launcher, "hydra.launcher.cpus_per_task=1", *common, "eval.batch_size=1,2",
                 f"hydra.sweep.dir={sweep}", env=slurm.env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert [(j / "metrics.json").stat().st_mtime_ns for j in jobs] == stamps
    assert all(json.loads((j / "status.json").read_text())["status"] == "ok" for j in jobs)
    again = {record(j)["slurm"]["slurm_array_job_id"] for j in jobs}
    assert len(again) == 1 and again != {recs[0]["slurm"]["slurm_array_job_id"]}
