"""Read wandb OFFLINE run directories without syncing them (wandb >= 0.31 ships no reader).

An offline run dir ``<dir>/wandb/offline-run-<date>-<id>/`` holds ``run-<id>.wandb`` and
``files/`` (``files/media/table/**/*.table.json`` for logged ``wandb.Table``s).

``.wandb`` file layout (wandb-core's ``core/pkg/leveldb``):

* a 7-byte file header ``struct '<4sHB'``: ident ``b":W&B"``, magic ``0xBEE1`` (bytes
  ``e1 be``), version ``0``;
* then LevelDB-log chunks in 32 KiB blocks counted from the START of the file (so the first
  block holds 32768 - 7 bytes of chunks). A chunk is ``crc(4) len(2, LE) type(1)`` + data,
  type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4. A block tail too short for a chunk header
  (< 7 bytes) is zero padding. crc is zlib's CRC-32 (IEEE, not crc32c) of the data,
  seeded with the CRC-32 of the type byte: ``zlib.crc32(data, zlib.crc32(bytes([type])))``;
* each reassembled payload is a serialized ``wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from wandb.proto import wandb_internal_pb2 as pb

Record = pb.Record

FILE_HEADER = struct.Struct("<4sHB")
FILE_IDENT, FILE_MAGIC, FILE_VERSION = b":W&B", 0xBEE1, 0
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # crc, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def find_run_dirs(root: str | Path) -> list[Path]:
    """All ``offline-run-*`` dirs (holding a ``run-*.wandb``) at or under ``root``, sorted."""
    root = Path(root)
    found = {}
    for p in (root, *root.rglob("offline-run-*")):
        if p.name.startswith("offline-run-") and p.is_dir() and any(p.glob("run-*.wandb")):
            found.setdefault(p.resolve(), p)
    return sorted(found.values())


def _chunks(f: BinaryIO, check_crc: bool) -> Iterator[tuple[int, bytes]]:
    """Yield (type, data) per chunk; stop quietly at a truncated final block."""
    block = f.read(BLOCK_SIZE)
    if len(block) < FILE_HEADER.size:
        return  # empty or cut inside the file header: no records
    ident, magic, version = FILE_HEADER.unpack_from(block)
    if (ident, magic) != (FILE_IDENT, FILE_MAGIC) or version != FILE_VERSION:
        raise ValueError(f"not a .wandb file (header {block[:FILE_HEADER.size]!r})")
    pos = FILE_HEADER.size
    while block:
        while pos + CHUNK_HEADER.size <= len(block):
            crc, length, ctype = CHUNK_HEADER.unpack_from(block, pos)
            start = pos + CHUNK_HEADER.size
            if ctype == 0 and length == 0:
                break  # zero padding / preallocated space: rest of the block is empty
            if start + length > len(block):
                if len(block) < BLOCK_SIZE:
                    return  # the file was cut inside this chunk (crashed run)
                raise ValueError(f"chunk overruns its block at offset {f.tell() - len(block) + pos}")
            data = block[start : start + length]
            if check_crc and zlib.crc32(data, zlib.crc32(bytes([ctype]))) != crc:
                raise ValueError(f"crc mismatch at offset {f.tell() - len(block) + pos}")
            yield ctype, data
            pos = start + length
        if len(block) < BLOCK_SIZE:
            return
        block, pos = f.read(BLOCK_SIZE), 0


def read_records(wandb_file: str | Path, *, check_crc: bool = False) -> Iterator[Record]:
    """Yield every complete ``Record`` in a ``.wandb`` file, in order.

    A record whose chunks are cut off by the end of the file is dropped silently;
    ``check_crc=True`` additionally verifies each chunk's checksum (ValueError on mismatch).
    """
    with open(wandb_file, "rb") as f:
        parts: list[bytes] | None = None
        for ctype, data in _chunks(f, check_crc):
            if ctype in (FULL, FIRST):
                parts = [data]
            elif ctype in (MIDDLE, LAST):
                if parts is None:
                    continue  # orphan continuation: resync at the next FULL/FIRST
                parts.append(data)
            else:
                raise ValueError(f"unknown chunk type {ctype}")
            if ctype in (FULL, LAST):
                rec = Record()
                rec.ParseFromString(b"".join(parts))
                parts = None
                yield rec


@dataclass
class OfflineRun:
    """What ``read_run`` recovers from one offline run dir.

    ``config`` excludes wandb's internal ``_wandb`` entry. ``history`` has one dict per
    history record (with ``_step``, ``_timestamp``, ``_runtime``); ``summary`` is the final
    summary. Keys of nested items are joined by ``/`` (a logged table ``t`` shows up as
    ``t/_type``, ``t/path``, ...). ``tables`` maps summary key (else file stem) to the parsed
    ``*.table.json`` (``{"columns": [...], "data": [[...], ...]}``). ``exit_code`` is None
    when the run has no exit record (still running or crashed). ``name``, ``group``, ``job_type`` and
    ``tags`` come from the run record.
    """

    run_dir: Path
    run_id: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    exit_code: int | None = None
    name: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if len(item.nested_key) else item.key


def _apply(target: dict[str, Any], updates: Any, removes: Any) -> None:
    for item in updates:
        target[_key(item)] = json.loads(item.value_json)
    for item in removes:
        target.pop(_key(item), None)


def read_run(run_dir: str | Path, *, check_crc: bool = False) -> OfflineRun:
    """Parse ``run-*.wandb`` and the table files of one offline run dir."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb in {run_dir}")
    run = OfflineRun(run_dir=run_dir, run_id=files[0].stem.removeprefix("run-"))
    for rec in read_records(files[0], check_crc=check_crc):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.run_id = rec.run.run_id or run.run_id
            run.name, run.group, run.job_type = rec.run.display_name, rec.run.run_group, rec.run.job_type
            run.tags = list(rec.run.tags)
            _apply(run.config, rec.run.config.update, rec.run.config.remove)
        elif kind == "config":
            _apply(run.config, rec.config.update, rec.config.remove)
        elif kind == "history":
            row = {_key(it): json.loads(it.value_json) for it in rec.history.item}
            if "_step" not in row and rec.history.HasField("step"):
                row["_step"] = rec.history.step.num
            run.history.append(row)
        elif kind == "summary":
            _apply(run.summary, rec.summary.update, rec.summary.remove)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    run.config.pop("_wandb", None)

    by_path: dict[str, str] = {}  # table file path (relative to files/) -> summary key
    for k, v in run.summary.items():
        if k.endswith("/path") and isinstance(v, str) and v.endswith(".table.json"):
            by_path[v] = k[: -len("/path")]
        elif isinstance(v, dict) and isinstance(v.get("path"), str):
            by_path[v["path"]] = k
    files_dir = run_dir / "files"
    for p in sorted((files_dir / "media" / "table").rglob("*.table.json")):
        rel = p.relative_to(files_dir).as_posix()
        name = by_path.get(rel) or p.name.removesuffix(".table.json")
        run.tables[name] = json.loads(p.read_text(encoding="utf-8"))
    return run
