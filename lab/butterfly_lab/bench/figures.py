"""What every benchmark shares: its error, percentiles, how busy the CPUs were, its table.

Each ``butterfly-bench`` subcommand measures something else, but they judge
and report figures the same way, so these live here once.
"""

import math
import sys
import time
from collections.abc import Iterable, Sequence, Set

__all__ = ["BenchError", "busy_elsewhere", "percentile", "table"]


class BenchError(Exception):
    """The benchmark could not run (a tool failed, a path carried no traffic,
    a frontend never connected)."""


def verdict(met: bool, *, strict: bool) -> int:
    """A bench's exit code: missed targets are said, and fail the run only with
    ``--strict`` (a figure on a loaded machine is not a broken build)."""
    if met:
        return 0
    print("some targets are missed", file=sys.stderr if strict else sys.stdout)
    return 1 if strict else 0


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


def table(
    header: Sequence[str], rows: Iterable[Sequence[str]], right: Set[int] = frozenset()
) -> str:
    """Columns as wide as their widest cell, a rule of dashes under the header;
    the columns numbered in ``right`` (figures) are right-aligned."""
    lines = [tuple(header), *(tuple(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join(
        [line(lines[0]), line(tuple("-" * width for width in widths)), *map(line, lines[1:])]
    )
