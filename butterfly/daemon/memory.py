"""Memory debugging on demand: the daemon's largest allocation sites, in its log.

A leak on a production host shows as a daemon that grows over weeks; what
an operator can send back is where the memory went. With ``--debug-memory``
(``debug-memory = true`` in the ini file) the daemon traces its Python
allocations from the start (tracemalloc: a few percent of CPU and some
memory for the traces, hence off by default), and each SIGUSR2 logs the
largest allocation sites and the sites that grew most since the previous
SIGUSR2 (or the start), each with the calls that led there. Sending SIGUSR2
twice, hours apart, names the leak. A report is made in the API's thread:
requests wait for it (a second or more on a big daemon).
"""

import gc
import logging
import os
import sys
import tracemalloc

import butterfly

__all__ = ["FRAMES", "MemoryReport"]

log = logging.getLogger(__name__)

FRAMES = 8
"""Calls kept per allocation: enough to see which request led to a site."""
TOP = 15
_IGNORED = (tracemalloc.__file__, "<frozen importlib._bootstrap>", "<unknown>")


class MemoryReport:
    """Traces allocations from :meth:`start`; :meth:`log` writes a report."""

    def __init__(self, *, top: int = TOP) -> None:
        self._top = top
        self._previous: tracemalloc.Snapshot | None = None

    def start(self) -> None:
        tracemalloc.start(FRAMES)
        self._previous = self._snapshot()
        log.warning(
            "memory debugging on: allocations traced (%d calls each); SIGUSR2 logs the"
            " largest allocation sites",
            FRAMES,
        )

    def log(self) -> None:
        """Log the largest sites and the growth since the last report, after a
        garbage collection (what is left is held, not waiting to be freed)."""
        if not tracemalloc.is_tracing():
            log.warning("SIGUSR2: memory debugging is off (start butterflyd with --debug-memory)")
            return
        gc.collect()
        snapshot = self._snapshot()
        traced, peak = tracemalloc.get_traced_memory()
        log.warning(
            "memory: %.1f MB traced in %d blocks (peak %.1f MB), tracing itself uses %.1f MB",
            traced / 1e6,
            sum(stat.count for stat in snapshot.statistics("filename")),
            peak / 1e6,
            tracemalloc.get_tracemalloc_memory() / 1e6,
        )
        log.warning("memory: the %d largest allocation sites:", self._top)
        for stat in snapshot.statistics("lineno")[: self._top]:
            log.warning("  %s", _describe(stat.size, stat.count, stat.traceback))
        if self._previous is not None:
            log.warning("memory: the %d sites that grew most since the last report:", self._top)
            grown = [
                diff
                for diff in snapshot.compare_to(self._previous, "traceback")
                if diff.size_diff > 0
            ]
            for diff in grown[: self._top]:
                log.warning(
                    "  +%s",
                    _describe(diff.size_diff, diff.count_diff, diff.traceback, frames=FRAMES),
                )
        self._previous = snapshot

    @staticmethod
    def _snapshot() -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, pattern) for pattern in _IGNORED]
        )


def _describe(size: int, count: int, traceback: tracemalloc.Traceback, *, frames: int = 1) -> str:
    """``12.3 KB in 45 blocks at file:line <- caller:line ...`` (innermost first)."""
    where = " <- ".join(
        f"{_short(frame.filename)}:{frame.lineno}" for frame in reversed(traceback[-frames:])
    )
    return f"{size / 1e3:.1f} KB in {count} blocks at {where}"


def _short(filename: str) -> str:
    """A module's file from its import root (``butterfly/api/v0.py``, ``zmq/sugar/socket.py``)."""
    ours = os.path.dirname(os.path.dirname(butterfly.__file__))
    roots = [root for root in (ours, *sys.path) if root and filename.startswith(root + "/")]
    return filename[len(max(roots, key=len)) + 1 :] if roots else filename
