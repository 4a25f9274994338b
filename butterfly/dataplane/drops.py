"""Frames butterfly's nftables tables dropped, by cause, read from their named counters.

The ruleset counts every drop into one named counter per cause
(:data:`~butterfly.dataplane.ruleset.DROP_COUNTERS`); this reads them through
a libnftables context of its own, so that the metrics' thread never shares
the data plane's. Reads the network namespace of the calling thread.
"""

import threading

from butterfly.dataplane.naming import TABLE
from butterfly.dataplane.nft import Nftables
from butterfly.dataplane.ruleset import BRIDGE, DROP_COUNTERS, INET

__all__ = ["DropCounters"]


class DropCounters:
    """Packets dropped per cause; causes whose table is absent are left out."""

    def __init__(self) -> None:
        self._nft: Nftables | None = None
        self._lock = threading.Lock()

    def read(self) -> dict[str, int]:
        """Raises DataplaneError when nftables cannot be read."""
        counts: dict[str, int] = {}
        with self._lock:  # one libnftables context, scrapes may overlap
            if self._nft is None:
                self._nft = Nftables()
            for family in (BRIDGE, INET):
                listed = self._nft.list({"counters": {"family": family, "table": TABLE}}) or []
                for obj in listed:
                    counter = obj.get("counter", {})
                    cause = DROP_COUNTERS.get(counter.get("name", ""))
                    if cause is not None and cause[0] == family:
                        counts[cause[1]] = int(counter["packets"])
        return counts
