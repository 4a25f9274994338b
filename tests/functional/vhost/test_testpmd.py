"""The backend against DPDK's virtio-user (dpdk-testpmd): a frontend nobody here wrote."""

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import PmdProcess, ServerFactory, TapSocket, wait_for

pytestmark = [pytest.mark.root, pytest.mark.needs("dpdk-testpmd")]


def _stat(output: str, name: str) -> int:
    """testpmd's last "NAME: value" for port 0 (printed when it exits)."""
    values = re.findall(rf"{name}:\s+(\d+)", output)
    assert values, f"no {name} in testpmd's output:\n{output[-2000:]}"
    return int(values[-1])


def test_txonly_frames_reach_the_tap(
    server_factory: ServerFactory,
    testpmd: Callable[..., PmdProcess],
    tap_socket: Callable[[str], TapSocket],
) -> None:
    server = server_factory()
    sock = tap_socket(server.tap_name)
    pmd = testpmd(server.socket_path, "txonly")
    frame = sock.incoming()
    assert len(frame) == 64  # testpmd txonly: 64-byte frames (--txpkts default)
    assert frame[12:14] == b"\x08\x00"  # IPv4 (UDP) as txonly builds it
    wait_for(lambda: server.counters().from_guest_packets >= 10_000, "10,000 frames")
    output = pmd.stop()
    assert _stat(output, "TX-packets") >= server.counters().from_guest_packets - 512
    wait_for(lambda: not server.counters().connected, "testpmd to disconnect")


def test_frames_flow_both_ways_through_io_forwarding(
    server_factory: ServerFactory,
    testpmd: Callable[..., PmdProcess],
    tap_socket: Callable[[str], TapSocket],
    tmp_path: Path,
) -> None:
    server = server_factory()
    sock = tap_socket(server.tap_name)
    # io forwarding drops what a full transmit ring refuses (our worker, short
    # of CPU on a busy machine, drains it late: testpmd's TX-dropped, not ours);
    # with retries testpmd waits for room, up to 0.1 s a burst.
    commands = tmp_path / "testpmd.cmd"
    commands.write_text("set burst tx delay 100 retry 1000\nset fwd io retry\n")
    pmd = testpmd(server.socket_path, "io", f"--cmdline-file={commands}")
    wait_for(lambda: server.counters().connected, "testpmd to connect")
    probe = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x88\xb5" + b"probe".ljust(50, b".")
    sock.sock.settimeout(0.2)

    def echoed() -> bool:
        sock.inject(probe)
        try:
            return sock.incoming() == probe
        except TimeoutError:
            return False

    wait_for(echoed, "testpmd's receive ring to be ready")
    sock.sock.settimeout(10.0)
    frames = [probe[:14] + i.to_bytes(4, "big") + os.urandom(42 + i % 1000) for i in range(300)]
    for frame in frames:
        sock.inject(frame)
    back: set[bytes] = set()
    while len(back) < len(frames):
        try:
            data = sock.incoming()
        except TimeoutError:
            raise AssertionError(f"{len(back)} frames back; {server.counters()}") from None
        if data != probe:
            back.add(data)
    assert back == set(frames)
    output = pmd.stop()
    assert _stat(output, "RX-packets") >= len(frames)
    counters = server.counters()
    assert counters.to_guest_packets >= len(frames)
    assert counters.from_guest_packets >= len(frames)
    assert counters.disconnects == 0


def test_frontend_crash_and_reconnect(
    server_factory: ServerFactory,
    testpmd: Callable[..., PmdProcess],
    tap_socket: Callable[[str], TapSocket],
) -> None:
    server = server_factory()
    sock = tap_socket(server.tap_name)
    first = testpmd(server.socket_path, "txonly")
    sock.incoming()
    first.stop(signal.SIGKILL)
    wait_for(lambda: not server.counters().connected, "the killed testpmd's disconnect")
    before = server.counters().from_guest_packets
    second = testpmd(server.socket_path, "txonly")
    wait_for(lambda: server.counters().from_guest_packets > before + 1000, "traffic again")
    second.stop()
    assert server.counters().disconnects == 0


def test_stop_removes_the_socket_and_start_recreates_it(
    server_factory: ServerFactory,
    testpmd: Callable[..., PmdProcess],
) -> None:
    server = server_factory()
    pmd = testpmd(server.socket_path, "rxonly")
    wait_for(lambda: server.counters().connected, "testpmd to connect")
    server.stop()
    assert not os.path.exists(server.socket_path)
    pmd.stop()
    server.start()
    assert os.path.exists(server.socket_path)
    assert not server.counters().connected
    again = testpmd(server.socket_path, "rxonly")
    wait_for(lambda: server.counters().connected, "a new testpmd to connect")
    again.stop()
