"""The C loop against the Python one, over real shared memory and a real socket.

A SOCK_SEQPACKET socket pair stands for the tap (one writev, one frame; one
read, one frame), so these run without root. Whatever descriptor table a guest
writes, the C loop must do what the Python walk does: refuse the chain with the
same error, or send the same bytes.
"""

import os
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from butterfly.errors import ConfigError, ProtocolError
from butterfly.vhost import fastloop
from butterfly.vhost.memory import GuestMemory, Region
from butterfly.vhost.virtqueue import MAX_CHAIN_BYTES, Virtqueue

GPA, UADDR, SIZE, QSIZE = 0x100000, 0x7F0000000000, 1 << 20, 8
DESC, AVAIL, USED = 0, 0x1000, 0x2000
DATA = 0x10000
NEXT, WRITE, INDIRECT = 1, 2, 4
HEADER = 12


class Ring:
    """A queue with the driver's side written by hand, and a "tap" socket pair."""

    def __init__(self, index: int = 1, *, event_idx: bool = False) -> None:
        fd = os.memfd_create("vhost-fastloop")
        os.ftruncate(fd, SIZE)
        self.memory = GuestMemory([Region(GPA, SIZE, UADDR, 0)], [fd])
        self.view = self.memory.frontend(UADDR, SIZE)
        self.queue = Virtqueue(index)
        self.queue.set_size(QSIZE)
        self.queue.addresses = (UADDR + DESC, UADDR + AVAIL, UADDR + USED)
        self.queue.event_idx = event_idx
        self.queue.indirect = True
        self.queue.enabled = True
        self.queue.map(self.memory)
        self.queue.start()
        self.call = os.eventfd(0, os.EFD_NONBLOCK)
        self.queue.call_fd = self.call
        self.avail_idx = 0
        self.tap, self.wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.tap.setblocking(False)
        self.wire.setblocking(False)

    def desc(self, index: int, addr: int, length: int, flags: int = 0, next_: int = 0) -> None:
        struct.pack_into("<QIHH", self.view, DESC + 16 * index, addr, length, flags, next_)

    def offer(self, head: int) -> None:
        struct.pack_into("<H", self.view, AVAIL + 4 + 2 * (self.avail_idx % QSIZE), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.view, AVAIL + 2, self.avail_idx)

    def used(self) -> list[tuple[int, int]]:
        count = struct.unpack_from("<H", self.view, USED + 2)[0]
        return [struct.unpack_from("<II", self.view, USED + 4 + 8 * i) for i in range(count)]

    def transmit(self, budget: int = 64) -> fastloop.Burst:
        return fastloop.transmit(
            self.queue, self.memory, tap=self.tap.fileno(), header=HEADER, budget=budget
        )

    def receive(self, *, mergeable: bool = True) -> fastloop.Burst:
        return fastloop.receive(
            self.queue,
            self.memory,
            tap=self.tap.fileno(),
            header=HEADER,
            budget=64,
            mergeable=mergeable,
            scratch=memoryview(bytearray(70000)),
        )

    def sent(self) -> list[bytes]:
        frames = []
        while True:
            try:
                frames.append(self.wire.recv(1 << 17))
            except BlockingIOError:
                return frames

    def close(self) -> None:
        self.tap.close()
        self.wire.close()
        self.queue.reset()  # closes the call eventfd
        self.view.release()
        self.memory.close()


@pytest.fixture
def ring() -> Iterator[Ring]:
    made = Ring()
    yield made
    made.close()


@pytest.fixture
def rx() -> Iterator[Ring]:
    made = Ring(0)
    yield made
    made.close()


def test_the_extension_is_built_and_chosen_by_auto() -> None:
    assert fastloop.resolve("auto") == "c"
    assert fastloop.resolve("python") == "python"
    with pytest.raises(ConfigError, match="vhost-loop: 'fast' is not one of auto, c, python"):
        fastloop.resolve("fast")


