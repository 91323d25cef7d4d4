"""Timing helpers for the benchmarks: synchronised wall-clock samples, summaries, peak memory.

Every sample is taken between two device synchronisations, so GPU work is counted where it
runs. Tasks of one workload are timed round robin (one sample of each task per round), so a
slow period of a shared machine affects every mode alike instead of one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call, between device synchronisations."""
    return timed_result(fn, device)[0]


def timed_result(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Seconds for one call, between device synchronisations, and what it returned."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def summarize(samples_s: list[float]) -> dict:
    """Median, p10, p90, min and max in milliseconds, and the number of samples."""
    ms = np.asarray(samples_s) * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "n": int(ms.size),
    }


class Stamps:
    """Synchronised timestamps taken inside a loop (e.g. once per generated token)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def __call__(self) -> None:
        sync(self.device)
        self.times.append(time.perf_counter())

    def intervals(self) -> list[float]:
        return list(np.diff(self.times))


@dataclass
class Task:
    """One thing to time. `fn` returns None (the call is timed) or, with `inner`, its own
    list of samples in seconds (e.g. per-token intervals of one generation run).

    `setup` runs untimed before every call. Calls stop at `max_reps`, or at `min_reps` once
    `budget_s` of timed calls is spent.
    """

    fn: Callable[[], object]
    setup: Callable[[], None] | None = None
    inner: bool = False
    min_reps: int = 3
    max_reps: int = 10
    budget_s: float = 5.0
    samples: list[float] = field(default_factory=list)
    reps: int = 0
    spent_s: float = 0.0

    def done(self) -> bool:
        if self.reps >= self.max_reps:
            return True
        return self.reps >= self.min_reps and self.spent_s >= self.budget_s

    def run_once(self, device: torch.device) -> None:
        if self.setup is not None:
            self.setup()
        if self.inner:
            start = time.perf_counter()
            self.samples.extend(self.fn())
            self.spent_s += time.perf_counter() - start
        else:
            seconds = timed(self.fn, device)
            self.samples.append(seconds)
            self.spent_s += seconds
        self.reps += 1


def run_round_robin(tasks: dict[Hashable, Task], device: torch.device) -> None:
    """One call of every unfinished task per round until all are done."""
    while True:
        pending = [t for t in tasks.values() if not t.done()]
        if not pending:
            return
        for task in pending:
            task.run_once(device)


class PeakMemory:
    """Peak memory of a block: CUDA `max_memory_allocated`, or on CPU the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs; Linux only).

    `peak_mb` is the absolute peak, `growth_mb` the peak minus the level at entry.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "process_vm_hwm"
        self.peak_mb: float | None = None
        self.growth_mb: float | None = None
        self._start = 0.0
        self._ok = True

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self._ok = _reset_hwm() and _status_mb("VmRSS") is not None
            self._start = _status_mb("VmRSS") or 0.0
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._ok:
            self.peak_mb = _status_mb("VmHWM")
        if self.peak_mb is not None:
            self.growth_mb = self.peak_mb - self._start


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 2**31, reps: int = 10) -> float:
    """Device memory bandwidth from a large device-to-device copy: (read + write) / time."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    samples = [timed(lambda: dst.copy_(src), device) for _ in range(reps)]
    return 2 * nbytes / float(np.median(samples)) / 1e9
