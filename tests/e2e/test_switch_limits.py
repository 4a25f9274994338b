"""Connection caps through a real butterflyd: the ini-file defaults, a vnic's own cap set
with the CLI, and the host's table sized (and logged) at start-up.

The attacker floods new UDP flows from its own addresses (anti-spoofing on) to a
neighbour whose group admits everything; the host's table is read with
``conntrack`` inside the host's namespace.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from switch_helpers import open_sg

from butterfly.dataplane.naming import tap_name
from butterfly_lab.lab import Host, Lab, Vm, wait_for

pytestmark = pytest.mark.root

VNI = 410
DEFAULT_CAP = 60


def _mac(index: int) -> str:
    return f"52:54:00:00:41:{index:02x}"


def _ip(index: int) -> str:
    return f"10.41.0.{index}"


@pytest.fixture(scope="module")
def host(lab: Lab) -> Iterator[Host]:
    """A host whose ini file sets the vnics' default caps."""
    made = lab.host(start=False)
    ini = os.path.join(made.folder, "butterfly.ini")
    with open(ini, "w", encoding="utf-8") as file:
        file.write(f"[general]\nvnic-max-connections = {DEFAULT_CAP}\n")
    made.daemon.config_path = ini
    made.start()
    open_sg(made)
    yield made


def _vnic(host: Host, vm: Vm, index: int, *options: str) -> None:
    host.cli(
        "nic", "add", "--id", f"v{index}", "--type", "netns", "--path", vm.name,
        "--mac", _mac(index), "--vni", str(VNI), "--ip", _ip(index), "--sg", "open",
        "--enable-antispoof", *options,
    )  # fmt: skip


def _flood(vm: Vm, sender: int, receiver: int, flows: int) -> None:
    frames = [
        bytes(
            Ether(src=_mac(sender), dst=_mac(receiver))
            / IP(src=_ip(sender), dst=_ip(receiver))
            / UDP(sport=1024 + n, dport=9)
        ).hex()
        for n in range(flows)
    ]
    vm.agent.call("send_frames", ifname=tap_name(f"v{sender}"), frames=frames)


def _tracked(host: Host, index: int) -> int:
    listing = host.exec("conntrack", "-L", "-p", "udp", "-s", _ip(index), check=False)
    return len([line for line in listing.splitlines() if line.startswith("udp")])


def test_the_table_is_sized_and_logged_at_start_up(host: Host) -> None:
    log = host.daemon.log()
    assert "connection tracking: max " in log
    # The table's size is the host's (the root namespace's) to change: a daemon in
    # a namespace says so and leaves it; the timeouts are its namespace's own.
    assert "read-only in this network namespace" in log
    assert "udp_timeout_stream" in log
    stream = host.exec("sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout_stream")
    assert int(stream) <= 60
    assert f"a vnic may start {DEFAULT_CAP} connections" in log


def test_the_ini_files_cap_and_a_vnics_own_cap_from_the_cli(lab: Lab, host: Host) -> None:
    vms = {index: lab.vm() for index in (1, 2, 3, 4)}
    _vnic(host, vms[1], 1)
    _vnic(host, vms[2], 2)
    _vnic(host, vms[3], 3, "--max-connections", "15")
    _vnic(host, vms[4], 4, "--max-connections", "0")
    assert "max connections: 15" in host.cli("nic", "details", "v3")
    for sender in (1, 3, 4):
        _flood(vms[sender], sender, 2, 200)
    wait_for(lambda: _tracked(host, 4) == 200, "the uncapped vnic's 200 flows")
    assert DEFAULT_CAP - 10 <= _tracked(host, 1) <= DEFAULT_CAP
    assert 10 <= _tracked(host, 3) <= 15
    host.cli("nic", "update", "--id", "v1", "--max-connections", "0")
    _flood(vms[1], 1, 2, 200)
    wait_for(lambda: _tracked(host, 1) == 200, "v1's flows once its cap is lifted")
