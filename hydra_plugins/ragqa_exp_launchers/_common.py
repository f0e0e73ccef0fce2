"""What the ray and slurm launchers share: the extra check, the per-job record, failure collection.

(A leading underscore keeps Hydra's plugin scan from importing this module at every start.)"""
from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RECORD = "launcher.json"


def require(launcher: str, extra: str, modules: Sequence[str]) -> None:
    """Raise the one-line user error when the launcher's extra is not installed."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as ex:
            missing = f"{type(ex).__name__}: {ex}"
            break
    else:
        return
    from ragqa_exp.errors import DependencyError

    log.debug("hydra/launcher=%s: %s", launcher, missing)
    # raised outside the except block: the entrypoint prints an error's whole context chain on its one line
    raise DependencyError(f"hydra/launcher={launcher} needs the {extra} extra: pip install -e '.[{extra}]'")


def job_dir_of(sweep_config: DictConfig) -> Path:
    """The job's output dir as Hydra's run_job will make it (sweep.dir/sweep.subdir), seen from the driver."""
    sweep_dir = OmegaConf.select(sweep_config, "hydra.sweep.dir")
    subdir = OmegaConf.select(sweep_config, "hydra.sweep.subdir")
    return Path(os.path.abspath(os.path.join(str(sweep_dir), str(subdir))))


def _where(launcher: str) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "launcher": launcher, "pid": os.getpid(), "hostname": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if launcher == "ray":
        try:
            import ray

            ctx = ray.get_runtime_context()
            rec["ray"] = {"node_id": ctx.get_node_id(), "task_id": ctx.get_task_id(),
                          "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
        except Exception as ex:  # noqa: BLE001  the record is informative only
            rec["ray"] = {"error": f"{type(ex).__name__}: {ex}"}
    else:
        keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME",
                "SLURM_JOB_PARTITION", "SLURM_CPUS_PER_TASK", "SLURM_JOB_GPUS")
        rec["slurm"] = {k.lower(): os.environ[k] for k in keys if k in os.environ}
    return rec


class RecordedTask:
    """The Hydra task function as the launcher runs it in the job's own process: it first writes
    `<job>/launcher.json` (pid, host, CUDA_VISIBLE_DEVICES, Ray/SLURM ids), then runs the job."""

    def __init__(self, task_function: Callable[[DictConfig], Any], launcher: str) -> None:
        self.task_function = task_function
        self.launcher = launcher

    def __call__(self, cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig

        from ragqa_exp.fsutil import write_json_atomic

        write_json_atomic(Path(HydraConfig.get().runtime.output_dir) / RECORD, _where(self.launcher))
        try:
            return self.task_function(cfg)
        finally:
            # Stop wandb's service process now, while the job still runs: a Ray worker that exits after its
            # task (max_calls=1) otherwise races wandb's atexit teardown ("ConnectionResetError: Connection lost").
            wandb = sys.modules.get("wandb")
            if wandb is not None and hasattr(wandb, "teardown"):
                try:
                    wandb.teardown()
                except Exception as ex:  # noqa: BLE001  the job's results are written already
                    log.warning("wandb.teardown() after the job: %s", ex)


def _first_lines(ex: BaseException, n: int = 2) -> str:
    lines = [ln.strip() for ln in str(ex).splitlines() if ln.strip()]
    return f"{type(ex).__name__}: " + " ".join(lines[:n]) if lines else type(ex).__name__


def collect(launcher: str, results: Sequence[tuple[Path, JobReturn | None, BaseException | None]]) -> list[JobReturn]:
    """Put this sweep's failures into ragqa_exp.job.FAILED (the entrypoint lists them and exits 1), as the basic
    launcher does in-process. A job that Ray or SLURM ended before it wrote status.json (killed, timed out,
    worker crash) gets a status.json written here. Every JobReturn is handed back as completed, so that Hydra's
    sweeper does not re-raise a job's error and stop listing the others."""
    from ragqa_exp.fsutil import write_json_atomic
    from ragqa_exp.job import FAILED, Failure

    out: list[JobReturn] = []
    for job_dir, ret, err in results:
        if ret is not None and ret.hydra_cfg is not None:
            job_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        if ret is not None and ret.status == JobStatus.FAILED:
            err, ret = ret._return_value, None  # noqa: SLF001  the job's own exception, not re-raised
        msg = None
        if err is not None:
            msg = f"{launcher} job did not finish: {_first_lines(err)}"
            if not (job_dir / "metrics.json").is_file():
                write_json_atomic(job_dir / "status.json", {
                    "status": "failed", "error": msg, "error_type": type(err).__name__, "launcher": launcher,
                })
        else:
            status_file = job_dir / "status.json"
            try:
                status = json.loads(status_file.read_text(encoding="utf-8")) if status_file.is_file() else None
            except Exception as ex:  # noqa: BLE001
                status = {"status": "failed", "error": f"unreadable {status_file}: {ex}"}
            if status is None:
                msg = f"{launcher} job wrote no {status_file}"
            elif status.get("status") != "ok":
                msg = str(status.get("error") or status)
        if msg is not None and all(f.job_dir != str(job_dir) for f in FAILED):
            log.error("job %s failed: %s", job_dir, msg)
            FAILED.append(Failure(str(job_dir), msg))
        out.append(ret if ret is not None else JobReturn(status=JobStatus.COMPLETED, working_dir=str(job_dir)))
    return out
