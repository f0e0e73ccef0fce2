"""Run one stage of a job in a fresh Python process (optimum-benchmark's process launcher, by hand).

The Hydra job process only orchestrates: training, quantization and evaluation each run in a child
started with `python -m ragqa_exp.isolation IN OUT`, so the memory and time a stage measures are its own
(no CUDA context, allocator cache or model copy of an earlier stage or an earlier job of the sweep), and a
crash of the child (segfault, OOM kill) fails the job, not the sweep. Arguments and the result travel as
pickles in the job dir (written atomically). A user error in the child is raised again in the parent as the
same one-line error; a bug comes back with the child's traceback.
"""
from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from ragqa_exp import errors
from ragqa_exp.diskspace import free_bytes
from ragqa_exp.errors import RagqaError, disk_full_error
from ragqa_exp.fsutil import LOW_SPACE_BYTES, write_bytes_atomic

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


class StageCrash(Exception):
    """The child died without reporting (killed by a signal, or exited early): a failed job, one line."""


class StageStopped(StageCrash):
    """The job process got SIGTERM while a stage ran (SLURM preemption, `kill`); the stage got it too and
    stopped (the train stage after saving a checkpoint). The sweep stops: its time is up."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StageBug(Exception):
    """The child raised an unexpected exception; `child_traceback` holds its traceback."""

    def __init__(self, message: str, child_traceback: str) -> None:
        super().__init__(message)
        self.child_traceback = child_traceback


def _job_log_file() -> str | None:
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            return h.baseFilename
    return None


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _write_pickle(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, pickle.dumps(obj))


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def run_stage(stage: str, fn: Callable, *args: Any, work_dir: Path) -> Any:
    """`fn(*args)` in a fresh process; its return value (picklable). `fn` must be a module-level function."""
    work = Path(work_dir) / ".stages"
    work.mkdir(parents=True, exist_ok=True)
    inp, out = work / f"{stage}.in.pkl", work / f"{stage}.out.pkl"
    out.unlink(missing_ok=True)
    _write_pickle(inp, {"fn": f"{fn.__module__}:{fn.__qualname__}", "args": args, "log_file": _job_log_file()})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # NVML and torch agree on device indices
    proc = subprocess.Popen([sys.executable, "-m", "ragqa_exp.isolation", str(inp), str(out)], env=env)
    previous = signal.getsignal(signal.SIGTERM)

    stopped: list[int] = []

    def forward(signum, frame):  # SLURM preemption / kill of the job: the child gets it (to save what it can)
        stopped.append(signum)
        proc.send_signal(signum)

    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, forward)
    try:
        code = proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    if stopped:
        raise StageStopped(f"the {stage} stage (pid {proc.pid}) was stopped: the job received "
                           f"{signal.Signals(stopped[0]).name}; run the same command again to resume", stopped[0])
    if not out.is_file():
        free = free_bytes(work)
        if code > 0 and free is not None and free < LOW_SPACE_BYTES:  # it could not even write its result
            raise disk_full_error(work, f"the {stage} stage's result", None, "hydra.run.dir / hydra.sweep.dir")
        why = f"was killed by {_signal_name(code)}" if code < 0 else f"exited with status {code} without a result"
        hint = " (out of host memory? see the kernel log)" if code == -signal.SIGKILL else ""
        raise StageCrash(f"the {stage} stage process (pid {proc.pid}) {why}{hint}")
    result = pickle.loads(out.read_bytes())
    inp.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    if result["status"] == "ok":
        return result["value"]
    if result["status"] == "user_error":
        cls = getattr(errors, result["type"], RagqaError)
        raise (cls if isinstance(cls, type) and issubclass(cls, RagqaError) else RagqaError)(result["message"])
    raise StageBug(f"{result['type']} in the {stage} stage: {result['message']}", result["traceback"])


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM if the job process dies (no orphaned GPU holders)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Fault injection for tests: "<stage>" or "<stage>:<text in the job dir's path>" makes that stage's process
# kill itself with SIGKILL as it starts (what an OOM killer or a segfault does to a real stage).
KILL_STAGE_ENV = "RAGQA_KILL_STAGE"


def _injected_kill(inp: Path) -> bool:
    stage, _, where = os.environ.get(KILL_STAGE_ENV, "").partition(":")
    return bool(stage) and inp.name == f"{stage}.in.pkl" and where in str(inp.parent.parent)


# A stage imports torch and transformers: ~450k objects that live as long as its process. At CPython's default
# thresholds the collector's full passes over them (each after 10 young-generation passes) took ~20% of a short
# stage's CPU: a tiny CLI job (its job process and four stage processes) 26.3 -> 22.5 CPU s (2-core CPU,
# 2026-12-06) with them 10x rarer. Young garbage is collected as often as before; old garbage waits longer
# (release_memory() collects all).
FULL_COLLECTION_EVERY = 100  # young-generation passes per full pass (CPython's default: 10)


def _child(inp: Path, out: Path) -> int:
    import gc

    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    _die_with_parent()
    if _injected_kill(inp):
        os.kill(os.getpid(), signal.SIGKILL)
    job = pickle.loads(inp.read_bytes())
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if job["log_file"]:
        handlers.append(logging.FileHandler(job["log_file"]))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
    module, _, name = job["fn"].partition(":")
    try:
        value = getattr(importlib.import_module(module), name)(*job["args"])
        _write_pickle(out, {"status": "ok", "value": value})
        return 0
    except BaseException as ex:  # noqa: BLE001  everything is reported to the parent
        err = errors.user_error(ex)
        if err is not None:
            _write_pickle(out, {"status": "user_error", "type": type(err).__name__, "message": errors.one_line(err)})
            return 2
        _write_pickle(out, {"status": "bug", "type": type(ex).__name__, "message": errors.one_line(ex),
                            "traceback": traceback.format_exc()})
        return 1


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), Path(sys.argv[2])))
