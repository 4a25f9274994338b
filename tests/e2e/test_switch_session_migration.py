"""A VM's firewall sessions follow it to another host: nic_export, then nic_import.

Two lab hosts with their own butterflyd. A server vnic on host A; a VM vnic,
first on A, whose inbound traffic no group admits (it has no group): the
server's data reaches it only because its connection is established. The VM
"migrates": its sessions are exported on A (``butterfly nic export``), its vnic
deleted there and added on B into the same namespace (the same kernel, the
same TCP socket), the sessions imported on B (``butterfly nic import``).
The server's next data then reaches the VM on B through the same connection,
no new handshake. Without the import it is dropped, and the same connection
recovers once the import is made (the positive control of the negative case).
Blobs of another VNI, corrupted, truncated or of another version are refused
and change nothing.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from switch_helpers import open_sg

from butterfly.model.sessions import decode_sessions
from butterfly_lab.lab import Host, Lab, LabError, Vm, wait_for

pytestmark = pytest.mark.root

VNI = 4242
SERVER_IP = "10.42.0.100"
PORT = 7100

# Serves one connection on PORT+N; sends the text of every file OUTBOX-* that appears.
SERVER = """
import os, socket, sys, time
port, outbox = int(sys.argv[1]), sys.argv[2]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", port))
listener.listen()
print("listening", flush=True)
connection, _ = listener.accept()
print("accepted", flush=True)
while True:
    for name in sorted(os.listdir(outbox)):
        path = os.path.join(outbox, name)
        with open(path) as file:
            connection.sendall(file.read().encode())
        os.unlink(path)
        print("sent", name, flush=True)
    time.sleep(0.05)
"""

# Connects, then only ever reads: it sends nothing the firewall could learn from.
CLIENT = """
import socket, sys
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
connection.settimeout(None)
print("connected", flush=True)
while True:
    data = connection.recv(4096)
    if not data:
        print("closed", flush=True)
        break
    print("got", data.decode().strip(), flush=True)
"""


class Lines:
    """A process's output lines, read as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        os.set_blocking(process.stdout.fileno(), False)  # type: ignore[union-attr]
        self.lines: list[str] = []

    def read(self) -> list[str]:
        assert self.process.stdout is not None
        while line := self.process.stdout.readline():
            self.lines.append(line.strip())
        return self.lines

    def wait(self, line: str, timeout: float = 10) -> None:
        wait_for(lambda: line in self.read(), f"{line!r} from a lab process", timeout)


@dataclass
class Connection:
    """One TCP connection from a VM to the server, and how to push data down it."""

    vm: Vm
    vnic: str
    ip: str
    mac: str
    client: Lines
    outbox: str
    sent: int = 0

    def push(self, text: str) -> None:
        self.sent += 1
        with open(os.path.join(self.outbox, f"{self.sent:03d}"), "w") as file:
            file.write(text + "\n")

    def received(self, text: str) -> bool:
        return f"got {text}" in self.client.read()


@pytest.fixture(scope="module")
def hosts(lab: Lab) -> list[Host]:
    made = lab.hosts(2)
    open_sg(made[0])
    return made


@pytest.fixture(scope="module")
def server(lab: Lab, hosts: list[Host]) -> Vm:
    vm = lab.vm()
    hosts[0].add_vnic(
        "srv", vm=vm, mac="52:54:00:42:00:64", vni=VNI, ips=[SERVER_IP], security_groups=["open"]
    )
    return vm


def _connect(lab: Lab, host: Host, server: Vm, index: int, folder: str) -> Connection:
    vm = lab.vm()
    vnic, ip, mac = f"vm{index}", f"10.42.0.{index}", f"52:54:00:42:00:{index:02x}"
    host.add_vnic(vnic, vm=vm, mac=mac, vni=VNI, ips=[ip])  # no group: nothing admitted in
    outbox = os.path.join(folder, f"outbox{index}")
    os.makedirs(outbox)
    listening = Lines(server.popen("python3", "-u", "-c", SERVER, str(PORT + index), outbox))
    listening.wait("listening")
    client = Lines(vm.popen("python3", "-u", "-c", CLIENT, SERVER_IP, str(PORT + index)))
    client.wait("connected")
    connection = Connection(vm, vnic, ip, mac, client, outbox)
    connection.push("hello")
    wait_for(lambda: connection.received("hello"), "data over the fresh connection")
    return connection


