"""Stage cache: an artifact (converted base model, trained adapter + merged model, quantized model) lives
under `<cache_dir>/<stage>/<key>/`, where key is a hash of exactly the config that determines it. A sweep
over later stages therefore trains once and quantizes once per quant config.

An entry is complete or absent: it is built in a temporary sibling and renamed into place
(`fsutil.atomic_dir`); `marker` names the file written last inside it. Jobs that need the same entry
(parallel sweep jobs) serialize on a file lock beside it, so it is built once and the others reuse it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when a stage's output format changes


def stage_key(stage: str, parts: dict[str, Any]) -> str:
    blob = json.dumps({"stage": stage, "v": CACHE_VERSION, **parts}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_dir(cache_dir: str | Path, stage: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / stage / key


def is_complete(entry: Path, marker: str) -> bool:
    return (entry / marker).is_file()


@contextmanager
def entry_lock(entry: Path, what: str) -> Iterator[None]:
    """Hold the lock of cache entry `entry` (another job building it is waited for, with a log line)."""
    from filelock import FileLock, Timeout

    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(entry) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s %s is being built by another job; waiting for it", what, entry.name)
        t0 = time.perf_counter()
        lock.acquire()
        log.info("%s %s: waited %.0f s", what, entry.name, time.perf_counter() - t0)
    try:
        yield
    finally:
        lock.release()
