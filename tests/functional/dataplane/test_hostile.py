"""Hostile tenants: what a guest sends for the host, or to take over its neighbours.

Each attack frame, built with scapy, carries a unique marker and goes out of
the attacker's namespace as a tenant would send it; the same frame from a
legitimate source (the underlay, a trusted vnic, the sender's own address)
is the positive control. What reaches the host is read from the host's own
counters (nstat, ``ss``, its neighbour table), not from replies, which may
leave by another path.
"""

import base64
import ipaddress
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Advertise
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6NDOptPrefixInfo,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from butterfly.dataplane.naming import bridge_name, tap_name, vxlan_name
from butterfly.model import State
from butterfly_lab.daemon import DaemonProcess
from butterfly_lab.lab import Netns

from .conftest import Dataplane, Guest, Host, Lab, netns_vnic, open_sg, plug, wait_for

pytestmark = pytest.mark.root

MAC_A, MAC_B, MAC_R = "52:54:00:00:0b:01", "52:54:00:00:0b:02", "52:54:00:00:0b:03"
IP_A, IP_B, IP_R = "10.0.0.1", "10.0.0.2", "10.0.0.3"
IP6_A, IP6_B, IP6_R = "2001:db8::1", "2001:db8::2", "2001:db8::3"
LL_A = "fe80::5054:ff:fe00:b01"
BROADCAST = "ff:ff:ff:ff:ff:ff"
ALL_NODES = "33:33:00:00:00:01"
HOST_PORT = 47999
"""A TCP port the host itself listens on, as the API would."""


def _marked(frame: Packet, marker: str) -> str:
    return bytes(frame / Raw(load=marker.encode())).hex()


def _found(frame: str, capture: list[str]) -> bool:
    return any(frame[-40:] in got for got in capture)


def seen(
    sender: Guest, sender_id: str, receiver: Guest, receiver_id: str, frames: dict[str, str]
) -> set[str]:
    """Which of ``frames`` sent by ``sender`` reached ``receiver``: a last frame to
    the receiver's MAC, which every receiver here accepts, closes the window."""
    last = _marked(Ether(src=MAC_A, dst=MAC_B) / IP(src=IP_A, dst=IP_B) / UDP(dport=9), "last")
    assert receiver.agent.call("sniff_start", ifname=tap_name(receiver_id))["ok"]
    sender.agent.call("send_frames", ifname=tap_name(sender_id), frames=[*frames.values(), last])
    capture = receiver.agent.call(
        "sniff_wait", ifname=tap_name(receiver_id), marker=b"last".hex(), timeout=5
    )
    assert capture["ok"], "the closing frame never arrived"
    return {name for name, frame in frames.items() if _found(frame, capture["frames"])}


def trio(lab: Lab, *, ip_anti_spoof: bool) -> tuple[Dataplane, State, Guest, Guest, Guest]:
    """Attacker "a", victim "b" (group "open": everything in) and a trusted router
    "r" that bypasses filtering, in one VNI of one host."""
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    open_sg(dataplane, state)
    attacker, victim, router = lab.guest(), lab.guest(), lab.guest()
    plug(
        dataplane,
        state,
        netns_vnic("a", attacker, MAC_A, (IP_A, IP6_A), ip_anti_spoof=ip_anti_spoof),
    )
    plug(dataplane, state, netns_vnic("b", victim, MAC_B, (IP_B, IP6_B), security_groups=("open",)))
    plug(dataplane, state, netns_vnic("r", router, MAC_R, (IP_R, IP6_R), bypass_filtering=True))
    return dataplane, state, attacker, victim, router