def _migrate(source: Host, destination: Host, connection: Connection) -> None:
    """The vnic leaves ``source`` and is made again on ``destination``, same namespace."""
    source.delete_vnic(connection.vnic)
    destination.add_vnic(
        connection.vnic, vm=connection.vm, mac=connection.mac, vni=VNI, ips=[connection.ip]
    )


@pytest.fixture
def folder(tmp_path: os.PathLike[str]) -> Iterator[str]:
    yield str(tmp_path)


def test_sessions_follow_the_vm_to_another_host(
    lab: Lab, hosts: list[Host], server: Vm, folder: str
) -> None:
    a, b = hosts
    moved = _connect(lab, a, server, 1, folder)
    blob = os.path.join(folder, "vm1.sessions")
    a.cli("nic", "export", "vm1", blob)
    with open(blob, "rb") as file:
        exported = decode_sessions(file.read())
    assert (exported.vni, exported.nic_id) == (VNI, "vm1")
    ports = {(s.protocol, s.original.dport) for s in exported.sessions}
    assert (6, PORT + 1) in ports, exported

    _migrate(a, b, moved)
    _refusals_change_nothing(a, b, blob, folder)
    b.cli("nic", "import", "vm1", blob)
    moved.push("after-migration")
    wait_for(lambda: moved.received("after-migration"), "data on B through the imported session")
    assert "connected" in moved.client.lines and moved.client.lines.count("connected") == 1


def test_without_the_import_the_replies_are_dropped(
    lab: Lab, hosts: list[Host], server: Vm, folder: str
) -> None:
    a, b = hosts
    stranded = _connect(lab, a, server, 2, folder)
    blob = os.path.join(folder, "vm2.sessions")
    a.cli("nic", "export", "vm2", blob)
    _migrate(a, b, stranded)
    stranded.push("dropped")
    time.sleep(3)
    assert not stranded.received("dropped"), stranded.client.lines
    # The same connection, once its sessions are imported: TCP's retransmission passes.
    b.cli("nic", "import", "vm2", blob)
    wait_for(lambda: stranded.received("dropped"), "the retransmission after the import", 20)


def _refusals_change_nothing(a: Host, b: Host, blob: str, folder: str) -> None:
    """Blobs of another VNI, corrupted, truncated, another version: refused, no change."""
    with open(blob, "rb") as file:
        good = file.read()
    a.add_vnic("other", mac="52:54:00:43:00:01", vni=VNI + 1, ips=["10.43.0.1"])
    other = os.path.join(folder, "other.sessions")
    a.cli("nic", "export", "other", other)
    with open(other, "rb") as file:
        other_vni = file.read()
    a.delete_vnic("other")
    before = os.path.join(folder, "before")
    b.cli("nic", "export", "vm1", before)
    bad = {
        "other-vni": (other_vni, f"is in vni {VNI}, the blob's sessions are of vni {VNI + 1}"),
        "corrupted": (good[:-4] + bytes([good[-4] ^ 1]) + good[-3:], "corrupted"),
        "truncated": (good[: len(good) // 2], "corrupted or truncated"),
        "version": (good[:8] + b"\x07" + good[9:], "format version 7"),
    }
    for name, (data, words) in bad.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as file:
            file.write(data)
        with pytest.raises(LabError, match=words):
            b.cli("nic", "import", "vm1", path)
        after = os.path.join(folder, f"after-{name}")
        b.cli("nic", "export", "vm1", after)
        assert _flows(after) == _flows(before), name


def _flows(path: str) -> set[tuple[object, ...]]:
    """The sessions of an export file, without their ever-decreasing timeouts."""
    with open(path, "rb") as file:
        return {(s.protocol, s.original, s.reply) for s in decode_sessions(file.read()).sessions}
