"""Measurement as context-manager trackers that return dataclasses (the optimum-benchmark pattern).

- `MemoryTracker`: on a GPU, NVML memory of THIS process and its descendants (sampled in a thread) and
  torch's allocator peaks; everywhere, the process's peak RSS. GPU fields are None with a reason on CPU.
  Each stage runs in a fresh process (isolation.py), so "this process" is the stage alone.
"""
from __future__ import annotations

import os
import resource
import threading
from dataclasses import dataclass
from typing import Optional

import psutil


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def gpu_identity() -> dict:
    """Which GPU this process computes on: name, NVML UUID and CUDA_VISIBLE_DEVICES (empty on CPU)."""
    import torch

    out = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if torch.cuda.is_available():
        out["gpu_name"] = torch.cuda.get_device_name()
        try:
            out["gpu_uuid"] = "GPU-" + str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
        except (AttributeError, RuntimeError):
            out["gpu_uuid"] = None
    return out


def _nvml_process_mib(pids: set[int]) -> Optional[float]:
    """Memory NVML attributes to `pids`, summed over all GPUs (None when NVML can't say)."""
    import pynvml

    total, seen = 0, False
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid in pids and proc.usedGpuMemory is not None:
                total += proc.usedGpuMemory
                seen = True
    return total / 2**20 if seen else None


@dataclass
class MemoryReport:
    rss_peak_mib: float  # peak resident set size of this process during the block (sampled)
    gpu_mem_process_mib_end: Optional[float] = None  # NVML, this process, at the end of the block
    gpu_mem_process_mib_peak: Optional[float] = None  # NVML, this process, sampled peak in the block
    torch_peak_allocated_mib: Optional[float] = None
    torch_peak_reserved_mib: Optional[float] = None
    gpu_unavailable_reason: Optional[str] = None


class MemoryTracker:
    """`with MemoryTracker() as mem: ...` then `mem.report`. Samples every `interval` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.report: Optional[MemoryReport] = None
        self._stop = threading.Event()
        self._pid = os.getpid()
        self._proc = psutil.Process(self._pid)
        self._rss_peak = 0.0
        self._gpu_peak: Optional[float] = None
        self._nvml_ok = False
        self._reason: Optional[str] = None

    def _pids(self) -> set[int]:
        """This process and its descendants (kernel JIT builds, tokenizer workers, ...)."""
        try:
            return {self._pid, *(c.pid for c in self._proc.children(recursive=True))}
        except psutil.Error:
            return {self._pid}

    def _sample(self) -> None:
        self._rss_peak = max(self._rss_peak, self._proc.memory_info().rss / 2**20)
        if self._nvml_ok:
            used = _nvml_process_mib(self._pids())
            if used is not None:
                self._gpu_peak = max(self._gpu_peak or 0.0, used)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "MemoryTracker":
        import torch

        if not torch.cuda.is_available():
            self._reason = "no CUDA device (CPU run)"
        else:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml_ok = True
            except Exception as ex:  # NVML missing in a container, ...
                self._reason = f"NVML unavailable: {ex}"
            torch.cuda.reset_peak_memory_stats()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        self._sample()
        rep = MemoryReport(rss_peak_mib=round(self._rss_peak, 1), gpu_unavailable_reason=self._reason)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            rep.torch_peak_allocated_mib = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            rep.torch_peak_reserved_mib = round(torch.cuda.max_memory_reserved() / 2**20, 1)
            if self._nvml_ok:
                end = _nvml_process_mib(self._pids())
                rep.gpu_mem_process_mib_end = round(end, 1) if end is not None else None
                rep.gpu_mem_process_mib_peak = round(self._gpu_peak, 1) if self._gpu_peak is not None else None
                if end is None:
                    rep.gpu_unavailable_reason = "NVML lists no memory for this process (containers may hide PIDs)"
        self.report = rep


def process_peak_rss_mib() -> float:
    """Peak RSS of this process over its whole life (kernel's ru_maxrss)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
