"""The fast path's maps through the real bpf(2) calls: what a long-running daemon does to them."""

import pytest

from butterfly.dataplane.fastpath import FastPath, FastPort

from .conftest import Lab

pytestmark = [pytest.mark.root, pytest.mark.needs("ebpf-fast-path")]


def _port(ifindex: int, check_ip: bool = False) -> FastPort:
    return FastPort(
        ifindex=ifindex, vni=7, zone=3, mac="52:54:00:00:00:01", check_ip=check_ip,
        addresses=("10.0.0.1",) if check_ip else (),
    )  # fmt: skip


def test_ports_come_and_go_without_filling_the_maps(lab: Lab) -> None:
    """More vnics plugged and unplugged over time than any map holds (65,536):
    every entry of a port that went is removed, its counter too."""
    netns = lab.netns()
    fast = netns.run(FastPath)
    try:
        for ifindex in range(1, 70_001):
            fast.set({"a": _port(ifindex, check_ip=ifindex % 2 == 0)})
        fast.set({"a": None})
        assert fast.served() == {}
    finally:
        fast.close()


def test_an_updated_vnic_keeps_its_port_and_its_counter(lab: Lab) -> None:
    fast = lab.netns().run(FastPath)
    try:
        fast.set({"a": _port(5)})
        fast.set({"a": _port(5, check_ip=True)})
        assert fast.served() == {"a": _port(5, check_ip=True)}
        assert fast.forwarded(5) == (0, 0)
    finally:
        fast.close()
