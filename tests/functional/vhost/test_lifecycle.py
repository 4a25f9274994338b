"""Life cycle: rings stopped and restarted within a session, workers restarted,
workers gone with a killed daemon."""

import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from butterfly.vhost import VhostSupervisor, VhostUserServer
from butterfly.vhost.protocol import Request

from .conftest import PmdProcess, ServerFactory, Taps, TapSocket, vhost_warnings, wait_for
from .frontend import Frontend

pytestmark = pytest.mark.root

FRAME = bytes.fromhex("ffffffffffff020000000001") + b"\x88\xb5" + b"life".ljust(50, b".")

# A stand-in for butterflyd: a process owning a supervisor that serves one vnic.
_DAEMON = """
import sys, time
from butterfly.vhost import VhostSupervisor, VhostUserServer
supervisor = VhostSupervisor(workers=2)
supervisor.start()
VhostUserServer(
    supervisor=supervisor, vnic="v", socket_path=sys.argv[1], tap_name=sys.argv[2]
).start()
print(*supervisor.worker_pids(), flush=True)
time.sleep(600)
"""


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
    wait_for(lambda: server.counters().from_guest_packets == 4, "the frames to be counted")


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
    # The worker publishes its counters after the burst that wrote the frame: a kill
    # between the two would lose that count, which is what a crash does, not a bug.
    wait_for(lambda: server.counters().from_guest_packets == 1, "the frame to be counted")
    [pid] = supervisor.worker_pids()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: supervisor.worker_pids() != [pid], "a new worker")
    wait_for(lambda: not fe.is_connected(), "the old session to end")
    wait_for(lambda: any("died" in m for m in vhost_warnings(caplog)), "the death to be logged")
    again = frontend(server.socket_path)
    again.negotiate()
    again.transmit(FRAME)
    assert sock.incoming() == FRAME
    # counters survive the worker: the new one counts on from the dead one's
    wait_for(lambda: server.counters().from_guest_packets == 2, "the second frame to be counted")


@pytest.mark.needs("dpdk-testpmd")
def test_workers_do_not_outlive_a_daemon_killed_while_they_are_busy(
    taps: Taps, tmp_path: Path, testpmd: Callable[..., PmdProcess]
) -> None:
    """kill -9 of the daemon ends its workers, even one busy at full rate, and they
    remove their sockets; a new daemon then serves the same path."""
    socket_path, tap = str(tmp_path / "qemu-vhost-v"), taps()
    daemon = subprocess.Popen(
        [sys.executable, "-c", _DAEMON, socket_path, tap], stdout=subprocess.PIPE, text=True
    )
    try:
        assert daemon.stdout is not None
        workers = [int(pid) for pid in daemon.stdout.readline().split()]
        assert len(workers) == 2
        pmd = testpmd(socket_path, "txonly")
        rx_packets = Path(f"/sys/class/net/{tap}/statistics/rx_packets")
        wait_for(lambda: int(rx_packets.read_text()) > 10_000, "the worker to be busy")
        daemon.kill()
        daemon.wait()
        wait_for(
            lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers),
            "the workers to exit",
        )
        assert not os.path.exists(socket_path)
        pmd.stop(signal.SIGKILL)
    finally:
        daemon.kill()
        daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()
    with VhostSupervisor(workers=1) as supervisor:
        VhostUserServer(
            supervisor=supervisor, vnic="v", socket_path=socket_path, tap_name=tap
        ).start()
        again = testpmd(socket_path, "rxonly")
        wait_for(lambda: supervisor.counters("v").connected, "testpmd to connect to the new one")
        again.stop()


def test_workers_are_as_many_and_as_nice_as_asked() -> None:
    """butterflyd makes its workers nicer than itself, so that the API comes first."""
    with VhostSupervisor(workers=3, nice=9) as supervisor:
        pids = supervisor.worker_pids()
        assert len(pids) == 3
        wait_for(lambda: [_niceness(pid) for pid in pids] == [9, 9, 9], "niceness 9")


def _niceness(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])
