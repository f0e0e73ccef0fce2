"""Stage cache: an artifact (trained adapter + merged model, ...) lives under `<cache_dir>/<stage>/<key>/`,
where key is a hash of exactly the config that determines it. A sweep over later stages (quant=...)
therefore trains once. A directory is complete or absent (written through fsutil.atomic_dir)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CACHE_VERSION = 1  # bump when a stage's output format changes


def stage_key(stage: str, parts: dict[str, Any]) -> str:
    blob = json.dumps({"stage": stage, "v": CACHE_VERSION, **parts}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_dir(cache_dir: str | Path, stage: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / stage / key
