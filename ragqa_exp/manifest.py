"""A cache entry's manifest (`manifest.json`): the config that made the entry, the versions of the libraries
that built it (`versions`; null for an entry published before they were recorded) and every file in it with its
size and sha256. Written when the entry is published (last, before the rename that publishes it) and
checked when the entry is reused: `check(dir, "size")` compares sizes (a stat per file), `check(dir, "sha256")`
also reads and hashes every byte (about 1 s per 500 MB on one loaded CPU core here; files are hashed in
parallel threads, hashlib releases the GIL).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from ragqa_exp.fsutil import write_json_atomic

NAME = "manifest.json"
FORMAT = 1
CHECKS = ("sha256", "size")  # cache_verify: what reuse checks
CHUNK = 8 << 20
BUILD_LIBRARIES = ("ragqa_exp", "torch", "transformers", "trl", "peft", "gptqmodel", "bitsandbytes")


def library_versions(names: tuple[str, ...] = BUILD_LIBRARIES) -> dict[str, str | None]:
    """Installed versions (None: not installed), read from package metadata: no import, no torch. The stage
    processes run the job's interpreter, so these are the libraries that built what the job publishes."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() != NAME)


def _hash_all(root: Path, files: list[Path]) -> dict[str, str]:
    workers = max(1, min(8, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(workers) as pool:
        digests = pool.map(sha256_file, files)
    return {p.relative_to(root).as_posix(): d for p, d in zip(files, digests)}


def write(root: Path, config: Any, versions: Optional[dict] = None) -> dict:
    """Record every file under `root` (size, sha256), `config` and the `versions` of the libraries that built
    it in `root/manifest.json`."""
    files = _files(root)
    digests = _hash_all(root, files)
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "versions": versions,
        "files": {rel: {"size": (root / rel).stat().st_size, "sha256": digests[rel]} for rel in digests},
    }
    write_json_atomic(root / NAME, manifest)
    return manifest


def read(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def check(root: Path, how: str = "sha256") -> Optional[str]:
    """Why `root` does not match its manifest (one phrase), or None when it does."""
    if not (root / NAME).is_file():
        return f"no {NAME}"
    manifest = read(root)
    if manifest is None:
        return f"{NAME} is unreadable"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{NAME} lists no files"
    for rel, facts in files.items():
        p = root / rel
        if not p.is_file():
            return f"{rel} is missing"
        size = p.stat().st_size
        if size != facts.get("size"):
            return f"{rel} has {size} bytes, the manifest says {facts.get('size')}"
    if how == "sha256":
        digests = _hash_all(root, [root / rel for rel in files])
        for rel, facts in files.items():
            if digests[rel] != facts.get("sha256"):
                return f"{rel} does not match its sha256 in the manifest"
    return None