def server_frames(mac: str, ip: str, ip6: str, link_local: str) -> dict[str, Packet]:
    """What only a router or a DHCP server sends, from ``mac``'s own addresses."""
    return {
        "ra": Ether(src=mac, dst=ALL_NODES)
        / IPv6(src=link_local, dst="ff02::1", hlim=255)
        / ICMPv6ND_RA(prf=1, chlim=1)
        / ICMPv6NDOptPrefixInfo(prefix="2001:db8:bad::", prefixlen=64),
        "ra-global": Ether(src=mac, dst=MAC_B)
        / IPv6(src=ip6, dst=IP6_B, hlim=255)
        / ICMPv6ND_RA(prf=1),
        "redirect": Ether(src=mac, dst=MAC_B)
        / IPv6(src=ip6, dst=IP6_B, hlim=255)
        / ICMPv6ND_Redirect(tgt=ip6, dst="2001:db8:ffff::1"),
        "dhcp-offer": Ether(src=mac, dst=BROADCAST)
        / IP(src=ip, dst="255.255.255.255")
        / UDP(sport=67, dport=68)
        / BOOTP(op=2, yiaddr="10.0.0.200", chaddr=bytes.fromhex(MAC_B.replace(":", "")))
        / DHCP(options=[("message-type", "offer"), ("router", ip), "end"]),
        "dhcp-offer-unicast": Ether(src=mac, dst=MAC_B)
        / IP(src=ip, dst=IP_B)
        / UDP(sport=67, dport=68)
        / BOOTP(op=2, yiaddr=IP_B)
        / DHCP(options=[("message-type", "offer"), "end"]),
        "dhcp6-advertise": Ether(src=mac, dst=MAC_B)
        / IPv6(src=ip6, dst=IP6_B)
        / UDP(sport=547, dport=546)
        / DHCP6_Advertise(),
    }


@pytest.mark.parametrize("ip_anti_spoof", [False, True], ids=["mac-only", "ip-anti-spoof"])
def test_router_and_dhcp_server_messages_from_a_vnic_are_dropped(
    lab: Lab, ip_anti_spoof: bool
) -> None:
    """Rogue RAs, redirects and DHCP offers from a filtered vnic reach nobody,
    even a neighbour whose group admits everything; a trusted (bypassing) vnic's
    identical messages do, and the attacker's neighbour discovery still works."""
    _, _, attacker, victim, router = trio(lab, ip_anti_spoof=ip_anti_spoof)
    attacks = {
        name: _marked(frame, f"attack-{name}")
        for name, frame in server_frames(MAC_A, IP_A, IP6_A, LL_A).items()
    }
    assert seen(attacker, "a", victim, "b", attacks) == set()
    trusted = {
        name: _marked(frame, f"trusted-{name}")
        for name, frame in server_frames(MAC_R, IP_R, IP6_R, "fe80::3").items()
    }
    assert seen(router, "r", victim, "b", trusted) == set(trusted)
    neighbour = {
        "ns": _marked(
            Ether(src=MAC_A, dst=MAC_B) / IPv6(src=IP6_A, dst=IP6_B) / ICMPv6ND_NS(tgt=IP6_B),
            "ns",
        ),
        "na": _marked(
            Ether(src=MAC_A, dst=MAC_B)
            / IPv6(src=IP6_A, dst=IP6_B)
            / ICMPv6ND_NA(tgt=IP6_A, S=1, O=1),
            "na",
        ),
        "dhcp-discover": _marked(
            Ether(src=MAC_A, dst=BROADCAST)
            / IP(src="0.0.0.0", dst="255.255.255.255")
            / UDP(sport=68, dport=67)
            / BOOTP(chaddr=bytes.fromhex(MAC_A.replace(":", "")))
            / DHCP(options=[("message-type", "discover"), "end"]),
            "discover",
        ),
    }
    assert seen(attacker, "a", victim, "b", neighbour) == set(neighbour)


