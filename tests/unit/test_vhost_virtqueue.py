"""Split virtqueue: chain walks, the used ring and notifications, over real shared memory."""

import os
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from butterfly.errors import ProtocolError
from butterfly.vhost.memory import GuestMemory, Region
from butterfly.vhost.virtqueue import MAX_CHAIN_BYTES, Virtqueue

GPA, UADDR, SIZE, QSIZE = 0x100000, 0x7F0000000000, 1 << 20, 8
DESC, AVAIL, USED = 0, 0x1000, 0x2000
DATA = 0x10000
NEXT, WRITE, INDIRECT = 1, 2, 4


class Ring:
    """A queue with the driver's side written by hand."""

    def __init__(self, *, event_idx: bool = False, indirect: bool = True) -> None:
        fd = os.memfd_create("vhost-unit")
        os.ftruncate(fd, SIZE)
        self.memory = GuestMemory([Region(GPA, SIZE, UADDR, 0)], [fd])
        self.view = self.memory.frontend(UADDR, SIZE)
        self.queue = Virtqueue(1)
        self.queue.set_size(QSIZE)
        self.queue.addresses = (UADDR + DESC, UADDR + AVAIL, UADDR + USED)
        self.queue.event_idx = event_idx
        self.queue.indirect = indirect
        self.queue.enabled = True
        self.queue.map(self.memory)
        self.queue.start()
        self.avail_idx = 0

    def desc(
        self,
        index: int,
        addr: int,
        length: int,
        flags: int = 0,
        next_: int = 0,
        *,
        table: int = DESC,
    ) -> None:
        struct.pack_into("<QIHH", self.view, table + 16 * index, addr, length, flags, next_)

    def offer(self, head: int) -> None:
        struct.pack_into("<H", self.view, AVAIL + 4 + 2 * (self.avail_idx % QSIZE), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.view, AVAIL + 2, self.avail_idx)

    def u16(self, offset: int) -> int:
        value: int = struct.unpack_from("<H", self.view, offset)[0]
        return value

    def close(self) -> None:
        self.queue.reset()
        self.view.release()
        self.memory.close()


@pytest.fixture
def ring() -> Iterator[Ring]:
    made = Ring()
    yield made
    made.close()


def test_single_and_chained_descriptors(ring: Ring) -> None:
    ring.view[DATA : DATA + 6] = b"abcdef"
    ring.desc(0, GPA + DATA, 2, NEXT, 1)
    ring.desc(1, GPA + DATA + 2, 4)
    ring.desc(2, GPA + DATA, 6)
    ring.offer(0)
    ring.offer(2)
    assert ring.queue.pending() == 2
    assert ring.queue.heads(2) == [0, 2]
    buffers, length = ring.queue.readable(0)
    assert (b"".join(buffers), length) == (b"abcdef", 6)
    buffers, length = ring.queue.readable(2)
    assert (b"".join(buffers), length) == (b"abcdef", 6)


def test_indirect_table(ring: Ring) -> None:
    table = DATA + 0x1000
    ring.view[DATA : DATA + 4] = b"wxyz"
    ring.desc(0, GPA + DATA, 1, NEXT, 1, table=table)
    ring.desc(1, GPA + DATA + 1, 3, 0, 0, table=table)
    ring.desc(5, GPA + table, 32, INDIRECT)
    buffers, length = ring.queue.readable(5)
    assert (b"".join(buffers), length) == (b"wxyz", 4)


def test_writable_chain_stops_once_enough(ring: Ring) -> None:
    ring.desc(0, GPA + DATA, 100, WRITE | NEXT, 1)
    ring.desc(1, GPA + DATA + 100, 100, WRITE | NEXT, 7)
    ring.desc(7, 0xDEAD, 100, WRITE)  # never reached
    buffers, length = ring.queue.writable(0, 150)
    assert length == 200 and len(buffers) == 2


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda r: r.desc(0, GPA + DATA, 8, NEXT, 0), "loops"),
        (lambda r: r.desc(0, GPA + DATA, 8, NEXT, 99), "outside a table"),
        (lambda r: r.desc(0, GPA + SIZE - 4, 8), "outside guest memory"),
        (lambda r: r.desc(0, GPA + DATA, 8, WRITE), "write-only"),
        (lambda r: r.desc(0, GPA + DATA, 33, INDIRECT), "indirect table of 33"),
        (lambda r: r.desc(0, GPA + DATA, 32, INDIRECT | NEXT), "nested or chained"),
        (
            lambda r: [r.desc(i, GPA + DATA, MAX_CHAIN_BYTES // 4, NEXT, i + 1) for i in range(5)],
            "holds more than",
        ),
        (lambda r: r.desc(0, GPA + DATA, MAX_CHAIN_BYTES), "holds more than"),
    ],
)
def test_hostile_chains(ring: Ring, build: object, error: str) -> None:
    assert callable(build)
    build(ring)
    with pytest.raises(ProtocolError, match=error):
        ring.queue.readable(0)


