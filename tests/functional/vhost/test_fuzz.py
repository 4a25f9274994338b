"""Misbehaving frontends: each is disconnected with a log line; the worker and
its other vnics carry on (both vnics share the single worker process)."""

import contextlib
import os
import struct
from collections.abc import Callable

import pytest

from butterfly.vhost.protocol import Feature, Request
from butterfly.vhost.virtqueue import MAX_CHAIN_BYTES

from .conftest import ServerFactory, TapSocket, vhost_warnings, wait_for
from .frontend import F_INDIRECT, F_NEXT, F_WRITE, GPA_BASE, MEMORY_SIZE, UADDR_BASE, Frontend

pytestmark = pytest.mark.root

FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x88\xb5" + b"fuzz".ljust(50, b".")


def _garbage(fe: Frontend) -> None:
    fe.sock.sendall(os.urandom(8) + struct.pack("<I", 0xFFFF) + os.urandom(64))


def _bad_version(fe: Frontend) -> None:
    fe.send(Request.GET_FEATURES, flags=0x2)


def _unknown_request(fe: Frontend) -> None:
    fe.send(99, b"\0" * 8)


def _no_regions(fe: Frontend) -> None:
    fe.send(Request.SET_MEM_TABLE, struct.pack("<II", 0, 0), [fe.memfd])


def _nine_regions(fe: Frontend) -> None:
    regions = [(GPA_BASE + i * 4096, 4096, UADDR_BASE + i * 4096, i * 4096) for i in range(9)]
    payload = fe.mem_table_payload(regions)
    fe.send(Request.SET_MEM_TABLE, payload[: 8 + 8 * 32], [fe.memfd])


def _fd_count_mismatch(fe: Frontend) -> None:
    regions = [(GPA_BASE, 4096, UADDR_BASE, 0), (GPA_BASE + 8192, 4096, UADDR_BASE + 8192, 8192)]
    fe.send(Request.SET_MEM_TABLE, fe.mem_table_payload(regions), [fe.memfd])


def _region_beyond_file(fe: Frontend) -> None:
    regions = [(GPA_BASE, MEMORY_SIZE * 4, UADDR_BASE, 0)]
    fe.send(Request.SET_MEM_TABLE, fe.mem_table_payload(regions), [fe.memfd])


def _overlapping_regions(fe: Frontend) -> None:
    regions = [(GPA_BASE, 8192, UADDR_BASE, 0), (GPA_BASE + 4096, 4096, UADDR_BASE + 8192, 0)]
    fe.send(Request.SET_MEM_TABLE, fe.mem_table_payload(regions), [fe.memfd, fe.memfd])


def _short_payload(fe: Frontend) -> None:
    fe.send(Request.SET_VRING_ADDR, b"\0" * 8)


def _unoffered_feature(fe: Frontend) -> None:
    fe.set_u64(Request.SET_FEATURES, 1 << 63)


def _queue_size_not_power_of_two(fe: Frontend) -> None:
    fe.send(Request.SET_VRING_NUM, struct.pack("<II", 0, 300))


def _queue_index_out_of_range(fe: Frontend) -> None:
    fe.send(Request.SET_VRING_NUM, struct.pack("<II", 7, 256))


def _ring_outside_memory(fe: Frontend) -> None:
    fe.send(Request.SET_MEM_TABLE, fe.mem_table_payload(), [fe.memfd])
    fe.send(Request.SET_VRING_NUM, struct.pack("<II", 0, 256))
    fe.send(Request.SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, UADDR_BASE + MEMORY_SIZE, 0, 0, 0))


def _kick_fd_at_eof(fe: Frontend) -> None:
    fe.negotiate()
    read_end, write_end = os.pipe()
    os.close(write_end)
    fe.send(Request.SET_VRING_KICK, struct.pack("<Q", 1), [read_end])
    os.close(read_end)


def _ring(build: Callable[[Frontend], int]) -> Callable[[Frontend], None]:
    """Negotiate properly, then make ``build``'s chain available on the tx ring."""

    def misbehave(fe: Frontend) -> None:
        fe.negotiate()
        ring = fe.rings[1]
        ring.make_available(build(fe))
        ring.notify()

    misbehave.__name__ = build.__name__
    return misbehave


@_ring
def _address_outside_memory(fe: Frontend) -> int:
    fe.rings[1].set_desc(0, GPA_BASE + MEMORY_SIZE - 10, 100, 0)
    return 0


@_ring
def _address_below_memory(fe: Frontend) -> int:
    fe.rings[1].set_desc(0, 0x1000, 100, 0)
    return 0


@_ring
def _head_outside_table(fe: Frontend) -> int:
    return 4000


@_ring
def _next_outside_table(fe: Frontend) -> int:
    fe.rings[1].set_desc(0, fe.data_addr(300)[0], 64, F_NEXT, 999)
    return 0


@_ring
def _descriptor_loop(fe: Frontend) -> int:
    ring = fe.rings[1]
    ring.set_desc(0, fe.data_addr(300)[0], 64, F_NEXT, 1)
    ring.set_desc(1, fe.data_addr(301)[0], 0, F_NEXT, 0)
    return 0


