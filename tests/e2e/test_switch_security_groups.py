"""Security groups through a real butterflyd: what a vnic lets in (and out) is what its
groups say, and nothing else.

A server vnic on host 1, a client on the same host and one on host 2 (over VXLAN), all
in one VNI. Each test gives the server the groups it needs (``nic sg set``, the CLI)
and probes with fresh connections: TCP and UDP echo, ICMP echo, IPv4 and IPv6. A
blocked probe is one that gets no answer at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from switch_helpers import BackgroundPing, open_sg

from butterfly_lab.lab import Host, Lab, Vm

pytestmark = pytest.mark.root

VNI = 300
SERVER4, SERVER6 = "10.30.0.10", "2001:db8:30::10"
NEAR4, NEAR6 = "10.30.0.11", "2001:db8:30::11"
FAR4, FAR6 = "10.30.0.12", "2001:db8:30::12"
TCP_PORTS = (80, 81, 8080)
UDP_PORTS = (53, 5000, 5005, 5010, 5011)


class Switch:
    def __init__(self, hosts: list[Host], server: Vm, near: Vm, far: Vm) -> None:
        self.host = hosts[0]
        self.hosts = hosts
        self.server, self.near, self.far = server, near, far

    def server_groups(self, *sg_ids: str) -> None:
        self.host.cli("nic", "sg", "set", "srv", *sg_ids)


@pytest.fixture(scope="module")
def module_switch(lab: Lab) -> Switch:
    hosts = lab.hosts(2)
    for host in hosts:
        open_sg(host)
    server, near, far = lab.vm(), lab.vm(), lab.vm()
    vnics = (
        (hosts[0], "srv", server, "52:54:00:00:30:10", (SERVER4, SERVER6), ()),
        (hosts[0], "near", near, "52:54:00:00:30:11", (NEAR4, NEAR6), ("open",)),
        (hosts[1], "far", far, "52:54:00:00:30:12", (FAR4, FAR6), ("open",)),
    )
    for host, vnic_id, vm, mac, ips, sgs in vnics:
        host.add_vnic(vnic_id, vm=vm, mac=mac, vni=VNI, ips=ips, security_groups=sgs)
        for family in (4, 6):
            for port in TCP_PORTS:
                vm.listen("tcp", port, family)
            for port in UDP_PORTS:
                vm.listen("udp", port, family)
    return Switch(hosts, server, near, far)


@pytest.fixture
def switch(module_switch: Switch) -> Iterator[Switch]:
    """The module's switch, the server back to no group at all after each test."""
    yield module_switch
    module_switch.server_groups()


def test_default_drop(switch: Switch) -> None:
    """No group, then a group without rules: nothing gets in, from either host."""
    for client in (switch.near, switch.far):
        assert client.blocked("icmp", SERVER4)
        assert client.blocked("icmp", SERVER6)
        assert client.blocked("tcp", SERVER4, 80)
        assert client.blocked("udp", SERVER6, 5005)
    switch.host.cli("sg", "add", "empty")
    switch.server_groups("empty")
    assert switch.near.blocked("icmp", SERVER4)
    assert switch.far.blocked("tcp", SERVER6, 80)
    # The clients themselves are open: the switch, not the network, is what blocks.
    assert switch.server.reaches("icmp", NEAR4)


def test_port_and_range_rules(switch: Switch) -> None:
    switch.host.cli(
        "sg", "add", "web",
        "+", "sg", "rule", "add", "web", "--ip-proto", "tcp", "--port", "80", "--cidr", "0.0.0.0/0",
        "+", "sg", "rule", "add", "web", "--ip-proto", "tcp", "--port", "80", "--cidr", "::/0",
        "+", "sg", "rule", "add", "web", "--ip-proto", "udp", "--port-start", "5000",
        "--port-end", "5010", "--cidr", "0.0.0.0/0",
    )  # fmt: skip
    switch.server_groups("web")
    assert switch.far.reaches("tcp", SERVER4, 80)
    assert switch.far.reaches("tcp", SERVER6, 80)
    assert switch.near.blocked("tcp", SERVER4, 81)
    for port in (5000, 5005, 5010):
        assert switch.near.reaches("udp", SERVER4, port), port
    assert switch.near.blocked("udp", SERVER4, 5011)
    assert switch.near.blocked("udp", SERVER6, 5005), "the range was given for IPv4 only"
    assert switch.near.blocked("icmp", SERVER4)


def test_cidr_sources(switch: Switch) -> None:
    switch.host.cli(
        "sg", "add", "cidr",
        "+", "sg", "rule", "add", "cidr", "--ip-proto", "tcp", "--port", "80",
        "--cidr", f"{NEAR4}/32",
        "+", "sg", "rule", "add", "cidr", "--ip-proto", "tcp", "--port", "80",
        "--cidr", "2001:db8:30::8/125",
    )  # fmt: skip
    switch.server_groups("cidr")
    assert switch.near.reaches("tcp", SERVER4, 80)
    assert switch.far.blocked("tcp", SERVER4, 80)
    # ::8/125 holds ::8-::f: near (::11) and far (::12) are both outside, then inside.
    assert switch.near.blocked("tcp", SERVER6, 80)
    switch.host.cli(
        "sg", "rule", "add", "cidr", "--ip-proto", "tcp", "--port", "80",
        "--cidr", "2001:db8:30::10/124",
    )  # fmt: skip
    assert switch.near.reaches("tcp", SERVER6, 80)
    assert switch.far.reaches("tcp", SERVER6, 80)


