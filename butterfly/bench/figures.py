"""What every benchmark shares: its error, percentiles, and how busy the CPUs were.

Each ``butterfly-bench`` subcommand measures something else, but they judge
and report figures the same way, so these live here once.
"""

import math
import time
from collections.abc import Sequence

__all__ = ["BenchError", "busy_elsewhere", "percentile"]


class BenchError(Exception):
    """The benchmark could not run (a tool failed, a path carried no traffic,
    a frontend never connected)."""


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def busy_elsewhere(seconds: float = 1.0) -> float:
    """The fraction of CPU time in use over ``seconds`` while the bench itself is idle:
    other work on these CPUs skews every figure, so the table says how much there was."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # idle + iowait

    total, idle = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    elapsed = total_after - total
    return 1 - (idle_after - idle) / elapsed if elapsed else 0.0