def test_the_loop_is_described_with_why_the_c_one_does_not_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert fastloop.describe("auto") == "c"
    assert fastloop.describe("python") == "python (--vhost-loop python)"
    monkeypatch.setattr(fastloop, "_fastloop", None)
    monkeypatch.setattr(fastloop, "_not_built", "No module named 'butterfly.vhost._fastloop'")
    expected = "python (C extension not built: No module named 'butterfly.vhost._fastloop')"
    assert fastloop.describe("auto") == expected
    with pytest.raises(ConfigError, match="vhost-loop: c asked for"):
        fastloop.describe("c")


def test_a_burst_of_chains_is_written_frame_by_frame_and_called_once(ring: Ring) -> None:
    header = bytes(HEADER)
    ring.view[DATA : DATA + HEADER + 4] = header + b"abcd"
    ring.view[DATA + 0x100 : DATA + 0x100 + HEADER + 2] = header + b"ef"
    ring.desc(0, GPA + DATA, HEADER + 4)
    ring.desc(1, GPA + DATA + 0x100, HEADER, NEXT, 2)
    ring.desc(2, GPA + DATA + 0x100 + HEADER, 2)
    ring.offer(0)
    ring.offer(1)
    burst = ring.transmit()
    assert (burst.packets, burst.octets, burst.dropped, burst.more) == (2, 6, 0, False)
    assert ring.sent() == [header + b"abcd", header + b"ef"]
    assert ring.used() == [(0, 0), (1, 0)]
    assert ring.queue.last_avail == 2 and ring.queue.used_idx == 2
    assert os.eventfd_read(ring.call) == 1


def test_a_full_budget_asks_to_come_back(ring: Ring) -> None:
    for _ in range(3):
        ring.desc(0, GPA + DATA, HEADER + 1)
        ring.offer(0)
    burst = ring.transmit(budget=2)
    assert (burst.packets, burst.more) == (2, True)
    assert ring.transmit(budget=2).packets == 1


def test_a_frame_is_read_into_a_chain_with_num_buffers_set(rx: Ring) -> None:
    rx.desc(0, GPA + DATA, 5, WRITE | NEXT, 1)  # the header spans two descriptors
    rx.desc(1, GPA + DATA + 0x100, 2000, WRITE)
    rx.offer(0)
    frame = bytes(HEADER) + b"frame"
    rx.wire.send(frame)
    burst = rx.receive()
    # the one buffer taken, the guest has none left: the tap is no longer read
    assert (burst.packets, burst.octets, burst.no_buffers, burst.tap_errno) == (1, 5, True, 0)
    assert rx.used() == [(0, len(frame))]
    written = bytes(rx.view[DATA : DATA + 5]) + bytes(rx.view[DATA + 0x100 : DATA + 0x100 + 12])
    assert written[10:12] == b"\x01\x00" and written[HEADER:] == b"frame"


def test_a_large_frame_spreads_over_merged_buffers_or_is_dropped(rx: Ring) -> None:
    for index in range(3):
        rx.desc(index, GPA + DATA + 0x1000 * index, 1000, WRITE)
        rx.offer(index)
    frame = bytes(HEADER) + bytes(range(256)) * 10
    rx.wire.send(frame)
    burst = rx.receive()
    assert (burst.packets, burst.dropped) == (1, 0)
    assert rx.used() == [(0, 1000), (1, 1000), (2, len(frame) - 2000)]
    assert bytes(rx.view[DATA + 10 : DATA + 12]) == b"\x03\x00"
    rx.offer(0)  # one buffer: too few for the frame, which is dropped, the buffer kept
    rx.wire.send(frame)
    burst = rx.receive()
    assert (burst.packets, burst.dropped) == (0, 1)
    assert len(rx.used()) == 3 and rx.queue.last_avail == 3


def test_no_buffer_and_an_empty_tap_are_told_apart(rx: Ring) -> None:
    assert rx.receive().no_buffers
    rx.desc(0, GPA + DATA, 2000, WRITE)
    rx.offer(0)
    burst = rx.receive()
    assert (burst.packets, burst.no_buffers, burst.more) == (0, False, False)


