"""The host's connection tracking table, sized at start-up for tenants that flood it.

All VNIs share one table (conntrack zones separate flows, not capacity): when
it is full the kernel drops every new connection of every tenant. The
per-vnic caps bound what one vnic can hold; this module makes the table
large enough for the host's memory and shortens how long flows that were
never (or not yet) answered are kept, so what a flood leaves behind goes
quickly. Values are only ever raised (the table) or lowered (the timeouts):
an operator's stricter choice is kept. Owns nothing else; the daemon logs
what :func:`size_conntrack` answers.
"""

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

__all__ = ["ENTRY_MEMORY", "TIMEOUTS", "Sizing", "memory_bytes", "size_conntrack"]

SYSCTL_DIR = "/proc/sys/net/netfilter"
ENTRY_MEMORY = 16384
"""Bytes of host memory per table entry by default (an entry takes ~320 B: 2 %)."""
BUCKET_RATIO = 4
"""Entries per hash bucket."""
TIMEOUTS = {
    "nf_conntrack_tcp_timeout_syn_sent": 30,
    "nf_conntrack_tcp_timeout_syn_recv": 30,
    "nf_conntrack_udp_timeout": 30,
    "nf_conntrack_udp_timeout_stream": 60,
}
"""Seconds, at most: connections not yet established, UDP with and without replies."""


@dataclass(frozen=True, slots=True)
class Sizing:
    """One setting: what it was, what it is now, or why it was left."""

    name: str
    before: int
    after: int
    problem: str = ""

    def __str__(self) -> str:
        short = self.name.removeprefix("nf_conntrack_")
        if self.problem:
            return f"{short} {self.before} (kept: {self.problem})"
        if self.before == self.after:
            return f"{short} {self.after}"
        return f"{short} {self.before} -> {self.after}"


def memory_bytes(meminfo: str = "/proc/meminfo") -> int:
    with open(meminfo, encoding="ascii") as file:
        for line in file:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"{meminfo} has no MemTotal")


def _set(directory: str, name: str, wanted: Callable[[int], int]) -> Sizing:
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="ascii") as file:
            before = int(file.read())
    except (OSError, ValueError) as error:
        return Sizing(name, 0, 0, f"cannot be read: {error}")
    after = wanted(before)
    if after == before:
        return Sizing(name, before, after)
    try:
        with open(path, "w", encoding="ascii") as file:
            file.write(f"{after}\n")
    except OSError as error:
        reason = (
            "read-only in this network namespace" if error.errno == errno.EACCES else error.strerror
        )
        return Sizing(name, before, before, reason or str(error))
    return Sizing(name, before, after)


def size_conntrack(
    entries: int | None, *, memory: int, directory: str = SYSCTL_DIR
) -> list[Sizing]:
    """Raise the table to ``entries`` (None: one per ENTRY_MEMORY bytes of
    ``memory``) and its hash to match; lower the timeouts to TIMEOUTS."""
    table = entries if entries is not None else memory // ENTRY_MEMORY
    sizings = [
        _set(directory, "nf_conntrack_max", partial(max, table)),
        _set(directory, "nf_conntrack_buckets", partial(max, table // BUCKET_RATIO)),
    ]
    sizings += [_set(directory, name, partial(min, seconds)) for name, seconds in TIMEOUTS.items()]
    return sizings
