"""Guest memory: the regions of a SET_MEM_TABLE, mapped, and address translation.

Owns the mappings of the frontend's shared memory and the checks that keep
every guest-supplied address inside them: a descriptor that points outside
guest memory raises :class:`~butterfly.errors.ProtocolError` instead of
reaching a neighbour's memory or crashing the worker. Imports nothing of
butterfly but ``errors`` and the message layout it decodes.
"""

import contextlib
import itertools
import mmap
import os
import struct
from dataclasses import dataclass

from butterfly.errors import ProtocolError

from .protocol import MAX_REGIONS

__all__ = ["GuestMemory", "Region", "decode_memory_table"]

_TABLE_HEAD = struct.Struct("<II")
_REGION = struct.Struct("<QQQQ")
_U64 = 1 << 64


@dataclass(frozen=True, slots=True)
class Region:
    """One region as the frontend describes it."""

    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int


def decode_memory_table(payload: bytes) -> list[Region]:
    """Decode SET_MEM_TABLE's payload, refusing tables no frontend should send."""
    if len(payload) < _TABLE_HEAD.size:
        raise ProtocolError(f"vhost-user: SET_MEM_TABLE payload of {len(payload)} bytes")
    count, _ = _TABLE_HEAD.unpack_from(payload)
    if not 0 < count <= MAX_REGIONS:
        raise ProtocolError(f"vhost-user: SET_MEM_TABLE with {count} regions (1-8 allowed)")
    if len(payload) < _TABLE_HEAD.size + count * _REGION.size:
        raise ProtocolError(
            f"vhost-user: SET_MEM_TABLE payload of {len(payload)} bytes for {count} regions"
        )
    regions = [
        Region(*_REGION.unpack_from(payload, _TABLE_HEAD.size + i * _REGION.size))
        for i in range(count)
    ]
    for i, region in enumerate(regions):
        if region.size == 0:
            raise ProtocolError(f"vhost-user: memory region {i} has size 0")
        for name in ("guest_phys_addr", "user_addr", "mmap_offset"):
            if getattr(region, name) + region.size > _U64:
                raise ProtocolError(f"vhost-user: memory region {i}: {name} + size overflows")
    ordered = sorted(regions, key=lambda r: r.guest_phys_addr)
    for a, b in itertools.pairwise(ordered):
        if a.guest_phys_addr + a.size > b.guest_phys_addr:
            raise ProtocolError(
                f"vhost-user: memory regions at {a.guest_phys_addr:#x} and "
                f"{b.guest_phys_addr:#x} overlap"
            )
    return regions


class GuestMemory:
    """The mapped regions of one frontend; translates guest and frontend addresses.

    Guest-physical addresses (descriptors) and frontend virtual addresses
    (ring addresses in SET_VRING_ADDR) both resolve to a memoryview into a
    mapping, so packet data is read and written in place without copies.
    """

    def __init__(self, regions: list[Region], fds: list[int]) -> None:
        """Map every region; takes ownership of ``fds`` (closed once mapped)."""
        if len(fds) != len(regions):
            for fd in fds:
                os.close(fd)
            raise ProtocolError(
                f"vhost-user: SET_MEM_TABLE has {len(regions)} regions but {len(fds)} fds"
            )
        self._maps: list[mmap.mmap] = []
        self.regions: list[tuple[int, memoryview]] = []
        """(guest-physical start, view of the whole region), for the C loop."""
        # (gpa start, gpa end, uaddr start, uaddr end, view shifted to start at the region)
        self._regions: list[tuple[int, int, int, int, memoryview]] = []
        try:
            for i, (region, fd) in enumerate(zip(regions, fds, strict=True)):
                try:
                    mapping = mmap.mmap(fd, region.mmap_offset + region.size)
                except (OSError, ValueError, OverflowError) as e:
                    raise ProtocolError(
                        f"vhost-user: memory region {i} ({region.size} bytes at offset "
                        f"{region.mmap_offset}) cannot be mapped: {e}"
                    ) from None
                self._maps.append(mapping)
                view = memoryview(mapping)[region.mmap_offset :]
                self._regions.append(
                    (
                        region.guest_phys_addr,
                        region.guest_phys_addr + region.size,
                        region.user_addr,
                        region.user_addr + region.size,
                        view,
                    )
                )
        except BaseException:
            self.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)
        self._regions.sort(key=lambda r: r[0])
        self.regions = [(start, view) for start, _, _, _, view in self._regions]
        first = self._regions[0]
        self.first_start, self.first_end, self.first_view = first[0], first[1], first[4]
        """The lowest region, tried first on the hot path: guests put almost all
        memory in it."""

    def guest(self, addr: int, length: int) -> list[memoryview]:
        """Views of guest-physical ``[addr, addr+length)``, split at region edges."""
        views = []
        while length > 0:
            for start, end, _, _, view in self._regions:
                if start <= addr < end:
                    take = min(length, end - addr)
                    views.append(view[addr - start : addr - start + take])
                    addr += take
                    length -= take
                    break
            else:
                raise ProtocolError(
                    f"vhost-user: guest address {addr:#x} (+{length}) is outside guest memory"
                )
        return views

    def frontend(self, addr: int, length: int) -> memoryview:
        """A view of frontend virtual ``[addr, addr+length)``, which must lie in one region."""
        for _, _, ustart, uend, view in self._regions:
            if ustart <= addr and addr + length <= uend:
                return view[addr - ustart : addr - ustart + length]
        raise ProtocolError(
            f"vhost-user: frontend address {addr:#x} (+{length}) is outside guest memory"
        )

    def close(self) -> None:
        """Unmap, unless views are still alive: then the last view unmaps."""
        for *_, view in self._regions:
            view.release()
        self._regions.clear()
        self.regions = []
        for mapping in self._maps:
            with contextlib.suppress(BufferError):
                mapping.close()
        self._maps.clear()
