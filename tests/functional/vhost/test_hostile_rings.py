"""Hostile descriptor chains on both rings, against both loops (the ``vhost_loop``
fixture): each ends the frontend's session with a warning naming the fault,
the worker process survives, the neighbour vnic it also serves keeps moving
frames, and the victim's socket takes a well-behaved frontend again.

test_fuzz covers the transmit ring's basic cases; these add the receive ring
(walked only when a frame arrives from the tap), addresses and lengths that
overflow 64 or 32 bits, and indirect tables that leave guest memory or loop.
"""

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from butterfly.vhost import VhostSupervisor

from .conftest import ServerFactory, TapSocket, vhost_warnings, wait_for
from .frontend import F_INDIRECT, F_NEXT, F_WRITE, GPA_BASE, MEMORY_SIZE, Frontend

pytestmark = pytest.mark.root

FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x88\xb5" + b"hostile".ljust(50, b".")
_U64_TOP = (1 << 64) - 32


@dataclass(frozen=True)
class Case:
    name: str
    ring: int
    """0: receive (a frame is injected into the tap to make the backend walk it),
    1: transmit."""
    build: Callable[[Frontend], int]
    """Writes the chain into the frontend's memory; returns its head."""
    fault: str
    """What the warning must say."""


def _wraps_64_bits(flags: int) -> Callable[[Frontend], int]:
    def build(fe: Frontend) -> int:
        fe.rings[index(flags)].set_desc(0, _U64_TOP, 64, flags)
        return 0

    return build


def _longer_than_memory(flags: int) -> Callable[[Frontend], int]:
    def build(fe: Frontend) -> int:
        fe.rings[index(flags)].set_desc(0, GPA_BASE, 0xFFFFFFFF, flags)
        return 0

    return build


def _ends_past_memory(flags: int) -> Callable[[Frontend], int]:
    def build(fe: Frontend) -> int:
        fe.rings[index(flags)].set_desc(0, GPA_BASE + MEMORY_SIZE - 8, 64, flags)
        return 0

    return build


def _loops(flags: int) -> Callable[[Frontend], int]:
    def build(fe: Frontend) -> int:
        ring = fe.rings[index(flags)]
        ring.set_desc(0, fe.data_addr(300)[0], 8, flags | F_NEXT, 1)
        ring.set_desc(1, fe.data_addr(301)[0], 8, flags | F_NEXT, 0)
        return 0

    return build


def _next_outside_table(flags: int) -> Callable[[Frontend], int]:
    def build(fe: Frontend) -> int:
        fe.rings[index(flags)].set_desc(0, fe.data_addr(300)[0], 8, flags | F_NEXT, 60000)
        return 0

    return build


def _head_outside_table(fe: Frontend) -> int:
    return 65535


def _wrong_direction(flags: int) -> Callable[[Frontend], int]:
    def build(fe: Frontend) -> int:
        fe.rings[index(flags)].set_desc(0, fe.data_addr(300)[0], 2048, flags ^ F_WRITE)
        return 0

    return build


def _indirect_outside_memory(flags: int) -> Callable[[Frontend], int]:
    def build(fe: Frontend) -> int:
        fe.rings[index(flags)].set_desc(0, GPA_BASE + MEMORY_SIZE - 16, 64, F_INDIRECT)
        return 0

    return build


def _indirect_loop(flags: int) -> Callable[[Frontend], int]:
    def build(fe: Frontend) -> int:
        table, offset = fe.data_addr(300)
        data = fe.data_addr(301)[0]
        for i in range(4):
            struct.pack_into("<QIHH", fe.memory, offset + 16 * i, data, 8, flags | F_NEXT, 0)
        fe.rings[index(flags)].set_desc(0, table, 64, F_INDIRECT)
        return 0

    return build


def index(flags: int) -> int:
    """The ring a chain of ``flags`` belongs on: writable ones on the receive ring."""
    return 0 if flags & F_WRITE else 1


CASES = [
    Case(f"{name}-{ring_name}", ring, factory(flags), fault)
    for ring, ring_name, flags in ((0, "rx", F_WRITE), (1, "tx", 0))
    for name, factory, fault in (
        ("address-wraps-64-bits", _wraps_64_bits, "outside guest memory"),
        ("length-beyond-memory", _longer_than_memory, "outside guest memory"),
        ("ends-past-memory", _ends_past_memory, "outside guest memory"),
        ("loop", _loops, "loops"),
        ("next-outside-table", _next_outside_table, "outside a table"),
        ("wrong-direction", _wrong_direction, "descriptor where the device"),
        ("indirect-outside-memory", _indirect_outside_memory, "outside guest memory"),
        ("indirect-loop", _indirect_loop, "loops"),
    )
] + [
    Case("head-outside-table-rx", 0, _head_outside_table, "outside a ring"),
    Case("head-outside-table-tx", 1, _head_outside_table, "outside a ring"),
]


def _works(fe: Frontend, sock: TapSocket) -> None:
    """Both directions: a frame from the guest reaches the tap, one into the tap
    reaches the guest."""
    fe.transmit(FRAME)
    assert fe.wait_used(1, 1)
    while sock.incoming() != FRAME:
        pass
    fe.post_receive_buffers(1)
    sock.inject(FRAME)
    assert fe.received(1)[0][fe.header_size :] == FRAME


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_chain_ends_the_session_and_harms_nobody(
    case: Case,
    supervisor: VhostSupervisor,
    server_factory: ServerFactory,
    tap_socket: Callable[[str], TapSocket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers = supervisor.worker_pids()
    victim, neighbour = server_factory(), server_factory()
    good = Frontend(neighbour.socket_path)
    good.negotiate()
    bad = Frontend(victim.socket_path)
    victim_tap = tap_socket(victim.tap_name)
    try:
        bad.negotiate()
        ring = bad.rings[case.ring]
        ring.make_available(case.build(bad))
        ring.notify()
        if case.ring == 0:
            with contextlib.suppress(OSError):
                victim_tap.inject(FRAME)
        wait_for(lambda: not bad.is_connected(), "the backend to hang up")
        wait_for(lambda: vhost_warnings(caplog), "a warning on butterfly.vhost")
        warnings = vhost_warnings(caplog)
        assert any("disconnecting frontend" in m and case.fault in m for m in warnings), warnings
        wait_for(lambda: victim.counters().disconnects == 1, "the disconnect to be counted")
        assert supervisor.worker_pids() == workers
        _works(good, tap_socket(neighbour.tap_name))
        again = Frontend(victim.socket_path)
        again.negotiate()
        _works(again, victim_tap)
        again.close()
    finally:
        bad.close()
        good.close()
