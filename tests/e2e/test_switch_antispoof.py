"""Anti-spoofing through a real butterflyd: attacks sent with scapy from inside a VM.

The attacker (ip_anti_spoof on) forges a source MAC, a source IP, a gratuitous ARP and an
IPv6 neighbour advertisement claiming a third VM's addresses. The victim, which knows the
third VM's MAC, captures everything it receives: no attack frame arrives and its
neighbour cache stays right. Re-added with bypass_filtering, the same attacker gets every
frame through and does poison the victim's cache: the attacks are real ones.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from switch_helpers import neighbour_mac, open_sg

from butterfly.dataplane.naming import tap_name
from butterfly_lab.lab import Host, Lab, Vm

pytestmark = pytest.mark.root

VNI = 400
ATTACKER = ("atk", "52:54:00:00:40:01", "10.40.0.1", "2001:db8:40::1")
VICTIM = ("vic", "52:54:00:00:40:02", "10.40.0.2", "2001:db8:40::2")
THIRD = ("thd", "52:54:00:00:40:03", "10.40.0.3", "2001:db8:40::3")
FORGED_MAC = "52:54:00:00:40:99"

# Run in the attacker's namespace: send the frames (hex, one per line on stdin) with scapy.
SEND = """
import sys
from scapy.layers.l2 import Ether
from scapy.sendrecv import sendp
frames = [Ether(bytes.fromhex(line)) for line in sys.stdin.read().split()]
sendp(frames, iface=sys.argv[1], verbose=False)
"""


def attacks() -> dict[str, bytes]:
    _, mac, ip4, ip6 = ATTACKER
    _, victim_mac, victim4, _ = VICTIM
    _, _, third4, third6 = THIRD
    return {
        "forged source MAC": bytes(
            Ether(src=FORGED_MAC, dst=victim_mac)
            / IP(src=ip4, dst=victim4)
            / UDP(sport=9, dport=9)
            / Raw(b"attack-mac")
        ),
        "forged source IP": bytes(
            Ether(src=mac, dst=victim_mac)
            / IP(src=third4, dst=victim4)
            / UDP(sport=9, dport=9)
            / Raw(b"attack-ip")
        ),
        # Gratuitous ARP: "the third VM's IP is at my MAC", to everyone.
        "ARP poisoning": bytes(
            Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=mac, psrc=third4, hwdst="00:00:00:00:00:00", pdst=third4)
        ),
        # Unsolicited, overriding NA for the third VM's address (hop limit 255, or
        # the victim's kernel ignores it).
        "forged neighbour advertisement": bytes(
            Ether(src=mac, dst="33:33:00:00:00:01")
            / IPv6(src=ip6, dst="ff02::1", hlim=255)
            / ICMPv6ND_NA(tgt=third6, R=0, S=0, O=1)
            / ICMPv6NDOptDstLLAddr(lladdr=mac)
        ),
    }


def last_frame() -> bytes:
    """A legitimate frame sent after the attacks: once it arrived, they all would have."""
    _, mac, ip4, _ = ATTACKER
    _, victim_mac, victim4, _ = VICTIM
    return bytes(
        Ether(src=mac, dst=victim_mac) / IP(src=ip4, dst=victim4) / UDP(sport=9, dport=9)
        / Raw(b"legitimate-last")
    )  # fmt: skip


class Scene:
    def __init__(self, host: Host, vms: dict[str, Vm]) -> None:
        self.host = host
        self.attacker, self.victim, self.third = vms["atk"], vms["vic"], vms["thd"]

    def add_attacker(self, *, bypass: bool) -> None:
        vnic_id, mac, ip4, ip6 = ATTACKER
        self.host.add_vnic(
            vnic_id, vm=self.attacker, mac=mac, vni=VNI, ips=[ip4, ip6], security_groups=["open"],
            ip_anti_spoof=True, bypass_filtering=bypass,
        )  # fmt: skip

    def victim_cache(self) -> tuple[str | None, str | None]:
        return neighbour_mac(self.victim, THIRD[2]), neighbour_mac(self.victim, THIRD[3])

    def attack(self) -> set[str]:
        """Send every attack then the last frame; the names of the attacks that arrived."""
        frames = attacks()
        ifname = tap_name(VICTIM[0])
        assert self.victim.agent.call("sniff_start", ifname=ifname)["ok"]
        payload = "\n".join(frame.hex() for frame in (*frames.values(), last_frame()))
        self.attacker.exec(
            sys.executable, "-c", SEND, tap_name(ATTACKER[0]), input=payload, timeout=60
        )
        capture = self.victim.agent.call(
            "sniff_wait", ifname=ifname, marker=b"legitimate-last".hex(), timeout=5
        )
        assert capture["ok"], "the legitimate frame never arrived"
        return {
            name
            for name, frame in frames.items()
            if any(frame.hex() in got for got in capture["frames"])
        }


@pytest.fixture(scope="module")
def module_scene(lab: Lab) -> Scene:
    host = lab.host()
    open_sg(host)
    vms = {vnic[0]: lab.vm() for vnic in (ATTACKER, VICTIM, THIRD)}
    scene = Scene(host, vms)
    scene.add_attacker(bypass=False)
    for vnic_id, mac, ip4, ip6 in (VICTIM, THIRD):
        host.add_vnic(
            vnic_id, vm=vms[vnic_id], mac=mac, vni=VNI, ips=[ip4, ip6], security_groups=["open"]
        )
    return scene


@pytest.fixture
def scene(module_scene: Scene) -> Iterator[Scene]:
    """The victim knows the third VM's real MAC (IPv4 and IPv6) before each attack."""
    scene = module_scene
    scene.victim.ip("neigh", "flush", "dev", tap_name(VICTIM[0]))
    assert scene.victim.reaches("icmp", THIRD[2]) and scene.victim.reaches("icmp", THIRD[3])
    assert scene.victim_cache() == (THIRD[1], THIRD[1])
    yield scene
    scene.add_attacker(bypass=False)


def test_attacks_are_dropped(scene: Scene) -> None:
    assert scene.attack() == set()
    assert scene.victim_cache() == (THIRD[1], THIRD[1])
    # The attacker itself still talks, from its own addresses.
    assert scene.attacker.reaches("icmp", VICTIM[2])
    assert scene.attacker.reaches("icmp", VICTIM[3])


def test_attacks_pass_with_bypass_filtering(scene: Scene) -> None:
    scene.add_attacker(bypass=True)
    assert scene.attack() == set(attacks())
    assert scene.victim_cache() == (ATTACKER[1], ATTACKER[1])
