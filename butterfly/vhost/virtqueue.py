"""A split virtqueue (virtio 1.1, section 2.6) read and written in place.

Owns one ring's state as vhost-user sets it (size, base, addresses, kick and
call eventfds, enabled/started), the walk of descriptor chains with every
check a hostile guest makes necessary (indices outside the table, addresses
outside guest memory, loops, chains longer than any frame, indirect tables
nested or misused), the used ring, and notification suppression in both
directions (EVENT_IDX, or the NO_NOTIFY/NO_INTERRUPT flags without it).

It moves no packets: the net device decides what the buffers hold. Per-frame
work is kept to a few struct reads on memoryviews of the rings, because a
Python backend's packet rate is bounded by the interpreter work per
descriptor.
"""

import contextlib
import os
import struct
import threading

from butterfly.errors import ProtocolError

from .memory import GuestMemory

__all__ = ["MAX_CHAIN_BYTES", "MAX_QUEUE_SIZE", "Virtqueue"]

MAX_QUEUE_SIZE = 32768
MAX_CHAIN_BYTES = 12 + 65535 + 4096
"""More than the largest frame a tap accepts (virtio-net header, 64 KiB IP
datagram plus link headers); a chain from the guest carrying more is refused."""

_DESC = struct.Struct("<QIHH")
_F_NEXT = 1
_F_WRITE = 2
_F_INDIRECT = 4
_USED_F_NO_NOTIFY = 1
_AVAIL_F_NO_INTERRUPT = 1

# A lock round trip is a locked read-modify-write on x86, i.e. a full memory
# barrier: the one way to order "announce that we sleep" before "look at the
# ring once more" from Python, without which a kick could be lost.
_barrier = threading.Lock()


def full_barrier() -> None:
    _barrier.acquire()
    _barrier.release()


