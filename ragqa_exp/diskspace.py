"""Free space on a file system, and byte counts in words (for the disk-full messages). Imports nothing of
ragqa_exp: errors.py and fsutil.py both build on it."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional


def free_bytes(path: str | Path | None) -> Optional[int]:
    """Free space on the file system holding `path` (or its nearest existing parent); None if unknown."""
    if not path:
        return None
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