def test_event_idx_is_respected() -> None:
    ring = Ring(event_idx=True)
    try:
        struct.pack_into("<H", ring.view, AVAIL + 4 + 2 * QSIZE, 5)  # used_event
        ring.desc(0, GPA + DATA, HEADER + 1)
        for _ in range(3):
            ring.offer(0)
        ring.transmit()  # 0 -> 3 does not pass 5
        with pytest.raises(BlockingIOError):
            os.eventfd_read(ring.call)
        assert struct.unpack_from("<H", ring.view, USED + 4 + 8 * QSIZE)[0] == 3  # avail_event
        for _ in range(3):
            ring.offer(0)
        ring.transmit()  # 3 -> 6 passes 5
        assert os.eventfd_read(ring.call) == 1
    finally:
        ring.close()


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda r: r.desc(0, GPA + DATA, 8, NEXT, 0), "loops"),
        (lambda r: r.desc(0, GPA + DATA, 8, NEXT, 99), "outside a table"),
        (lambda r: r.desc(0, GPA + SIZE - 4, 8), "outside guest memory"),
        (lambda r: r.desc(0, 2**64 - 4, 8), "outside guest memory"),
        (lambda r: r.desc(0, GPA, 2**32 - 1), "outside guest memory"),
        (lambda r: r.desc(0, GPA + DATA, 8, WRITE), "write-only"),
        (lambda r: r.desc(0, GPA + DATA, 33, INDIRECT), "indirect table of 33"),
        (lambda r: r.desc(0, GPA + DATA, 32, INDIRECT | NEXT), "nested or chained"),
        (lambda r: r.desc(0, GPA + SIZE - 16, 32, INDIRECT), "outside guest memory"),
        (
            lambda r: [r.desc(i, GPA + DATA, MAX_CHAIN_BYTES // 4, NEXT, i + 1) for i in range(5)],
            "holds more than",
        ),
        (lambda r: r.desc(0, GPA + DATA, MAX_CHAIN_BYTES), "holds more than"),
    ],
)
def test_hostile_chains_raise_what_the_python_walk_raises(
    ring: Ring, build: object, error: str
) -> None:
    assert callable(build)
    build(ring)
    ring.offer(0)
    with pytest.raises(ProtocolError, match=error) as python:
        ring.queue.readable(0)
    with pytest.raises(ProtocolError) as c:
        ring.transmit()
    assert str(c.value) == str(python.value)
    assert ring.sent() == []


def test_an_avail_index_ahead_of_the_ring_or_a_head_outside_it_is_refused(ring: Ring) -> None:
    struct.pack_into("<H", ring.view, AVAIL + 2, QSIZE + 1)
    with pytest.raises(ProtocolError, match="moved 9 entries"):
        ring.transmit()
    struct.pack_into("<H", ring.view, AVAIL + 2, 1)
    struct.pack_into("<H", ring.view, AVAIL + 4, 300)
    with pytest.raises(ProtocolError, match="head 300 outside a ring of 8"):
        ring.transmit()


descriptor = st.tuples(
    st.integers(0, 2**64 - 1) | st.integers(GPA - 64, GPA + SIZE + 64),
    st.integers(0, 2**32 - 1) | st.integers(0, 5000),
    st.integers(0, 7),
    st.integers(0, 2**16 - 1) | st.integers(0, QSIZE),
)


@settings(max_examples=300, deadline=None)
@given(table=st.lists(descriptor, min_size=QSIZE, max_size=QSIZE), head=st.integers(0, QSIZE - 1))
def test_any_descriptor_table_gets_what_the_python_walk_gives(
    table: list[tuple[int, int, int, int]], head: int
) -> None:
    ring = Ring()
    try:
        for index, (addr, length, flags, next_) in enumerate(table):
            ring.desc(index, addr, length, flags, next_)
        ring.offer(head)
        # As a burst does first: a chain may cover the used ring's flags.
        ring.queue.suppress_kicks()
        try:
            buffers, _ = ring.queue.readable(head)
            expected: bytes | str = b"".join(buffers)
            del buffers
        except ProtocolError as error:
            expected = str(error)
        try:
            ring.transmit()
            sent = ring.sent()
            assert len(sent) <= 1
            got: bytes | str | None = sent[0] if sent else None
        except ProtocolError as error:
            got = str(error)
        if got is None:  # refused by the socket (too large, empty): dropped, as Python's write
            assert isinstance(expected, bytes)
        else:
            assert got == expected
    finally:
        ring.close()