def test_a_victims_default_route_is_not_taken_by_a_rogue_advertisement(lab: Lab) -> None:
    """The kernel of a guest that accepts router advertisements installs no route
    through the attacker (the frames above, seen by the guest's own stack)."""
    _, _, attacker, victim, router = trio(lab, ip_anti_spoof=False)
    victim.exec("sysctl", "-qw", f"net.ipv6.conf.{tap_name('b')}.accept_ra=2")
    ra = server_frames(MAC_A, IP_A, IP6_A, LL_A)["ra"]
    attacker.agent.call("send_frames", ifname=tap_name("a"), frames=[bytes(ra).hex()] * 3)
    time.sleep(0.5)
    assert "default" not in victim.ip("-6", "route", "show")
    trusted = server_frames(MAC_R, IP_R, IP6_R, "fe80::3")["ra"]
    router.agent.call("send_frames", ifname=tap_name("r"), frames=[bytes(trusted).hex()])
    wait_for(lambda: "fe80::3" in victim.ip("-6", "route", "show", "default"), "trusted RA")


def test_duplicate_address_detection_answers_only_for_the_senders_own_addresses(
    lab: Lab,
) -> None:
    """An NS from :: (duplicate address detection) naming a neighbour's address
    would make the neighbour give it up; one naming the sender's own passes."""
    _, _, attacker, victim, _ = trio(lab, ip_anti_spoof=True)

    def dad(target: str, marker: str) -> str:
        low = int(ipaddress.IPv6Address(target)) & 0xFFFFFF
        group = ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | low)
        frame = (
            Ether(src=MAC_A, dst="33:33:ff:" + ":".join(f"{low:06x}"[i : i + 2] for i in (0, 2, 4)))
            / IPv6(src="::", dst=str(group), hlim=255)
            / ICMPv6ND_NS(tgt=target)
        )
        return _marked(frame, marker)

    frames = {
        "dad-victim": dad(IP6_B, "attack-dad"),
        "dad-own": dad(IP6_A, "own-dad"),
        "ns-unspecified-unicast": _marked(
            Ether(src=MAC_A, dst=MAC_B) / IPv6(src="::", dst=IP6_B) / ICMPv6ND_NS(tgt=IP6_B),
            "attack-unicast",
        ),
    }
    assert seen(attacker, "a", victim, "b", frames) == {"dad-own"}


# the host's own stack


def _counters(host: Host) -> dict[str, int]:
    """The host's protocol counters (nstat) and its butterfly devices' IPv6 ones."""
    kernel = json.loads(host.exec("nstat", "-asz", "--json"))["kernel"]
    counters = {name: int(value) for name, value in kernel.items()}
    for device in (bridge_name(42), tap_name("a")):
        for line in host.exec("cat", f"/proc/net/dev_snmp6/{device}").splitlines():
            name, value = line.split()
            counters[f"{device}:{name}"] = int(value)
    return counters


def _syn_recv(host: Host) -> str:
    return host.exec("ss", "-Hnt", "state", "syn-recv")


@pytest.fixture
def listening(lab: Lab) -> Iterator[Host]:
    """A host whose own stack listens on TCP HOST_PORT (both families), as the API does."""
    host = lab.host()

    def listen() -> socket.socket:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::", HOST_PORT))
        server.listen(16)
        return server

    server = host.run(listen)
    try:
        yield host
    finally:
        server.close()


