"""Life cycle: rings stopped and restarted within a session, workers restarted."""

import os
import signal
import struct
from collections.abc import Callable

import pytest

from butterfly.vhost import VhostSupervisor
from butterfly.vhost.protocol import Request

from .conftest import ServerFactory, TapSocket, vhost_warnings, wait_for
from .frontend import Frontend

pytestmark = pytest.mark.root

FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x88\xb5" + b"life".ljust(50, b".")


def test_vring_base_is_saved_and_restored(
    server_factory: ServerFactory,
    frontend: Callable[[str], Frontend],
    tap_socket: Callable[[str], TapSocket],
) -> None:
    """What QEMU does around a guest reset: GET_VRING_BASE stops the ring and
    says where it stopped; the ring restarts from the base it is given."""
    server = server_factory()
    sock = tap_socket(server.tap_name)
    fe = frontend(server.socket_path)
    fe.negotiate()
    for _ in range(3):
        fe.transmit(FRAME)
    fe.wait_used(1, 3)
    fe.send(Request.GET_VRING_BASE, struct.pack("<II", 1, 0))
    assert fe.receive() == (Request.GET_VRING_BASE, struct.pack("<II", 1, 3))
    fe.transmit(FRAME)  # the ring is stopped: nothing happens
    fe.send(Request.SET_VRING_BASE, struct.pack("<II", 1, 3))
    fe.send(Request.SET_VRING_KICK, struct.pack("<Q", 1), [fe.rings[1].kick])
    assert len(fe.wait_used(1, 1)) == 1
    for _ in range(4):
        assert sock.incoming() == FRAME
    assert server.counters().from_guest_packets == 4


def test_a_dead_worker_is_replaced_and_serves_its_vnics_again(
    supervisor: VhostSupervisor,
    server_factory: ServerFactory,
    frontend: Callable[[str], Frontend],
    tap_socket: Callable[[str], TapSocket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = server_factory()
    sock = tap_socket(server.tap_name)
    fe = frontend(server.socket_path)
    fe.negotiate()
    fe.transmit(FRAME)
    assert sock.incoming() == FRAME
    [pid] = supervisor.worker_pids()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: supervisor.worker_pids() != [pid], "a new worker")
    wait_for(lambda: not fe.is_connected(), "the old session to end")
    wait_for(lambda: any("died" in m for m in vhost_warnings(caplog)), "the death to be logged")
    again = frontend(server.socket_path)
    again.negotiate()
    again.transmit(FRAME)
    assert sock.incoming() == FRAME
    assert server.counters().from_guest_packets == 2  # counters survive the worker
