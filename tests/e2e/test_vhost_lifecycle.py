"""A vhost-user guest through everything that can happen to it and to butterflyd.

One lab host; guest ``g`` on a vhost-user vnic (QEMU with ``reconnect=1``, and
``reboot -f`` resetting the machine rather than ending QEMU), filtered by a group that
lets ICMP and TCP 7001 in but not TCP 7002; a NETNS vnic ``p`` in the same VNI talks to
it. The tests run in file order on the same guest, each leaving it connected (the last
deletes its vnic): a guest reboot, a QEMU restart, a SIGTERM and a kill -9 of the
daemon, a misbehaving frontend, nic_del. After each, traffic and filtering are checked
as they were before.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from vhost_helpers import (
    RebootableGuest,
    add_vhost_vnic,
    is_socket,
    open_sg,
    pings,
    set_mtu,
    vhost_guest,
    wait_gone,
    wait_pings,
    worker_pids,
)

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import tap_name
from butterfly_lab.guest import Guest, GuestImage
from butterfly_lab.lab import Host, Lab, Vm, wait_for

pytestmark = [pytest.mark.root, pytest.mark.qemu]

VNI = 1401
SUBNET = "10.141.0.0/24"
G_IP, P_IP = "10.141.0.1", "10.141.0.2"
G_MAC, P_MAC = "52:54:00:14:01:01", "52:54:00:14:01:02"
ALLOWED, BLOCKED = 7001, 7002


@dataclass
class Setup:
    host: Host
    guest: RebootableGuest
    peer: Vm
    socket: Path


def _serve_ports(guest: Guest) -> None:
    """TCP echo servers in the guest (they end with its kernel: again after each boot)."""
    set_mtu(guest)
    for port in (ALLOWED, BLOCKED):
        guest.check(f"setsid nc -ll -p {port} -e /bin/cat </dev/null >/dev/null 2>&1 &")


def _works_as_before(setup: Setup, what: str) -> None:
    """The guest is back: it pings its peer, and its group filters as it did."""
    wait_pings(setup.guest, P_IP, f"{what}: the guest's traffic")
    assert setup.peer.reaches("tcp", G_IP, ALLOWED), f"{what}: the allowed port is closed"
    assert setup.peer.blocked("tcp", G_IP, BLOCKED, timeout=1), f"{what}: filtering is gone"
    result = setup.peer.ping(G_IP)
    assert result.received == result.transmitted, result.output


def _warnings(host: Host) -> list[str]:
    return [line for line in host.daemon.log().splitlines() if " WARNING " in line]


@pytest.fixture(scope="module")
def setup(lab: Lab, guest_image: GuestImage, vhost_loop: str) -> Iterator[Setup]:
    host = lab.host(extra_args=["--vhost-loop", vhost_loop])
    open_sg(host)
    host.cli(
        "sg", "add", "guard",
        "+", "sg", "rule", "add", "guard", "--ip-proto", "icmp", "--cidr", SUBNET,
        "+", "sg", "rule", "add", "guard", "--ip-proto", "tcp", "--port", str(ALLOWED),
        "--cidr", SUBNET,
    )  # fmt: skip
    path = add_vhost_vnic(host, "g", mac=G_MAC, vni=VNI, ip=G_IP, sgs=("guard",))
    # the workers start with the first vhost-user vnic
    assert f"moving frames with the {vhost_loop} loop" in host.daemon.log()
    peer = lab.vm()
    host.add_vnic("p", vm=peer, mac=P_MAC, vni=VNI, ips=[P_IP], security_groups=["open"])
    guest = vhost_guest(
        guest_image, f"bfe{os.getpid()}g", path, mac=G_MAC, ip=G_IP, rebootable=True
    )
    assert isinstance(guest, RebootableGuest)
    with guest:
        guest.boot()
        _serve_ports(guest)
        made = Setup(host, guest, peer, path)
        _works_as_before(made, "first boot")
        yield made


def test_status_names_the_loop(setup: Setup, vhost_loop: str) -> None:
    """The loop is shown where the fast path is, not only in the log."""
    expected = {"c": "vhost loop: c", "python": "vhost loop: python (--vhost-loop python)"}
    assert expected[vhost_loop] in setup.host.cli("status")


def test_a_guest_reboot_keeps_its_vnic(setup: Setup) -> None:
    setup.guest.reboot()
    _serve_ports(setup.guest)
    _works_as_before(setup, "after a guest reboot")
    assert not _warnings(setup.host)


def test_a_qemu_restart_reconnects_to_the_same_vnic(setup: Setup) -> None:
    setup.guest.restart()
    _serve_ports(setup.guest)
    _works_as_before(setup, "after a QEMU restart")
    assert not _warnings(setup.host)


def test_a_daemon_stopped_and_started_again_takes_the_guest_back(setup: Setup) -> None:
    host = setup.host
    workers = worker_pids(host.daemon.pid)
    assert workers, "the daemon runs no vhost worker"
    host.stop()
    wait_gone(workers, "the workers to stop with the daemon")
    assert not setup.socket.exists()
    assert setup.guest.pid is not None and os.path.exists(f"/proc/{setup.guest.pid}")
    host.start()
    assert is_socket(setup.socket)
    _works_as_before(setup, "after SIGTERM and a restart")


def test_a_daemon_killed_and_started_again_takes_the_guest_back(setup: Setup) -> None:
    host = setup.host
    workers = worker_pids(host.daemon.pid)
    assert workers, "the daemon runs no vhost worker"
    host.kill()
    wait_gone(workers, "the workers to end with the killed daemon")
    host.start()
    assert is_socket(setup.socket)
    _works_as_before(setup, "after kill -9 and a restart")


def test_a_misbehaving_frontend_is_disconnected_and_harms_nobody(setup: Setup) -> None:
    host = setup.host
    evil = add_vhost_vnic(host, "evil", mac="52:54:00:14:01:66", vni=VNI, ip="10.141.0.66")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as attacker:
            attacker.connect(str(evil))
            # SET_MEM_TABLE claiming a megabyte of payload, then garbage
            attacker.sendall(struct.pack("<III", 5, 1, 1 << 20) + os.urandom(512))
            wait_for(
                lambda: any("vnic evil: disconnecting frontend" in w for w in _warnings(host)),
                "the misbehaving frontend's disconnection to be logged",
            )
            assert attacker.recv(1) == b"", "the backend kept the connection"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as intruder:
            intruder.connect(str(setup.socket))
            wait_for(
                lambda: any("vnic g: refused a second frontend" in w for w in _warnings(host)),
                "a second frontend on g's socket to be refused",
            )
        assert host.call(MessageV0.Request(nic_list=True)).nic_list
        _works_as_before(setup, "after a misbehaving frontend")
    finally:
        host.delete_vnic("evil")


def test_nic_del_disconnects_the_guest_cleanly(setup: Setup) -> None:
    host = setup.host
    warnings = len(_warnings(host))
    host.delete_vnic("g")
    assert not setup.socket.exists()
    assert tap_name("g") not in host.ip("link", "show")
    wait_for(
        lambda: "vnic g: frontend disconnected" in host.daemon.log(),
        "the guest's disconnection to be logged",
    )
    assert len(_warnings(host)) == warnings, _warnings(host)[warnings:]
    assert setup.guest.pid is not None and os.path.exists(f"/proc/{setup.guest.pid}")
    assert not pings(setup.guest, P_IP, count=1)
