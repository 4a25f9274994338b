"""Two hosts, each with its own butterflyd, joined by VXLAN over a veth underlay.

Multicast flooding (the default) on an IPv4 underlay and on an IPv6 underlay: ping, TCP
and UDP between VMs of one VNI, over IPv4 and IPv6 inside the VMs, and isolation of
VNIs across hosts even with identical IPs. Static peers are in test_switch_peers.py.
"""

from __future__ import annotations

import json

import pytest
from switch_helpers import open_sg

from butterfly.dataplane.naming import vxlan_name
from butterfly_lab.lab import Host, Lab, Vm

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def v4_hosts(lab: Lab) -> list[Host]:
    hosts = lab.hosts(2)
    for host in hosts:
        open_sg(host)
    return hosts


@pytest.fixture(scope="module")
def v6_hosts(lab: Lab) -> list[Host]:
    hosts = lab.hosts(2, v6=True)
    for host in hosts:
        open_sg(host)
    return hosts


def pair(lab: Lab, hosts: list[Host], vni: int, ips: list[list[str]], tag: str) -> list[Vm]:
    """One VM per host in ``vni``, the i-th with ``ips[i]``, echo servers on port 7."""
    vms = []
    for index, (host, addresses) in enumerate(zip(hosts, ips, strict=True)):
        vm = lab.vm()
        host.add_vnic(
            f"{tag}{index}",
            vm=vm,
            mac=f"52:54:00:{vni >> 8:02x}:{vni & 0xFF:02x}:{index + 1:02x}",
            vni=vni,
            ips=addresses,
            security_groups=["open"],
        )
        for proto in ("tcp", "udp"):
            vm.listen(proto, 7)
            vm.listen(proto, 7, family=6)
        vms.append(vm)
    return vms


def vxlan_info(host: Host, vni: int) -> dict[str, object]:
    link = json.loads(host.ip("-d", "-j", "link", "show", vxlan_name(vni)))[0]
    info: dict[str, object] = link["linkinfo"]["info_data"]
    return info


def all_kinds_of_traffic(one: Vm, two: Vm, ip4: str, ip6: str) -> None:
    for address in (ip4, ip6):
        result = one.ping(address)
        assert result.received == result.transmitted == 3, result.output
        assert one.reaches("tcp", address, 7), f"TCP to {address}"
        assert one.reaches("udp", address, 7), f"UDP to {address}"


def test_one_vni_across_hosts_ping_tcp_udp_ipv4_and_ipv6(lab: Lab, v4_hosts: list[Host]) -> None:
    one, two = pair(
        lab, v4_hosts, 100, [["10.100.0.1", "2001:db8:100::1"], ["10.100.0.2", "2001:db8:100::2"]],
        "m",
    )  # fmt: skip
    info = vxlan_info(v4_hosts[0], 100)
    assert info["group"] == "230.0.0.100" and info["local"] == v4_hosts[0].address
    all_kinds_of_traffic(one, two, "10.100.0.2", "2001:db8:100::2")
    all_kinds_of_traffic(two, one, "10.100.0.1", "2001:db8:100::1")


def test_vnis_are_isolated_across_hosts(lab: Lab, v4_hosts: list[Host]) -> None:
    """VNI 101 reuses VNI 102's first IP: each side reaches its own VNI only."""
    a1, a2 = pair(lab, v4_hosts, 101, [["10.101.0.1"], ["10.101.0.2"]], "i")
    b1, b2 = pair(lab, v4_hosts, 102, [["10.101.0.1"], ["10.101.0.3"]], "j")
    assert a1.reaches("icmp", "10.101.0.2")
    assert b1.reaches("icmp", "10.101.0.3")
    assert a1.blocked("icmp", "10.101.0.3")
    assert a1.blocked("tcp", "10.101.0.3", 7)
    assert b1.blocked("icmp", "10.101.0.2")
    assert b1.blocked("udp", "10.101.0.2", 7)
    # Both .1 exist; each far side gets the one of its own VNI (distinct MACs).
    assert a2.reaches("icmp", "10.101.0.1") and b2.reaches("icmp", "10.101.0.1")
    for vm, last in ((a2, "65:01"), (b2, "66:01")):
        neighbours = json.loads(vm.ip("-j", "neigh", "show", "10.101.0.1"))
        assert neighbours[0]["lladdr"] == f"52:54:00:00:{last}", neighbours


def test_ipv6_underlay(lab: Lab, v6_hosts: list[Host]) -> None:
    one, two = pair(
        lab, v6_hosts, 200, [["10.200.0.1", "2001:db8:200::1"], ["10.200.0.2", "2001:db8:200::2"]],
        "s",
    )  # fmt: skip
    info = vxlan_info(v6_hosts[0], 200)
    assert info["group6"] == "ff05::e600:c8" and info["local6"] == v6_hosts[0].address
    all_kinds_of_traffic(one, two, "10.200.0.2", "2001:db8:200::2")
    # The inner traffic really crossed the IPv6 underlay.
    stats = json.loads(v6_hosts[1].ip("-s", "-j", "link", "show", vxlan_name(200)))[0]
    assert stats["stats64"]["rx"]["packets"] > 0
