"""Stage cache: an artifact (converted base model, trained adapter + merged model, quantized model) lives
under `<cache_dir>/<stage>/<key>/`, where key is a hash of exactly the config that determines it. A sweep
over later stages therefore trains once and quantizes once per quant config.

An entry is complete or absent, and checked before it is reused (`cached_stage`):
- it is built in `<entry>.partial/`, which only the holder of the entry's file lock touches (parallel sweep
  jobs build an entry once; the others wait and reuse it), then published: `manifest.json` (the config that
  made it; the versions of the libraries that built it; every file with its size and sha256) is written last
  and the directory is renamed to `<entry>`.
  A build that is killed, runs out of disk or fails leaves only `.partial`, which is never reused as an
  entry: the next build clears it, or resumes in it (the train stage keeps its checkpoints there);
- reuse checks the entry against its manifest (`cache_verify`: `sha256` reads every byte, `size` only
  stats; manifest.py). An entry that fails is moved aside to `<entry>.corrupt-<time>` and rebuilt, with a
  log line saying why. An entry of an older version (no manifest, but its marker file, so it was
  published whole by a rename) is given its manifest on first reuse.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ragqa_exp import manifest

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when a stage's output format changes
PARTIAL_SUFFIX = ".partial"
_UNMANIFESTED = object()  # an entry of an older version: published whole, but without a manifest


def stage_key(stage: str, parts: dict[str, Any]) -> str:
    blob = json.dumps({"stage": stage, "v": CACHE_VERSION, **parts}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_dir(cache_dir: str | Path, stage: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / stage / key


def partial_dir(entry: Path) -> Path:
    """Where `entry` is built (and a killed build left its work), touched only under the entry's lock."""
    return entry.with_name(entry.name + PARTIAL_SUFFIX)


def is_complete(entry: Path, marker: str) -> bool:
    """Published (the marker is written before the rename that publishes an entry); not verified."""
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


def _problem(entry: Path, marker: str, verify: str) -> Any:
    """None if `entry` can be reused, _UNMANIFESTED, or why not (one phrase)."""
    if not entry.is_dir():
        return "absent"
    if not (entry / manifest.NAME).is_file() and is_complete(entry, marker):
        return _UNMANIFESTED
    return manifest.check(entry, verify)


def set_aside(entry: Path, why: str, what: str) -> Path:
    """Move a cache entry that failed verification out of the way (kept for inspection)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = entry.with_name(f"{entry.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        dest, n = entry.with_name(f"{entry.name}.corrupt-{stamp}-{n}"), n + 1
    os.replace(entry, dest)
    log.warning("%s: cache entry %s failed verification (%s); moved it aside to %s and rebuilding it",
                what, entry, why, dest)
    return dest


def publish(work: Path, entry: Path, marker: str, config: Any) -> None:
    """Write the manifest of the finished build in `work` (with the versions of the libraries that built it)
    and rename it to `entry`."""
    if not (work / marker).is_file():
        raise RuntimeError(f"the build of {entry} finished without writing {marker} in {work}")
    manifest.write(work, config, manifest.library_versions())
    os.replace(work, entry)


def cached_stage(entry: Path, marker: str, what: str, build: Callable[[Path], Any], *, config: Any,
                 verify: str = "sha256", resume: bool = False) -> bool:
    """Reuse cache entry `entry` if it passes its `verify` check, else build it: `build(work_dir)` writes the
    entry's files into `<entry>.partial` (`marker` last; `resume`: keep what an earlier, killed build left
    there) and the entry is published with `config` (what its key hashes) in its manifest. True when reused."""
    if _problem(entry, marker, verify) is None:
        log.info("%s: reusing cached %s", what, entry)
        return True
    with entry_lock(entry, what):
        why = _problem(entry, marker, verify)
        if why is None:
            log.info("%s: reusing %s, built by another job", what, entry)
            return True
        if why is _UNMANIFESTED:
            manifest.write(entry, config)
            log.info("%s: reusing %s (made before cache manifests; its manifest is written now)", what, entry)
            return True
        if why != "absent":
            set_aside(entry, why, what)
        work = partial_dir(entry)
        if work.exists() and not resume:
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        build(work)
        publish(work, entry, marker, config)
    return False