def test_no_frame_from_a_vnic_reaches_the_hosts_stack(lab: Lab, listening: Host) -> None:
    """ARP, IPv4, IPv6 and neighbour discovery for the host's underlay addresses,
    to the bridge's MAC, broadcast or to the bridge's link-local group address
    (which a bridge hands to its port's own stack): the host counts none of it,
    keeps no SYN-RECV and learns no neighbour. The same ping from the underlay
    is counted (the counters do see what reaches the stack)."""
    host = listening
    dataplane = host.dataplane()
    state = State()
    open_sg(dataplane, state)
    attacker, victim = lab.guest(), lab.guest()
    plug(dataplane, state, netns_vnic("a", attacker, MAC_A, (IP_A, IP6_A)))
    plug(dataplane, state, netns_vnic("b", victim, MAC_B, (IP_B, IP6_B), security_groups=("open",)))
    bridge_mac = json.loads(host.ip("-j", "link", "show", bridge_name(42)))[0]["address"]
    for device in (bridge_name(42), vxlan_name(42)):
        shown = json.loads(host.ip("-j", "address", "show", "dev", device))[0]
        assert shown["addr_info"] == [], f"{device} has an address"
    h4, h6 = host.address4, host.address6
    frames = {
        "arp": Ether(src=MAC_A, dst=BROADCAST) / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst=h4),
        "arp-unicast": Ether(src=MAC_A, dst=bridge_mac)
        / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst=h4),
        "ping": Ether(src=MAC_A, dst=bridge_mac) / IP(src=IP_A, dst=h4) / ICMP(),
        "syn": Ether(src=MAC_A, dst=bridge_mac)
        / IP(src=IP_A, dst=h4)
        / TCP(sport=40000, dport=HOST_PORT, flags="S", seq=1),
        "ping6": Ether(src=MAC_A, dst=bridge_mac) / IPv6(src=IP6_A, dst=h6) / ICMPv6EchoRequest(),
        "syn6": Ether(src=MAC_A, dst=bridge_mac)
        / IPv6(src=IP6_A, dst=h6)
        / TCP(sport=40001, dport=HOST_PORT, flags="S", seq=1),
        "ns": Ether(src=MAC_A, dst="33:33:ff:00:00:01")
        / IPv6(src=IP6_A, dst="ff02::1:ff00:1", hlim=255)
        / ICMPv6ND_NS(tgt=h6),
        "link-local-group": Ether(src=MAC_A, dst="01:80:c2:00:00:0e")
        / IP(src=IP_A, dst=h4)
        / ICMP(),
        "link-local-group-syn": Ether(src=MAC_A, dst="01:80:c2:00:00:0e")
        / IP(src=IP_A, dst=h4)
        / TCP(sport=40002, dport=HOST_PORT, flags="S", seq=1),
    }
    marked = {name: _marked(frame, f"attack-{name}") for name, frame in frames.items()}
    before = _counters(host)
    group_frames = {"arp", "ns", "link-local-group", "link-local-group-syn"}
    assert seen(attacker, "a", victim, "b", marked) == group_frames
    time.sleep(0.3)
    after = _counters(host)
    # The host's own multicast (MLD, router solicitations of its underlay) loops
    # back into the global IPv6 counters: IPv6 is read on butterfly's devices.
    watched = (
        "IpInReceives",
        "IcmpInEchos",
        "Icmp6InEchos",
        "TcpInSegs",
        "Icmp6InNeighborSolicits",
    )
    moved = {
        name: after[name] - before.get(name, 0)
        for name in after
        if (name in watched or name.endswith(":Ip6InReceives"))
        and after[name] != before.get(name, 0)
    }
    assert moved == {}
    assert _syn_recv(host) == ""
    assert host.ip("neigh", "show", "dev", bridge_name(42)).strip() == ""
    assert host.ip("neigh", "show", "dev", tap_name("a")).strip() == ""
    other = lab.host()
    assert other.exec("ping", "-c", "1", "-W", "2", h4, check=False)
    wait_for(lambda: _counters(host)["IcmpInEchos"] > after["IcmpInEchos"], "a counted ping")


def _vxlan(src_mac: str, dst_mac: str, src: str, dst: str, *, vni: int, inner: Packet) -> Packet:
    outer = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
    return (
        Ether(src=src_mac, dst=dst_mac)
        / outer
        / UDP(sport=49152, dport=4789)
        / VXLAN(vni=vni, flags=0x08)
        / inner
    )


def _send_from(netns: Netns, ifname: str, frames: list[bytes]) -> None:
    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((ifname, 0))
            for frame in frames:
                sock.send(frame)

    netns.run(send)


