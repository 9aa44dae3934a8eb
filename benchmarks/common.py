"""Shared benchmark plumbing: timing that alternates contenders in one process, and machine facts."""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Callable

import torch

# Dense bf16 matrix rate measured on this workplace's H200/H100 machines (datasheet: ~989 TFLOP/s).
MEASURED_BF16_PEAK_FLOPS = 790e12


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a host clock reads the real end time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds per run for each contender, collected in alternation."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        """Median seconds of one contender."""
        return statistics.median(self.seconds[name])

    def ratio(self, slow: str, fast: str) -> float:
        """Median over rounds of slow/fast, each round timed back to back."""
        return statistics.median(s / f for s, f in zip(self.seconds[slow], self.seconds[fast]))


def alternate(contenders: dict[str, Callable[[], object]], *, repeats: int, device: torch.device, warmup: int = 1) -> Timings:
    """Run every contender once per round, ``repeats`` rounds after ``warmup`` untimed rounds."""
    timings = Timings({name: [] for name in contenders})
    for round_index in range(warmup + repeats):
        for name, run in contenders.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            if round_index >= warmup:
                timings.seconds[name].append(time.perf_counter() - start)
    return timings


def machine_description(device: torch.device) -> str:
    """One line naming the machine the numbers came from."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads, torch {torch.__version__}"


def today() -> str:
    """The date for a results row."""
    return date.today().isoformat()
