"""One Hydra job around `pipeline.run`: job dir, wandb naming, status.json, failure isolation.

A failed job writes `status.json` {"status": "failed", "error": one line, ...}; in a sweep the next job
goes on. Failures are collected in FAILED; the entrypoint prints them (one line each) and exits non-zero.
Stage processes that crash (a signal, an OOM kill) or raise a bug fail their job the same way."""
from __future__ import annotations

import logging
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ragqa_exp.errors import one_line, user_error
from ragqa_exp.fsutil import write_json_atomic
from ragqa_exp.isolation import StageBug, StageCrash, StageStopped

log = logging.getLogger(__name__)


class JobStopped(BaseException):
    """The job process got SIGTERM during a stage (StageStopped): its status is written, and the sweep ends
    here (a BaseException: Hydra's launcher does not catch it and start the next job)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class Failure(NamedTuple):
    job_dir: str  # "" for a single run
    message: str  # one line
    user_error: bool = False  # bad input (exit 2 for a single run), not a crash or a bug


FAILED: list[Failure] = []


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def run_job(cfg: DictConfig) -> dict | None:
    from ragqa_exp.pipeline import run
    from ragqa_exp.tracking import override_tags, sweep_group

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    name = f"{hc.job.num}:{hc.job.override_dirname or 'defaults'}" if multirun else (hc.job.override_dirname or "defaults")
    if multirun and cfg.wandb.group is None:
        cfg.wandb.group = sweep_group(hc.sweep.dir)
    t0 = time.time()
    started = _now()
    try:
        metrics = run(cfg, job_dir, run_name=name, tags=override_tags(overrides))
    except (Exception, KeyboardInterrupt) as ex:
        err = user_error(ex)
        if err is not None:
            msg = one_line(err)
        elif isinstance(ex, StageCrash):
            msg = str(ex)
        elif isinstance(ex, KeyboardInterrupt):
            msg = "interrupted (SIGINT); run the same command again to resume"
        else:
            msg = f"{type(ex).__name__}: {one_line(ex)}" if not isinstance(ex, StageBug) else str(ex)
        tb = ex.child_traceback if isinstance(ex, StageBug) else traceback.format_exc()
        write_status(job_dir, {
            "status": "failed", "error": msg, "error_type": type(ex).__name__,
            "overrides": overrides, "started_at": started, "finished_at": _now(), "seconds": round(time.time() - t0, 2),
            "traceback": tb,
        })
        if isinstance(ex, StageStopped):
            raise JobStopped(msg, ex.signum) from None
        if isinstance(ex, KeyboardInterrupt):
            raise
        if not multirun and err is None and not isinstance(ex, StageCrash):
            raise  # a bug, not bad input: keep the traceback (a stage's own is printed by the entrypoint)
        if multirun:
            log.error("job %s failed: %s (sweep goes on; see %s/status.json)", name, msg, job_dir)
        FAILED.append(Failure(str(job_dir) if multirun else "", msg, err is not None))
        return None
    write_status(job_dir, {
        "status": "ok", "overrides": overrides, "started_at": started, "finished_at": _now(),
        "seconds": round(time.time() - t0, 2), "pid": metrics.get("pid"), "job_pid": os.getpid(),
        "fingerprint": metrics.get("fingerprint"),
    })
    return metrics


def write_status(job_dir: Path, status: dict) -> None:
    """status.json; a job dir on a full disk gets a log line instead, and the sweep goes on."""
    try:
        write_json_atomic(job_dir / "status.json", status)
    except OSError as ex:
        log.error("could not write %s/status.json (%s): %s", job_dir, ex.strerror or ex, status.get("error", status["status"]))
