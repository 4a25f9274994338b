"""Per-vnic packet counters in memory shared between a worker and the daemon.

Owns the layout of one counter slot. A worker adds to its vnics' slots once
per burst; the daemon reads them without a round trip to the worker, so a
stats request never waits for packet work. Aligned 8-byte stores are not
torn on the machines we run on, and a counter read a burst late is fine.
"""

import struct
from dataclasses import dataclass

__all__ = ["SLOTS", "SLOT_SIZE", "VnicCounters", "read_slot", "read_values", "write_slot"]

_LAYOUT = struct.Struct("<8Q")
SLOT_SIZE = 64
SLOTS = 4096
"""Slots per worker: more vnics than one worker would ever serve."""


@dataclass(frozen=True, slots=True)
class VnicCounters:
    """What one vhost-user vnic moved. "to guest" is the API's "in" (what the
    vnic received from the switch), "from guest" its "out"."""

    connected: bool = False
    to_guest_packets: int = 0
    to_guest_bytes: int = 0
    to_guest_dropped: int = 0
    """Frames from the tap the guest had no buffer for (or no guest at all)."""
    from_guest_packets: int = 0
    from_guest_bytes: int = 0
    from_guest_dropped: int = 0
    """Frames from the guest the tap refused (bad vnet header, tap down)."""
    disconnects: int = 0
    """Frontends disconnected for breaking the protocol or the rings."""


def read_slot(buffer: memoryview, slot: int) -> VnicCounters:
    values = read_values(buffer, slot)
    return VnicCounters(bool(values[0]), *values[1:])


def read_values(buffer: memoryview, slot: int) -> list[int]:
    """The raw slot, in :class:`VnicCounters` field order."""
    return list(_LAYOUT.unpack_from(buffer, slot * SLOT_SIZE))


def write_slot(buffer: memoryview, slot: int, values: list[int]) -> None:
    _LAYOUT.pack_into(buffer, slot * SLOT_SIZE, *values)
