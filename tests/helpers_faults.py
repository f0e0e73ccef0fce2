"""Stage functions for tests/test_faults.py that a stage process imports (tests/ is put on its PYTHONPATH)."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def raise_cuda_oom() -> None:
    """What a training step that does not fit on the GPU raises."""
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total)")


def build_then_die(entry: Path) -> None:
    """A cache build killed half-way through writing its files."""
    from ragqa_exp.cache import cached_stage

    def half(work: Path) -> None:
        (work / "model.safetensors").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)

    cached_stage(entry, "result.json", "train", half, config={})
