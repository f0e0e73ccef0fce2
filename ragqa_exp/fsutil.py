"""Writes that never leave a half-written result: atomic files, and a guard that turns a full disk into
one line naming the path, the space needed and the space free."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from ragqa_exp.diskspace import free_bytes
from ragqa_exp.errors import RagqaError, disk_full_error, is_disk_full

log = logging.getLogger(__name__)

LOW_SPACE_BYTES = 1 << 20  # a write that failed with less than this free failed for lack of space


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


Need = Union[int, None, Callable[[], Optional[int]]]


@contextmanager
def disk_space_guard(path: str | Path, what: str, setting: str, need: Need = None,
                     cleanup: Optional[Callable[[], None]] = None) -> Iterator[None]:
    """Run writes into `path`; if they fail (anything raised), `cleanup()` removes what they left, and a
    failure for lack of space (ENOSPC quoted anywhere in the error, or less than 1 MiB left after it: torch's
    own writer only says `file write failed`) becomes a DiskFullError naming `path`, the space `need`ed
    (bytes, or a function giving them) and the space free after the cleanup."""
    from ragqa_exp import faults

    try:
        faults.before_write(path)  # RAGQA_FAULT_DISK_FULL
        yield
    except Exception as ex:
        free = free_bytes(path)
        full = not isinstance(ex, RagqaError) and (is_disk_full(ex) or (free is not None and free < LOW_SPACE_BYTES))
        if cleanup is not None:
            try:
                cleanup()
            except OSError as cex:
                log.warning("could not remove the unfinished %s in %s: %s", what, path, cex)
        if not full:
            raise
        log.info("writing %s to %s failed: %s: %s", what, path, type(ex).__name__, ex)
        raise disk_full_error(path, what, need() if callable(need) else need, setting) from None


def dir_size_mib(path: str | Path) -> float:
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 2)


def weights_mib(path: str | Path) -> float:
    """Size of the safetensors weight files in a model dir (without tokenizer and configs)."""
    return round(sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) / 2**20, 2)