class Virtqueue:
    """One split virtqueue of one frontend connection."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._clear()

    def _clear(self) -> None:
        self.size = 0
        self.last_avail = 0
        """The next available-ring slot to consume (the vring base)."""
        self.used_idx = 0
        self.addresses: tuple[int, int, int] | None = None
        """Frontend addresses of the descriptor table, available and used rings."""
        self.kick_fd = -1
        self.call_fd = -1
        self.err_fd = -1
        self.enabled = False
        self.started = False
        self.event_idx = False
        self.indirect = False
        self._memory: GuestMemory | None = None
        self._desc = memoryview(b"")
        self._avail = memoryview(b"").cast("H")
        self._used_head = memoryview(b"").cast("H")
        self._used_elems = memoryview(b"").cast("I")
        self._avail_event = memoryview(b"").cast("H")
        self._mask = 0

    @property
    def ready(self) -> bool:
        """Started, enabled and mapped: the one state in which the ring is processed."""
        return self.started and self.enabled and self._memory is not None

    def set_size(self, size: int) -> None:
        if size == 0 or size > MAX_QUEUE_SIZE or size & (size - 1):
            raise ProtocolError(
                f"vhost-user: vring {self.index} size {size} is not a power of two up to "
                f"{MAX_QUEUE_SIZE}"
            )
        if self.started:
            raise ProtocolError(f"vhost-user: vring {self.index} resized while started")
        self.size = size

    def set_base(self, base: int) -> None:
        if self.started:
            raise ProtocolError(f"vhost-user: vring {self.index} base set while started")
        self.last_avail = base & 0xFFFF

    def map(self, memory: GuestMemory | None) -> None:
        """(Re)compute the ring views, after SET_VRING_ADDR or a new memory table."""
        self._release_views()
        self._memory = None
        if memory is None or self.addresses is None:
            return
        if self.size == 0:
            raise ProtocolError(f"vhost-user: vring {self.index} address set before its size")
        desc, avail, used = self.addresses
        n = self.size
        self._desc = memory.frontend(desc, 16 * n)
        self._avail = memory.frontend(avail, 6 + 2 * n).cast("H")
        self._used_head = memory.frontend(used, 4).cast("H")
        self._used_elems = memory.frontend(used + 4, 8 * n).cast("I")
        self._avail_event = memory.frontend(used + 4 + 8 * n, 2).cast("H")
        self._mask = n - 1
        self._memory = memory

    def start(self) -> None:
        """Begin processing (SET_VRING_KICK): the used index is whatever the ring says."""
        self.started = True
        if self._memory is not None:
            self.used_idx = self._used_head[1]

    def stop(self) -> int:
        """Stop processing (GET_VRING_BASE) and return the base to save."""
        self.started = False
        return self.last_avail

    def reset(self) -> None:
        """Forget everything the frontend set (disconnect): close its eventfds."""
        for fd in (self.kick_fd, self.call_fd, self.err_fd):
            if fd >= 0:
                os.close(fd)
        self._release_views()
        self._clear()

    def views(self) -> tuple[memoryview, ...]:
        """The ring's views (descriptors, available ring, used ring head, used
        elements, avail_event) for the C loop, which reads and writes them in place."""
        return (self._desc, self._avail, self._used_head, self._used_elems, self._avail_event)

    def _release_views(self) -> None:
        for view in (
            self._desc,
            self._avail,
            self._used_head,
            self._used_elems,
            self._avail_event,
        ):
            view.release()

    # --- the hot path -------------------------------------------------

    def pending(self) -> int:
        """How many chains the driver has made available and we have not consumed."""
        count = (self._avail[1] - self.last_avail) & 0xFFFF
        if count > self.size:
            raise ProtocolError(
                f"vhost-user: vring {self.index} avail index moved {count} entries ahead "
                f"of a ring of {self.size}"
            )
        return count

    def peek(self, offset: int = 0) -> int:
        """The head of the ``offset``-th pending chain, not consumed yet."""
        head: int = self._avail[2 + ((self.last_avail + offset) & self._mask)]
        if head >= self.size:
            raise ProtocolError(
                f"vhost-user: vring {self.index} head {head} outside a ring of {self.size}"
            )
        return head

    def heads(self, count: int) -> list[int]:
        """The heads of the next ``count`` pending chains, not consumed yet: one
        slice of the ring instead of ``count`` calls."""
        first = 2 + (self.last_avail & self._mask)
        last = first + count
        ring_end = 2 + self.size
        avail = self._avail
        if last <= ring_end:
            heads = avail[first:last].tolist()
        else:
            heads = avail[first:ring_end].tolist() + avail[2 : last - self.size].tolist()
        if heads and max(heads) >= self.size:
            raise ProtocolError(
                f"vhost-user: vring {self.index} head {max(heads)} outside a ring of {self.size}"
            )
        return heads

    def readable(self, head: int) -> tuple[list[memoryview], int]:
        """Views of the device-readable chain at ``head`` and its length."""
        addr, length, flags, _ = _DESC.unpack_from(self._desc, head << 4)
        memory = self._memory
        assert memory is not None
        start = memory.first_start
        if not flags and start <= addr and addr + length <= memory.first_end:
            # The usual chain: one descriptor, header and frame together.
            if length >= MAX_CHAIN_BYTES:
                raise ProtocolError(
                    f"vhost-user: vring {self.index} chain {head} holds more than "
                    f"{MAX_CHAIN_BYTES} bytes"
                )
            return [memory.first_view[addr - start : addr - start + length]], length
        return self._walk(head, False, MAX_CHAIN_BYTES)

    def writable(self, head: int, enough: int) -> tuple[list[memoryview], int]:
        """Views of the device-writable chain at ``head``, stopping once ``enough``
        bytes are covered (the rest of a longer chain is never needed)."""
        addr, length, flags, _ = _DESC.unpack_from(self._desc, head << 4)
        memory = self._memory
        assert memory is not None
        start = memory.first_start
        if flags == _F_WRITE and start <= addr and addr + length <= memory.first_end:
            return [memory.first_view[addr - start : addr - start + length]], length
        return self._walk(head, True, enough)

    def _walk(self, head: int, write: bool, stop_at: int) -> tuple[list[memoryview], int]:
        memory = self._memory
        assert memory is not None
        unpack = _DESC.unpack_from
        table = self._desc
        limit = self.size
        start, end, view = memory.first_start, memory.first_end, memory.first_view
        want = _F_WRITE if write else 0
        in_indirect = False
        bufs: list[memoryview] = []
        total = 0
        count = 0
        idx = head
        while True:
            if idx >= limit:
                raise ProtocolError(
                    f"vhost-user: vring {self.index} chain {head}: descriptor {idx} outside "
                    f"a table of {limit}"
                )
            addr, length, flags, idx = unpack(table, idx << 4)
            if flags & _F_INDIRECT:
                table, limit = self._indirect_table(head, addr, length, flags, in_indirect)
                in_indirect = True
                idx = 0
                count = 0
                continue
            if flags & _F_WRITE != want:
                raise ProtocolError(
                    f"vhost-user: vring {self.index} chain {head}: a "
                    f"{'read-only' if write else 'write-only'} descriptor where the device "
                    f"{'writes' if write else 'reads'}"
                )
            count += 1
            total += length
            if count > limit:
                raise ProtocolError(
                    f"vhost-user: vring {self.index} chain {head} loops (more than {limit} "
                    "descriptors)"
                )
            if start <= addr and addr + length <= end:
                bufs.append(view[addr - start : addr - start + length])
            else:
                bufs.extend(memory.guest(addr, length))
            if total >= stop_at:
                if write:
                    return bufs, total
                raise ProtocolError(
                    f"vhost-user: vring {self.index} chain {head} holds more than "
                    f"{MAX_CHAIN_BYTES} bytes"
                )
            if not flags & _F_NEXT:
                return bufs, total

    def _indirect_table(
        self, head: int, addr: int, length: int, flags: int, nested: bool
    ) -> tuple[memoryview, int]:
        assert self._memory is not None
        if not self.indirect or nested or flags & _F_NEXT:
            raise ProtocolError(
                f"vhost-user: vring {self.index} chain {head}: indirect descriptor "
                f"{'not negotiated' if not self.indirect else 'nested or chained'}"
            )
        if length == 0 or length % 16 or length // 16 > MAX_QUEUE_SIZE:
            raise ProtocolError(
                f"vhost-user: vring {self.index} chain {head}: indirect table of {length} bytes"
            )
        views = self._memory.guest(addr, length)
        table = views[0] if len(views) == 1 else memoryview(b"".join(views))
        return table, length // 16

    def consume(self, count: int) -> None:
        self.last_avail = (self.last_avail + count) & 0xFFFF

    def put_used_many(self, chains: list[tuple[int, int]]) -> None:
        """Record used chains (head, length written); the driver sees them only
        after :meth:`publish`."""
        elems = self._used_elems
        mask = self._mask
        used = self.used_idx
        for head, length in chains:
            slot = (used & mask) << 1
            elems[slot] = head
            elems[slot + 1] = length
            used += 1
        self.used_idx = used & 0xFFFF

    def put_used_read(self, heads: list[int]) -> None:
        """Record chains the device only read (used length 0), as :meth:`put_used_many`."""
        elems = self._used_elems
        mask = self._mask
        used = self.used_idx
        for head in heads:
            slot = (used & mask) << 1
            elems[slot] = head
            elems[slot + 1] = 0
            used += 1
        self.used_idx = used & 0xFFFF

    def publish(self, since: int) -> None:
        """Expose the used entries recorded since used index ``since`` and call
        the driver if it asked to be told (EVENT_IDX or NO_INTERRUPT)."""
        new = self.used_idx
        self._used_head[1] = new
        if self.call_fd < 0 or new == since:
            return
        if self.event_idx:
            full_barrier()
            event = self._avail[2 + self.size]
            if (new - event - 1) & 0xFFFF >= (new - since) & 0xFFFF:
                return
        elif self._avail[0] & _AVAIL_F_NO_INTERRUPT:
            return
        with contextlib.suppress(BlockingIOError):
            os.eventfd_write(self.call_fd, 1)

    def suppress_kicks(self) -> None:
        """While the device is busy with this ring, kicks are wasted system calls."""
        if not self.event_idx:
            self._used_head[0] = _USED_F_NO_NOTIFY

    def await_kick(self) -> bool:
        """Ask for a kick at the next available chain; True if one is already there
        (then the caller must process it instead of sleeping)."""
        if self.event_idx:
            self._avail_event[0] = self.last_avail
        else:
            self._used_head[0] = 0
        full_barrier()
        return self._avail[1] != self.last_avail
