"""One Hydra job around `pipeline.run`: output dir, wandb naming, status.json, failure isolation.

A failed job writes `status.json` {"status": "failed", "error": one line, ...}; in a sweep the next job
goes on. Failures are collected in FAILED; the entrypoint prints them (one line each) and exits non-zero."""
from __future__ import annotations

import logging
import re
import time
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ragqa_exp.errors import RagqaError, ResourceError
from ragqa_exp.fsutil import write_json_atomic

log = logging.getLogger(__name__)
FAILED: list[tuple[str, str]] = []


def one_line(ex: BaseException) -> str:
    """An exception (and its causes) as one line, without Hydra's search-path and traceback hints."""
    texts, seen = [], set()
    while ex is not None and id(ex) not in seen:
        seen.add(id(ex))
        texts.append(str(ex))
        ex = ex.__cause__ or ex.__context__
    parts: list[str] = []
    options: list[str] | None = None
    for line in (ln.strip() for t in texts for ln in t.splitlines()):
        if not line or line.startswith(("Config search path", "provider=", "Set the environment variable HYDRA_FULL_ERROR")):
            continue
        if line.startswith(("full_key:", "object_type=", "reference_type=")) or "$VALUE" in line or line in parts:
            continue
        if re.fullmatch(r"'[^'\s]*'", line):  # OmegaConf's bare repr of the bad value, already named
            continue
        if line.startswith("Available options in"):
            options = []
            parts.append(line.rstrip(":").replace("Available", "available") + ":")
        elif options is not None and " " not in line:
            options.append(line)
            parts[-1] = parts[-1].split(":")[0] + ": " + ", ".join(options)
        else:
            options = None
            parts.append(line)
    return "; ".join(p.rstrip(".;") for p in parts) or type(ex).__name__


def user_error(ex: BaseException) -> RagqaError | None:
    """The one-line, fixable form of an exception, or None for a bug (which keeps its traceback)."""
    import torch

    if isinstance(ex, RagqaError):
        return ex
    if isinstance(ex, torch.cuda.OutOfMemoryError):
        return ResourceError(
            "out of GPU memory: lower eval.batch_size / train.per_device_train_batch_size, "
            "set train.gradient_checkpointing=true, or pick a 4-bit quant"
        )
    return None


def run_job(cfg: DictConfig) -> dict | None:
    from ragqa_exp.pipeline import run

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = hc.job.override_dirname or "defaults"
    name = f"{hc.job.num}:{overrides}" if multirun else overrides
    if multirun and cfg.wandb.group is None:
        cfg.wandb.group = Path(hc.sweep.dir).name
    t0 = time.time()
    try:
        metrics = run(cfg, job_dir, run_name=name)
    except Exception as ex:
        err = user_error(ex)
        msg = one_line(err) if err is not None else f"{type(ex).__name__}: {one_line(ex)}"
        write_json_atomic(job_dir / "status.json", {
            "status": "failed", "error": msg, "error_type": type(ex).__name__,
            "overrides": list(hc.overrides.task), "seconds": round(time.time() - t0, 2),
            "traceback": traceback.format_exc(),
        })
        if not multirun and err is None:
            raise  # a bug, not bad input: keep the traceback
        if multirun:
            log.error("job %s failed: %s (sweep goes on; see %s/status.json)", name, msg, job_dir)
        FAILED.append((str(job_dir) if multirun else "", msg))
        return None
    write_json_atomic(job_dir / "status.json", {
        "status": "ok", "overrides": list(hc.overrides.task), "seconds": round(time.time() - t0, 2),
    })
    return metrics