@_ring
def _huge_chain(fe: Frontend) -> int:
    ring = fe.rings[1]
    count = MAX_CHAIN_BYTES // 8192 + 2
    for i in range(count):
        ring.set_desc(i, fe.data_addr(300)[0], 8192, F_NEXT if i < count - 1 else 0, i + 1)
    return 0


@_ring
def _write_only_to_transmit(fe: Frontend) -> int:
    fe.rings[1].set_desc(0, fe.data_addr(300)[0], 64, F_WRITE)
    return 0


@_ring
def _nested_indirect(fe: Frontend) -> int:
    addr, offset = fe.data_addr(300)
    struct.pack_into("<QIHH", fe.memory, offset, addr, 16, F_INDIRECT, 0)
    fe.rings[1].set_desc(0, addr, 16, F_INDIRECT)
    return 0


@_ring
def _indirect_table_of_odd_size(fe: Frontend) -> int:
    fe.rings[1].set_desc(0, fe.data_addr(300)[0], 17, F_INDIRECT)
    return 0


def _avail_index_jump(fe: Frontend) -> None:
    fe.negotiate()
    ring = fe.rings[1]
    struct.pack_into("<H", fe.memory, ring.avail + 2, 1000)
    ring.notify()


CASES = [
    _garbage,
    _bad_version,
    _unknown_request,
    _no_regions,
    _nine_regions,
    _fd_count_mismatch,
    _region_beyond_file,
    _overlapping_regions,
    _short_payload,
    _unoffered_feature,
    _queue_size_not_power_of_two,
    _queue_index_out_of_range,
    _ring_outside_memory,
    _kick_fd_at_eof,
    _address_outside_memory,
    _address_below_memory,
    _head_outside_table,
    _next_outside_table,
    _descriptor_loop,
    _huge_chain,
    _write_only_to_transmit,
    _nested_indirect,
    _indirect_table_of_odd_size,
    _avail_index_jump,
]


def _works(fe: Frontend, sock: TapSocket) -> None:
    fe.transmit(FRAME)
    assert fe.wait_used(1, 1)
    while sock.incoming() != FRAME:
        pass


@pytest.mark.parametrize("misbehave", CASES, ids=lambda f: f.__name__.strip("_"))
def test_misbehaving_frontend_is_disconnected(
    misbehave: Callable[[Frontend], None],
    server_factory: ServerFactory,
    tap_socket: Callable[[str], TapSocket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    victim, neighbour = server_factory(), server_factory()
    good = Frontend(neighbour.socket_path)
    good.negotiate()
    bad = Frontend(victim.socket_path)
    try:
        # The backend may hang up before the frontend is done misbehaving.
        with contextlib.suppress(ConnectionError, AssertionError):
            misbehave(bad)
        wait_for(lambda: not bad.is_connected(), "the backend to hang up")
        wait_for(lambda: vhost_warnings(caplog), "a warning on butterfly.vhost")
        assert any("disconnecting frontend" in m for m in vhost_warnings(caplog))
        wait_for(lambda: victim.counters().disconnects == 1, "the disconnect to be counted")
        _works(good, tap_socket(neighbour.tap_name))
        again = Frontend(victim.socket_path)
        again.negotiate()
        _works(again, tap_socket(victim.tap_name))
        again.close()
    finally:
        bad.close()
        good.close()


def test_half_a_message_stalls_nobody(
    server_factory: ServerFactory, tap_socket: Callable[[str], TapSocket]
) -> None:
    victim, neighbour = server_factory(), server_factory()
    bad = Frontend(victim.socket_path)
    bad.sock.sendall(struct.pack("<II", Request.GET_FEATURES, 1))
    good = Frontend(neighbour.socket_path)
    good.negotiate()
    _works(good, tap_socket(neighbour.tap_name))
    assert bad.is_connected()
    bad.sock.sendall(struct.pack("<I", 0))
    request, payload = bad.receive()
    assert request == Request.GET_FEATURES and len(payload) == 8
    bad.close()
    good.close()


def test_second_frontend_is_refused_while_one_is_connected(
    server_factory: ServerFactory, tap_socket: Callable[[str], TapSocket]
) -> None:
    server = server_factory()
    first = Frontend(server.socket_path)
    first.negotiate()
    second = Frontend(server.socket_path)
    wait_for(lambda: not second.is_connected(), "the second frontend to be refused")
    _works(first, tap_socket(server.tap_name))
    second.close()
    first.close()


def test_features_offered_are_what_is_implemented(server_factory: ServerFactory) -> None:
    server = server_factory()
    fe = Frontend(server.socket_path)
    offered = fe.get_u64(Request.GET_FEATURES)
    assert offered & Feature.VERSION_1 and offered & Feature.MRG_RXBUF
    assert not offered & (Feature.GUEST_UFO | Feature.HOST_UFO)
    assert not offered & (1 << 35)  # IN_ORDER is not implemented
    assert fe.get_u64(Request.GET_PROTOCOL_FEATURES) == 0b1001  # MQ, REPLY_ACK
    assert fe.get_u64(Request.GET_QUEUE_NUM) == 1
    fe.close()