def test_indirect_must_be_negotiated() -> None:
    ring = Ring(indirect=False)
    try:
        ring.desc(0, GPA + DATA, 32, INDIRECT)
        with pytest.raises(ProtocolError, match="not negotiated"):
            ring.queue.readable(0)
    finally:
        ring.close()


def test_avail_index_and_heads_are_checked(ring: Ring) -> None:
    struct.pack_into("<H", ring.view, AVAIL + 2, QSIZE + 1)
    with pytest.raises(ProtocolError, match="moved 9 entries"):
        ring.queue.pending()
    struct.pack_into("<H", ring.view, AVAIL + 4, 300)
    with pytest.raises(ProtocolError, match="head 300"):
        ring.queue.heads(1)


def test_heads_wrap_around_the_ring(ring: Ring) -> None:
    for head in range(QSIZE):
        ring.offer(head)
    ring.queue.consume(6)
    for head in (7, 6, 5, 4):
        ring.offer(head)
    assert ring.queue.heads(6) == [6, 7, 7, 6, 5, 4]


def test_used_ring_and_call_without_event_idx(ring: Ring) -> None:
    call = os.eventfd(0, os.EFD_NONBLOCK)
    ring.queue.call_fd = call
    ring.queue.put_used_many([(3, 60), (4, 70)])
    assert ring.u16(USED + 2) == 0  # nothing visible before publish
    ring.queue.publish(0)
    assert ring.u16(USED + 2) == 2
    assert struct.unpack_from("<IIII", ring.view, USED + 4) == (3, 60, 4, 70)
    assert os.eventfd_read(call) == 1
    struct.pack_into("<H", ring.view, AVAIL, 1)  # VRING_AVAIL_F_NO_INTERRUPT
    ring.queue.put_used_read([5])
    ring.queue.publish(2)
    with pytest.raises(BlockingIOError):
        os.eventfd_read(call)


def test_event_idx_calls_only_when_crossing_used_event() -> None:
    ring = Ring(event_idx=True)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    ring.queue.call_fd = call
    try:
        struct.pack_into("<H", ring.view, AVAIL + 4 + 2 * QSIZE, 5)  # used_event
        ring.queue.put_used_read([0, 1, 2])
        ring.queue.publish(0)  # 0 -> 3 does not pass 5
        with pytest.raises(BlockingIOError):
            os.eventfd_read(call)
        ring.queue.put_used_read([3, 4, 5])
        ring.queue.publish(3)  # 3 -> 6 passes 5
        assert os.eventfd_read(call) == 1
    finally:
        ring.close()


def test_await_kick_asks_for_the_next_chain() -> None:
    ring = Ring(event_idx=True)
    try:
        for _ in range(3):
            ring.offer(0)
        ring.queue.consume(3)
        assert not ring.queue.await_kick()
        assert ring.u16(USED + 4 + 8 * QSIZE) == 3  # avail_event
        ring.offer(0)
        assert ring.queue.await_kick()
    finally:
        ring.close()


def test_kicks_suppressed_while_busy_without_event_idx(ring: Ring) -> None:
    ring.queue.suppress_kicks()
    assert ring.u16(USED) == 1  # VRING_USED_F_NO_NOTIFY
    assert not ring.queue.await_kick()
    assert ring.u16(USED) == 0


def test_size_must_be_a_power_of_two() -> None:
    queue = Virtqueue(0)
    for bad in (0, 3, 65536):
        with pytest.raises(ProtocolError, match="not a power of two"):
            queue.set_size(bad)


descriptor = st.tuples(
    st.integers(0, 2**64 - 1) | st.integers(GPA - 64, GPA + SIZE + 64),
    st.integers(0, 2**32 - 1) | st.integers(0, 5000),
    st.integers(0, 7),
    st.integers(0, 2**16 - 1) | st.integers(0, QSIZE),
)


@settings(max_examples=300, deadline=None)
@given(
    table=st.lists(descriptor, min_size=QSIZE, max_size=QSIZE),
    head=st.integers(0, QSIZE - 1),
    write=st.booleans(),
)
def test_any_descriptor_table_is_walked_or_refused(
    table: list[tuple[int, int, int, int]], head: int, write: bool
) -> None:
    """Whatever the guest writes: a ProtocolError or views inside guest memory."""
    ring = Ring()
    try:
        for index, (addr, length, flags, next_) in enumerate(table):
            ring.desc(index, addr, length, flags, next_)
        try:
            if write:
                buffers, length = ring.queue.writable(head, MAX_CHAIN_BYTES)
            else:
                buffers, length = ring.queue.readable(head)
        except ProtocolError:
            return
        assert sum(len(b) for b in buffers) == length
        del buffers
    finally:
        ring.close()
