"""Anti-spoofing: forged frames sent by a guest (built with scapy) never reach another.

Each attack frame carries a unique marker; a legitimate frame sent last
carries its own. The receiver captures until the legitimate frame arrives
(frames from one sender cross the bridge in order), then no attack marker
may be among what it saw.
"""

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from butterfly.dataplane.naming import tap_name
from butterfly.model import State

from .conftest import Guest, Lab, netns_vnic, open_sg, plug

pytestmark = pytest.mark.root

MAC_A, MAC_B, MAC_OTHER = "52:54:00:00:0a:01", "52:54:00:00:0a:02", "52:54:00:00:0a:99"
IP_A, IP_B, IP_OTHER = "10.0.0.1", "10.0.0.2", "10.0.0.99"
IP6_A, IP6_B, IP6_OTHER = "2001:db8::1", "2001:db8::2", "2001:db8::99"
BROADCAST = "ff:ff:ff:ff:ff:ff"


def _marked(frame: Packet, marker: str) -> str:
    return bytes(frame / Raw(load=marker.encode())).hex()


def attacks() -> dict[str, str]:
    """Frames guest A must not get through, by name, with their marker inside."""
    frames = {
        "mac": Ether(src=MAC_OTHER, dst=MAC_B) / IP(src=IP_A, dst=IP_B) / UDP(dport=9),
        "ip": Ether(src=MAC_A, dst=MAC_B) / IP(src=IP_OTHER, dst=IP_B) / UDP(dport=9),
        "ip6": Ether(src=MAC_A, dst=MAC_B) / IPv6(src=IP6_OTHER, dst=IP6_B) / UDP(dport=9),
        "arp-ip": Ether(src=MAC_A, dst=BROADCAST)
        / ARP(op=2, hwsrc=MAC_A, psrc=IP_OTHER, hwdst=BROADCAST, pdst=IP_B),
        "arp-mac": Ether(src=MAC_A, dst=BROADCAST)
        / ARP(op=1, hwsrc=MAC_OTHER, psrc=IP_A, pdst=IP_B),
        "na": Ether(src=MAC_A, dst="33:33:00:00:00:01")
        / IPv6(src=IP6_A, dst="ff02::1")
        / ICMPv6ND_NA(tgt=IP6_OTHER, R=0, S=0, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=MAC_A),
        "vlan": Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=5) / IP(src=IP_A, dst=IP_B) / UDP(dport=9),
    }
    return {name: _marked(frame, f"attack-{name}") for name, frame in frames.items()}


def allowed() -> dict[str, str]:
    """Frames guest A may send: its own addresses, a DHCP client's 0.0.0.0."""
    frames = {
        "dhcp": Ether(src=MAC_A, dst=BROADCAST)
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=bytes.fromhex(MAC_A.replace(":", "")))
        / DHCP(options=[("message-type", "discover"), "end"]),
        "arp": Ether(src=MAC_A, dst=BROADCAST) / ARP(op=1, hwsrc=MAC_A, psrc=IP_A, pdst=IP_B),
        "na": Ether(src=MAC_A, dst="33:33:00:00:00:01")
        / IPv6(src=IP6_A, dst="ff02::1")
        / ICMPv6ND_NA(tgt=IP6_A, R=0, S=0, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=MAC_A),
        "ip": Ether(src=MAC_A, dst=MAC_B) / IP(src=IP_A, dst=IP_B) / UDP(dport=9),
    }
    return {name: _marked(frame, f"allowed-{name}") for name, frame in frames.items()}


def seen(sender: Guest, receiver: Guest, frames: dict[str, str]) -> set[str]:
    """Which of ``frames`` reached the receiver (a last legitimate frame closes the window)."""
    last = _marked(Ether(src=MAC_A, dst=MAC_B) / IP(src=IP_A, dst=IP_B) / UDP(dport=9), "last")
    assert receiver.agent.call("sniff_start", ifname=tap_name("b"))["ok"]
    sender.agent.call("send_frames", ifname=tap_name("a"), frames=[*frames.values(), last])
    capture = receiver.agent.call(
        "sniff_wait", ifname=tap_name("b"), marker=b"last".hex(), timeout=5
    )
    assert capture["ok"], "the legitimate frame never arrived"
    return {
        name
        for name, frame in frames.items()
        if any(frame[-40:] in got for got in capture["frames"])
    }


def pair(
    lab: Lab, *, ip_anti_spoof: bool, bypass: bool = False, receiver_bypass: bool | None = None
) -> tuple[Guest, Guest]:
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    open_sg(dataplane, state)
    sender, receiver = lab.guest(), lab.guest()
    plug(
        dataplane,
        state,
        netns_vnic(
            "a", sender, MAC_A, (IP_A, IP6_A), ip_anti_spoof=ip_anti_spoof, bypass_filtering=bypass
        ),
    )
    plug(
        dataplane,
        state,
        netns_vnic(
            "b",
            receiver,
            MAC_B,
            (IP_B, IP6_B),
            security_groups=("open",),
            bypass_filtering=bypass if receiver_bypass is None else receiver_bypass,
        ),
    )
    return sender, receiver


def test_forged_frames_are_dropped_with_ip_anti_spoof(lab: Lab) -> None:
    sender, receiver = pair(lab, ip_anti_spoof=True)
    assert seen(sender, receiver, attacks()) == set()
    assert seen(sender, receiver, allowed()) == set(allowed())


def test_without_ip_anti_spoof_only_the_mac_is_checked(lab: Lab) -> None:
    sender, receiver = pair(lab, ip_anti_spoof=False)
    assert seen(sender, receiver, attacks()) == {"ip", "ip6", "arp-ip", "arp-mac", "na"}


def test_bypass_filtering_lets_everything_through(lab: Lab) -> None:
    sender, receiver = pair(lab, ip_anti_spoof=True, bypass=True)
    assert seen(sender, receiver, attacks()) == set(attacks())


def test_a_filtered_vnic_receives_only_ip_and_arp_from_a_bypassing_one(lab: Lab) -> None:
    sender, receiver = pair(lab, ip_anti_spoof=True, bypass=True, receiver_bypass=False)
    assert seen(sender, receiver, attacks()) == set(attacks()) - {"vlan"}


def test_a_filtered_vnic_gets_no_unicast_for_another_mac_nor_loses_its_own(lab: Lab) -> None:
    """Its rules are chosen by the destination MAC: a flooded frame for an unknown
    MAC must not reach it, and nobody may take its MAC from the bridge (the last
    frame, to its MAC, must still arrive after one from the sender with it)."""
    sender, receiver = pair(lab, ip_anti_spoof=False, bypass=True, receiver_bypass=False)
    frames = {
        "unknown": Ether(src=MAC_A, dst=MAC_OTHER) / IP(src=IP_A, dst=IP_B) / UDP(dport=9),
        "hijack": Ether(src=MAC_B, dst=BROADCAST) / IP(src=IP_A, dst=IP_B) / UDP(dport=9),
    }
    marked = {name: _marked(frame, f"attack-{name}") for name, frame in frames.items()}
    assert seen(sender, receiver, marked) == {"hijack"}
