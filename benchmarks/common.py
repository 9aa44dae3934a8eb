"""Shared benchmark plumbing: timing that alternates contenders in one process, and machine facts."""

from __future__ import annotations

import json
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
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


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the number of torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads"


def machine_description(device: torch.device) -> str:
    """One line naming the machine the numbers came from."""
    return f"{device_name(device)}, torch {torch.__version__}"


def today() -> str:
    """The date for a results row."""
    return date.today().isoformat()


def block_flops_per_token(blocks: torch.nn.Module) -> float:
    """Matrix FLOPs of one token through ``blocks``: 2 x their parameters (attention scores left out)."""
    return 2.0 * sum(parameter.numel() for parameter in blocks.parameters())


def fraction_of_peak(flops_per_second: float, device: torch.device) -> float | None:
    """``flops_per_second`` as a fraction of ``MEASURED_BF16_PEAK_FLOPS``; None off CUDA, where that peak means nothing."""
    return flops_per_second / MEASURED_BF16_PEAK_FLOPS if device.type == "cuda" else None


def result_record(
    benchmark: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    ours_tok_s: float,
    baseline_tok_s: float,
    ratio: float,
    fraction_of_peak: float | None,
    check: str,
) -> dict:
    """One result row for :func:`write_result`: the numbers, plus the machine, date and this process's command."""
    return {
        "benchmark": benchmark,
        "device": device_name(device),
        "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "date": today(),
        "command": shlex.join(["python", *sys.argv]),
        "ours_tok_s": ours_tok_s,
        "baseline_tok_s": baseline_tok_s,
        "ratio": ratio,
        "fraction_of_peak": fraction_of_peak,
        "check": check,
    }


def write_result(path: str | Path, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


RESULT_COLUMNS = (
    "date", "benchmark", "device", "torch", "dtype", "ours tok/s", "baseline tok/s", "ours / baseline",
    "fraction of bf16 peak", "check", "command",
)


def _result_cells(record: dict) -> list[str]:
    """One record's table cells, in ``RESULT_COLUMNS`` order."""
    fraction = record["fraction_of_peak"]
    cells = [
        record["date"], record["benchmark"], record["device"], record["torch"], record["dtype"],
        f"{record['ours_tok_s']:,.0f}", f"{record['baseline_tok_s']:,.0f}", f"{record['ratio']:.2f}×",
        "n/a" if fraction is None else f"{100 * fraction:.3g}%", record["check"], f"`{record['command']}`",
    ]
    return [cell.replace("|", "\\|") for cell in cells]


def results_table(records: list[dict]) -> str:
    """A markdown table of :func:`result_record` rows, ready for RESULTS.md."""
    lines = ["| " + " | ".join(RESULT_COLUMNS) + " |", "|" + "---|" * len(RESULT_COLUMNS)]
    lines += ["| " + " | ".join(_result_cells(record)) + " |" for record in records]
    return "\n".join(lines)
