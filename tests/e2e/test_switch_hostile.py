"""The issue's main exploit, through a real butterflyd: a VM driving the host's API.

butterflyd listens on tcp://0.0.0.0:9999 in clear text (the original's
default) in a host namespace. A VM that routes the host's underlay address
through its own interface (on-link: it ARPs for it on its VNI) tries
``butterfly sg add`` against it, though the host even has a route back to
it; a host on the underlay (the positive control) does the same and
succeeds. (With butterfly's two input hooks deleted, the VM's group is
added: the attack is a real one.) The host's stack never sees the VM's
attempt (no SYN-RECV, no neighbour entry), and its state holds only the
control's group.
"""

from __future__ import annotations

import os

import pytest

from butterfly.dataplane.naming import bridge_name, tap_name
from butterfly_lab.daemon import DaemonProcess
from butterfly_lab.lab import Lab, Netns, butterfly_cli, wait_for

pytestmark = pytest.mark.root

VNI = 420
PORT = 9999


def _cli(netns: Netns, address: str, *argv: str) -> str:
    return netns.exec(
        *butterfly_cli(), "-e", f"tcp://{address}:{PORT}", "-t", "2000", *argv, check=False
    )


def test_a_vm_cannot_reach_the_hosts_api(lab: Lab) -> None:
    host = lab.host(start=False)
    other = lab.host(start=False)
    daemon = DaemonProcess(
        os.path.join(host.folder, "wildcard"), netns=host.name, dataplane=True,
        endpoint=f"tcp://0.0.0.0:{PORT}", extra_args=["--ip", host.address],
    )  # fmt: skip
    os.makedirs(daemon.directory, exist_ok=True)
    daemon.spawn()
    try:
        wait_for(lambda: " ready: serving on " in daemon.log(), "butterflyd ready", timeout=30)
        assert "listens on every address of this host without an encryption key" in daemon.log()
        vm = lab.vm()
        added = _cli(
            host, "127.0.0.1", "nic", "add", "--id", "atk", "--type", "netns", "--path",
            vm.name, "--mac", "52:54:00:00:42:01", "--vni", str(VNI), "--ip", "10.42.0.1",
        )  # fmt: skip
        assert "error" not in added.lower(), added
        vm.ip("route", "add", f"{host.address4}/32", "dev", tap_name("atk"))
        # The worst host: one with a path back to the VM (here a route through
        # the VNI's bridge; a router or another host would do as well).
        host.ip("route", "add", "10.42.0.1/32", "dev", bridge_name(VNI))
        from_vm = _cli(vm, host.address4, "sg", "add", "from-vm")
        from_underlay = _cli(other, host.address4, "sg", "add", "from-underlay")
        groups = _cli(host, "127.0.0.1", "sg", "list").split()
        assert groups == ["from-underlay"], (from_vm, from_underlay)
        assert host.exec("ss", "-Hnt", "state", "syn-recv") == ""
        assert host.ip("neigh", "show", "dev", bridge_name(VNI)).strip() == ""
        assert host.ip("neigh", "show", "10.42.0.1").strip() == ""
    finally:
        daemon.stop()
        daemon.close()