def test_member_sources_added_and_removed_while_traffic_runs(switch: Switch) -> None:
    """A rule naming group "clients" (which does not exist yet) lets its members in:
    a member added lets new traffic in at once, a member removed stops new connections,
    while an established one lives on (stateful filtering)."""
    switch.host.cli(
        "sg", "add", "members",
        "+", "sg", "rule", "add", "members", "--ip-proto", "tcp", "--port", "80",
        "--sg-members", "clients",
        "+", "sg", "rule", "add", "members", "--ip-proto", "icmp", "--sg-members", "clients",
    )  # fmt: skip
    switch.server_groups("members")
    ping = BackgroundPing(switch.far, SERVER4, interval=0.05)
    try:
        assert switch.far.blocked("tcp", SERVER4, 80)
        assert ping.replies == 0

        switch.host.cli("sg", "member", "add", "clients", FAR4)
        ping.wait_replies(5)
        assert switch.far.reaches("tcp", SERVER4, 80)
        held = switch.far.agent.call("hold", host=SERVER4, port=80, timeout=3)
        assert held["ok"], held
        assert switch.far.blocked("tcp", SERVER6, 80)
        switch.host.cli("sg", "member", "add", "clients", FAR6)
        assert switch.far.reaches("tcp", SERVER6, 80)
        assert switch.near.blocked("tcp", SERVER4, 80), "near is no member"

        switch.host.cli("sg", "member", "del", "clients", FAR4)
        assert switch.far.blocked("tcp", SERVER4, 80)
        assert switch.far.agent.call("echo", conn_id=held["id"], timeout=3)["ok"]
        assert switch.far.reaches("tcp", SERVER6, 80)
        assert ping.running(), "".join(ping.lines)
    finally:
        ping.stop()
    switch.host.cli("sg", "member", "del", "clients", FAR6)
    assert switch.far.blocked("tcp", SERVER6, 80)


def test_two_groups_add_up(switch: Switch) -> None:
    switch.host.cli(
        "sg", "add", "tcp80", "udp53",
        "+", "sg", "rule", "add", "tcp80", "--ip-proto", "tcp", "--port", "80",
        "--cidr", "0.0.0.0/0",
        "+", "sg", "rule", "add", "udp53", "--ip-proto", "udp", "--port", "53",
        "--cidr", "0.0.0.0/0",
    )  # fmt: skip
    switch.server_groups("tcp80", "udp53")
    assert switch.near.reaches("tcp", SERVER4, 80)
    assert switch.near.reaches("udp", SERVER4, 53)
    switch.server_groups("tcp80")
    assert switch.near.blocked("udp", SERVER4, 53)
    assert switch.near.reaches("tcp", SERVER4, 80)
    switch.server_groups("udp53")
    assert switch.near.blocked("tcp", SERVER4, 80)
    assert switch.near.reaches("udp", SERVER4, 53)


def test_rule_deletion(switch: Switch) -> None:
    rule = ["--ip-proto", "tcp", "--port", "8080", "--cidr", "0.0.0.0/0"]
    switch.host.cli("sg", "add", "alt", "+", "sg", "rule", "add", "alt", *rule)
    switch.server_groups("alt")
    assert switch.far.reaches("tcp", SERVER4, 8080)
    switch.host.cli("sg", "rule", "del", "alt", *rule)
    assert switch.host.cli("sg", "rule", "list", "alt").strip() == ""
    assert switch.far.blocked("tcp", SERVER4, 8080)


def test_replies_of_outgoing_connections_pass(switch: Switch) -> None:
    """The server lets nothing in, yet what it starts gets its answers."""
    for address in (NEAR4, NEAR6, FAR4, FAR6):
        assert switch.server.reaches("tcp", address, 80), address
        assert switch.server.reaches("udp", address, 5005), address
        assert switch.server.reaches("icmp", address), address
    assert switch.near.blocked("tcp", SERVER4, 80)


def test_outbound_rules(switch: Switch) -> None:
    """One OUTBOUND rule restricts egress to what the outbound rules allow."""
    switch.host.cli(
        "sg", "add", "egress",
        "+", "sg", "rule", "add", "egress", "--dir", "out", "--ip-proto", "tcp", "--port", "80",
        "--cidr", f"{NEAR4}/32",
        "+", "sg", "rule", "add", "egress", "--dir", "out", "--ip-proto", "tcp", "--port", "80",
        "--cidr", f"{FAR6}/128",
    )  # fmt: skip
    switch.server_groups("egress")
    assert switch.server.reaches("tcp", NEAR4, 80)
    assert switch.server.reaches("tcp", FAR6, 80)
    assert switch.server.blocked("tcp", FAR4, 80)
    assert switch.server.blocked("tcp", NEAR6, 80)
    assert switch.server.blocked("tcp", NEAR4, 81)
    assert switch.server.blocked("udp", NEAR4, 5005)
    assert switch.server.blocked("icmp", NEAR4)
    # Inbound stays default-drop: an outbound rule lets nothing in.
    assert switch.near.blocked("tcp", SERVER4, 80)


def test_icmp_rules(switch: Switch) -> None:
    switch.host.cli(
        "sg", "add", "ping",
        "+", "sg", "rule", "add", "ping", "--ip-proto", "icmp", "--cidr", "0.0.0.0/0",
        "+", "sg", "rule", "add", "ping", "--ip-proto", "58", "--cidr", f"{FAR6}/128",
    )  # fmt: skip
    switch.server_groups("ping")
    result = switch.far.ping(SERVER4)
    assert result.received == result.transmitted == 3, result.output
    assert switch.near.reaches("icmp", SERVER4)
    assert switch.far.reaches("icmp", SERVER6)
    assert switch.near.blocked("icmp", SERVER6)
    assert switch.far.blocked("tcp", SERVER4, 80)
