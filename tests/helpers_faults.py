"""Functions tests/test_faults.py runs in a process of its own."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def build_then_die(entry: Path) -> None:
    """A cache build killed half-way through writing its files."""
    from ragqa_exp.cache import cached_stage

    def half(work: Path) -> None:
        (work / "model.safetensors").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)

    cached_stage(entry, "result.json", "train", half, config={})