def _mac_of(netns: Netns, ifname: str) -> str:
    return str(json.loads(netns.ip("-j", "link", "show", ifname))[0]["address"])


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4-underlay", "ipv6-underlay"])
def test_vxlan_is_decapsulated_only_from_the_underlay(lab: Lab, v6: bool) -> None:
    """A VXLAN packet carrying a frame for VNI 20 reaches VNI 20's guest when it
    comes from another host over the underlay; the very same packet sent by a
    VNI 10 guest to the host, or arriving on another interface of the host,
    is not decapsulated."""
    host, peer = lab.host(v6=v6), lab.host(v6=v6)
    dataplane = host.dataplane()
    state = State()
    open_sg(dataplane, state)
    attacker, victim = lab.guest(), lab.guest()
    plug(dataplane, state, netns_vnic("a", attacker, MAC_A, (IP_A, IP6_A), vni=10))
    plug(
        dataplane,
        state,
        netns_vnic("b", victim, MAC_B, (IP_B,), vni=20, security_groups=("open",)),
    )
    side = lab.netns("x")
    host_side = f"{lab.prefix}s"
    host_net, side_net = ("2001:db8:2::1", "2001:db8:2::2") if v6 else ("192.0.2.1", "192.0.2.2")
    length = 64 if v6 else 24
    host.ip("link", "add", host_side, "type", "veth", "peer", "name", "x0", "netns", side.name)
    host.ip("address", "add", f"{host_net}/{length}", "dev", host_side, *(("nodad",) * v6))
    host.ip("link", "set", host_side, "up")
    side.ip("address", "add", f"{side_net}/{length}", "dev", "x0", *(("nodad",) * v6))
    side.ip("link", "set", "x0", "up")

    def inner(marker: str) -> Raw:
        frame = Ether(src="52:54:00:00:0b:99", dst=MAC_B) / IP(src=IP_A, dst=IP_B) / UDP(dport=9)
        return Raw(bytes(frame / Raw(load=marker.encode())))

    target = host.address
    from_vm = _vxlan(
        MAC_A, _mac_of(host, bridge_name(10)), IP6_A if v6 else IP_A, target,
        vni=20, inner=inner("attack-vm"),
    )  # fmt: skip
    from_side = _vxlan(
        "52:54:00:00:0b:98", _mac_of(host, host_side), side_net, target,
        vni=20, inner=inner("attack-side"),
    )  # fmt: skip
    from_peer = _vxlan(
        _mac_of(peer, peer.underlay), _mac_of(host, host.underlay), peer.address, target,
        vni=20, inner=inner("underlay"),
    )  # fmt: skip
    assert victim.agent.call("sniff_start", ifname=tap_name("b"))["ok"]
    attacker.agent.call("send_frames", ifname=tap_name("a"), frames=[bytes(from_vm).hex()] * 3)
    _send_from(side, "x0", [bytes(from_side)] * 3)
    time.sleep(0.5)
    _send_from(peer, peer.underlay, [bytes(from_peer)])
    capture = victim.agent.call(
        "sniff_wait", ifname=tap_name("b"), marker=b"underlay".hex(), timeout=5
    )
    assert capture["ok"], "VXLAN from the underlay was not delivered"
    got = "".join(capture["frames"])
    assert b"attack-vm".hex() not in got
    assert b"attack-side".hex() not in got


# the API


def _start_log(lab: Lab, folder: str, *args: str) -> str:
    """What a butterflyd listening on tcp://0.0.0.0 in a fresh namespace logs up to ready."""
    netns = lab.netns("d")
    daemon = DaemonProcess(
        os.path.join(lab.folder, folder), netns=netns.name, endpoint="tcp://0.0.0.0:9999",
        extra_args=args,
    )  # fmt: skip
    os.makedirs(daemon.directory, exist_ok=True)
    daemon.spawn()
    try:
        wait_for(lambda: " ready: serving on " in daemon.log(), "butterflyd ready", timeout=20)
        return daemon.log()
    finally:
        daemon.stop()


def test_a_wildcard_api_without_a_key_is_warned_about(lab: Lab, tmp_path: Path) -> None:
    assert "listens on every address of this host without an encryption key" in _start_log(
        lab, "clear"
    )
    key = tmp_path / "key"
    key.write_text(base64.b64encode(bytes(range(32))).decode())
    assert "listens on every address" not in _start_log(lab, "keyed", "-k", str(key))
