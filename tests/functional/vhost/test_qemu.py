"""QEMU 7.x as the frontend: its handshake, and its reconnection to a restarted server.

No guest boots: QEMU negotiates with the backend as soon as it starts, which
is enough to prove the protocol and the reconnect=1 life cycle; guests moving
traffic are the end-to-end tests' business.
"""

import os
import subprocess
from collections.abc import Iterator

import pytest

from butterfly.vhost import VhostUserServer

from .conftest import ServerFactory, vhost_warnings, wait_for

pytestmark = [pytest.mark.root, pytest.mark.qemu]


@pytest.fixture
def qemu() -> Iterator[list["subprocess.Popen[bytes]"]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def _start_qemu(server: VhostUserServer) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "128",
            "-display",
            "none",
            "-nodefaults",
            "-S",
            "-object",
            "memory-backend-memfd,id=mem,size=128M,share=on",
            "-numa",
            "node,memdev=mem",
            "-chardev",
            f"socket,id=c0,path={server.socket_path},reconnect=1",
            "-netdev",
            "vhost-user,id=n0,chardev=c0",
            "-device",
            "virtio-net-pci,netdev=n0,vectors=0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_qemu_negotiates_and_comes_back_after_a_server_restart(
    server_factory: ServerFactory,
    qemu: list["subprocess.Popen[bytes]"],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = server_factory()
    qemu.append(_start_qemu(server))
    wait_for(lambda: server.counters().connected, "QEMU to connect")
    server.stop()
    assert not os.path.exists(server.socket_path)
    server.start()
    wait_for(lambda: server.counters().connected, "QEMU to reconnect")
    assert qemu[0].poll() is None
    assert server.counters().disconnects == 0
    assert not vhost_warnings(caplog)
