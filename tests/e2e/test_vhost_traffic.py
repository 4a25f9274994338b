"""vhost-user vnics of a real butterflyd carrying real QEMU guests' traffic.

One lab host runs butterflyd with the kernel data plane; its vnics are made as an
orchestrator makes them (``butterfly nic add`` without ``--type``: vhost-user) and QEMU
attaches as the original's README says (shared memory backend, ``-chardev socket``,
``-netdev vhost-user``, ``virtio-net-pci``). Guests, booted together once for the
module: ``a`` and ``b`` (vhost-user, VNI 1301), ``c`` (vhost-user, VNI 1302, same IP
subnet), ``t`` (a TAP vnic's guest, VNI 1301) and ``n`` (a NETNS vnic, VNI 1301).
Every vnic is filtered (``b`` by its own group ``web``, the others by ``open``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from vhost_helpers import (
    add_vhost_vnic,
    is_socket,
    open_sg,
    pings,
    set_mtu,
    tcp_reaches,
    vhost_guest,
)

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import bridge_name, tap_name
from butterfly_lab.guest import Guest, GuestImage, TapNic, boot_all
from butterfly_lab.lab import Host, Lab, Vm, wait_for

pytestmark = [pytest.mark.root, pytest.mark.qemu]

VNI, OTHER_VNI = 1301, 1302
SUBNET = "10.131.0.0/24"
IP = {"a": "10.131.0.1", "b": "10.131.0.2", "t": "10.131.0.3", "n": "10.131.0.4",
      "c": "10.131.0.9"}  # fmt: skip
MAC = {name: f"52:54:00:13:01:0{index}" for index, name in enumerate("abtnc", start=1)}


@dataclass
class Net:
    host: Host
    guests: dict[str, Guest]
    vm: Vm
    sockets: dict[str, Path]


def _stats(host: Host, vnic_id: str) -> tuple[int, int]:
    response = host.call(MessageV0.Request(nic_stats=vnic_id))
    return getattr(response.nic_stats, "in"), response.nic_stats.out


@pytest.fixture(scope="module")
def net(lab: Lab, guest_image: GuestImage, vhost_loop: str) -> Iterator[Net]:
    host = lab.host(extra_args=["--vhost-loop", vhost_loop])
    open_sg(host)
    host.cli(
        "sg", "add", "web",
        "+", "sg", "rule", "add", "web", "--ip-proto", "icmp", "--cidr", SUBNET,
        "+", "sg", "rule", "add", "web", "--ip-proto", "tcp", "--port", "5201", "--cidr", SUBNET,
    )  # fmt: skip
    sockets = {
        "a": add_vhost_vnic(host, "a", mac=MAC["a"], vni=VNI, ip=IP["a"]),
        "b": add_vhost_vnic(host, "b", mac=MAC["b"], vni=VNI, ip=IP["b"], sgs=("web",)),
        "c": add_vhost_vnic(host, "c", mac=MAC["c"], vni=OTHER_VNI, ip=IP["c"]),
    }
    # the workers start with the first vhost-user vnic
    assert f"moving frames with the {vhost_loop} loop" in host.daemon.log()
    host.add_vnic("t", mac=MAC["t"], vni=VNI, ips=[IP["t"]], security_groups=["open"])
    vm = lab.vm()
    host.add_vnic("n", vm=vm, mac=MAC["n"], vni=VNI, ips=[IP["n"]], security_groups=["open"])
    prefix = f"bfe{os.getpid()}"
    guests = {
        name: vhost_guest(guest_image, f"{prefix}{name}", sockets[name], mac=MAC[name], ip=IP[name])
        for name in "abc"
    }
    guests["t"] = Guest(
        guest_image,
        name=f"{prefix}t",
        nic=TapNic(tap_name("t"), mac=MAC["t"]),
        ipv4=f"{IP['t']}/24",
        netns=host.name,
    )
    with contextlib.ExitStack() as stack:
        for guest in guests.values():
            stack.callback(guest.close)
        boot_all(guests.values())
        set_mtu(*guests.values())
        yield Net(host, guests, vm, sockets)


def test_nic_add_answers_the_socket_of_a_vnic_that_filters_and_counts_without_a_guest(
    net: Net,
) -> None:
    host = net.host
    path = add_vhost_vnic(host, "lone", mac="52:54:00:13:01:77", vni=VNI, ip="10.131.0.77")
    try:
        assert path == Path(host.folder) / "qemu-vhost-lone"
        assert is_socket(path)
        [details] = host.call(MessageV0.Request(nic_details="lone")).nic_details
        assert details.type == MessageV0.Nic.VHOST_USER_SERVER
        assert details.path == str(path)
        [port] = json.loads(host.ip("-j", "link", "show", tap_name("lone")))
        assert port["master"] == bridge_name(VNI)
        assert "NO-CARRIER" not in port["flags"]
        # a's ARP request for the lone vnic's address is flooded to its tap: counted
        # by the kernel although no guest is there to take it, and answered by nobody.
        before, _ = _stats(host, "lone")
        assert not pings(net.guests["a"], "10.131.0.77", count=1)
        wait_for(lambda: _stats(host, "lone")[0] > before, "the flooded frames to be counted")
    finally:
        host.delete_vnic("lone")
    assert not path.exists()


def test_two_vhost_user_guests_of_a_vni_ping_and_exchange_tcp(net: Net) -> None:
    a, b = net.guests["a"], net.guests["b"]
    assert pings(a, IP["b"]) and pings(b, IP["a"])
    out_before = _stats(net.host, "a")[1]
    # TCP both ways, with TSO and checksum offload end to end (guest - backend - tap).
    for reverse in ("", "-R"):
        b.check("iperf3 -s -D -1")
        report = a.check(
            "for try in 1 2 3 4 5 6 7 8 9 10; do "
            f"iperf3 -c {IP['b']} -t 1 {reverse} && exit 0; sleep 0.3; done; exit 1",
            timeout=60,
        )
        assert "receiver" in report, report
    assert _stats(net.host, "a")[1] - out_before > 10_000_000, "a's TCP bytes were not counted"


def test_a_guest_of_another_vni_reaches_none_of_them(net: Net) -> None:
    a, c = net.guests["a"], net.guests["c"]
    assert not pings(c, IP["a"], count=1)
    assert not pings(c, IP["b"], count=1)
    assert not pings(a, IP["c"], count=1)


def test_a_vhost_user_guest_talks_to_a_netns_vnic_and_a_tap_guest(net: Net) -> None:
    a, t, vm = net.guests["a"], net.guests["t"], net.vm
    assert pings(a, IP["n"])
    result = vm.ping(IP["a"])
    assert result.received == result.transmitted == 3, result.output
    vm.listen("tcp", 7000)
    assert tcp_reaches(a, IP["n"], 7000)
    assert pings(a, IP["t"]) and pings(t, IP["a"])


def test_a_security_group_rule_on_a_vhost_user_vnic_allows_then_its_removal_blocks(
    net: Net,
) -> None:
    a, b, host = net.guests["a"], net.guests["b"], net.host
    b.check("setsid nc -ll -p 5001 -e /bin/true </dev/null >/dev/null 2>&1 &")
    rule = ["web", "--ip-proto", "tcp", "--port", "5001", "--cidr", SUBNET]
    assert not tcp_reaches(a, IP["b"], 5001), "no rule lets port 5001 in yet"
    host.cli("sg", "rule", "add", *rule)
    assert tcp_reaches(a, IP["b"], 5001)
    host.cli("sg", "rule", "del", *rule)
    assert not tcp_reaches(a, IP["b"], 5001)


def test_anti_spoofing_and_tracing_apply_to_vhost_user_vnics(net: Net) -> None:
    a, host = net.guests["a"], net.host
    trace = Path(host.folder) / "trace-a.pcap"
    host.cli("nic", "update", "--id", "a", "--packet-trace", "true")
    try:
        assert pings(a, IP["b"], count=2)
        wait_for(lambda: trace.exists() and trace.stat().st_size > 200, "a's trace to fill")
    finally:
        host.cli("nic", "update", "--id", "a", "--packet-trace", "false")
    a.check("ip link set eth0 address 52:54:00:13:01:66")
    try:
        assert not pings(a, IP["b"], count=2), "a spoofed MAC got through"
    finally:
        a.check(f"ip link set eth0 address {MAC['a']}")
    assert pings(a, IP["b"], count=1)
