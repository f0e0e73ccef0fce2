"""Fault injection: rehearse a failure before a long run depends on surviving it (tests/test_faults.py uses
these). Each is an environment variable read in a stage process; unset, nothing happens.

  RAGQA_FAULT_TRAIN_SIGNAL=<step>:<SIGNAL>[:job]  when training step <step> ends, send SIGNAL (KILL, TERM,
      INT) to the train stage process, or with `:job` to the job process (which forwards TERM to the stage,
      as under SLURM preemption)
  RAGQA_FAULT_EVAL_KILL_AFTER=<n>  SIGKILL the eval stage process once it has written n answers to disk
  RAGQA_FAULT_EVAL_OOM=<n>  the first n generation batches of more than one prompt raise CUDA out-of-memory
  RAGQA_FAULT_DISK_FULL=<dir>  guarded writes (fsutil.disk_space_guard) under <dir> fail with ENOSPC: a full
      disk where no small file system can be mounted
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

TRAIN_SIGNAL = "RAGQA_FAULT_TRAIN_SIGNAL"
EVAL_KILL_AFTER = "RAGQA_FAULT_EVAL_KILL_AFTER"
EVAL_OOM = "RAGQA_FAULT_EVAL_OOM"
DISK_FULL = "RAGQA_FAULT_DISK_FULL"
_oom_left: list[int] = []


def _signal(name: str) -> signal.Signals:
    return signal.Signals["SIG" + name.upper().removeprefix("SIG")]


def train_callbacks(stopped: Callable[[], bool]) -> list:
    """The injected-signal callback, if asked for. `stopped()` tells when a stop signal has been handled:
    the callback waits for that, so the stop happens at the injected step whatever the signal's route."""
    spec = os.environ.get(TRAIN_SIGNAL)
    if not spec:
        return []
    from transformers import TrainerCallback

    step, name, *target = spec.split(":")
    sig, to_job, at = _signal(name), target == ["job"], int(step)

    class SignalAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step != at:
                return control
            pid = os.getppid() if to_job else os.getpid()
            log.warning("fault injection: %s to the %s process at step %d", sig.name, "job" if to_job else "train", at)
            os.kill(pid, sig)
            deadline = time.monotonic() + 60
            while not stopped() and time.monotonic() < deadline:
                time.sleep(0.01)
            return control

    return [SignalAtStep()]


def after_eval_answer(written: int) -> None:
    n = os.environ.get(EVAL_KILL_AFTER)
    if n and written >= int(n):
        log.warning("fault injection: SIGKILL to the eval process after %d answers", written)
        os.kill(os.getpid(), signal.SIGKILL)


def before_generate(n_prompts: int) -> None:
    if not _oom_left:
        _oom_left.append(int(os.environ.get(EVAL_OOM) or 0))
    if n_prompts > 1 and _oom_left[0] > 0:
        import torch

        _oom_left[0] -= 1
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by {EVAL_OOM}) at a batch of {n_prompts}")


def before_write(path: str | Path) -> None:
    full = os.environ.get(DISK_FULL)
    if full and Path(path).absolute().is_relative_to(Path(full).absolute()):
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {DISK_FULL})", str(path))
