"""sniff_target_nic_id through a real butterflyd: an IDS vnic sees a vnic's frames.

Three namespace VMs in one VNI: ``snf`` (IP anti-spoofing on, a group that
admits only TCP 80, its frames mirrored to ``ids``), ``pee`` (open) and the
capturing ``ids``. Frames are sent raw from inside the VMs. The IDS sees the
frames to and from ``snf`` (those its group drops too: ``snf`` itself never
gets them), not the frames the anti-spoofing drops, and nothing of the others'
traffic twice. The copies are counted in ``snf``'s nic_stats (for clients that
ask for our additions); deleting either vnic ends the copying; a target in
another VNI needs the daemon's ``--sniff-cross-vni``.
"""

from __future__ import annotations

import sys

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from switch_helpers import open_sg

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import tap_name
from butterfly_lab.lab import Host, Lab, LabError, Vm

pytestmark = pytest.mark.root

Request = MessageV0.Request
Nic = MessageV0.Nic
VNI = 600
SNF = ("snf", "52:54:00:00:60:01", "10.60.0.1")
PEE = ("pee", "52:54:00:00:60:02", "10.60.0.2")
IDS = ("ids", "52:54:00:00:60:03", "10.60.0.3")
FORGED_MAC = "52:54:00:00:60:99"

SEND = """
import sys
from scapy.layers.l2 import Ether
from scapy.sendrecv import sendp
frames = [Ether(bytes.fromhex(line)) for line in sys.stdin.read().split()]
sendp(frames, iface=sys.argv[1], verbose=False)
"""


def udp(sender: tuple[str, str, str], receiver: tuple[str, str, str], marker: str,
        *, src_mac: str | None = None, src_ip: str | None = None) -> bytes:  # fmt: skip
    """A UDP frame to port 9 whose payload is ``marker``."""
    return bytes(
        Ether(src=src_mac or sender[1], dst=receiver[1])
        / IP(src=src_ip or sender[2], dst=receiver[2])
        / UDP(sport=9, dport=9)
        / Raw(marker.encode())
    )


def add(host: Host, vnic: tuple[str, str, str], vm: Vm, vni: int = VNI, **fields: object) -> None:
    vnic_id, mac, ip = vnic
    nic = Nic(id=vnic_id, mac=mac, vni=vni, ip=[ip], type=Nic.NETNS, path=vm.name, **fields)
    host.call(Request(nic_add=nic))


def send(vm: Vm, vnic_id: str, frames: list[bytes]) -> None:
    payload = "\n".join(frame.hex() for frame in frames)
    vm.exec(sys.executable, "-c", SEND, tap_name(vnic_id), input=payload, timeout=60)


def capture(watchers: dict[str, Vm], sender: Vm, sender_id: str, frames: list[bytes],
            last: str) -> dict[str, list[str]]:  # fmt: skip
    """The frames (hex) each watching VM received while ``sender`` sent ``frames``;
    ``last`` marks a frame the IDS must get, sent after all the others."""
    for vnic_id, vm in watchers.items():
        assert vm.agent.call("sniff_start", ifname=tap_name(vnic_id))["ok"]
    send(sender, sender_id, frames)
    got = {}
    for vnic_id, vm in watchers.items():
        result = vm.agent.call(
            "sniff_wait", ifname=tap_name(vnic_id), marker=last.encode().hex(), timeout=3
        )
        got[vnic_id] = result["frames"]
    return got


def seen(frames: list[str], frame: bytes) -> int:
    """How many times ``frame`` itself arrived (not an ICMP error quoting it)."""
    return sum(frame.hex() in got for got in frames)


def sniff_table(host: Host) -> str:
    return host.exec("nft", "list", "table", "netdev", "butterfly", check=False)


@pytest.fixture(scope="module")
def switch(lab: Lab) -> tuple[Host, dict[str, Vm]]:
    host = lab.host()
    open_sg(host)
    web = MessageV0.Sg(id="web")
    web.rule.add(direction=MessageV0.Rule.INBOUND, protocol=6, port_start=80, port_end=80)
    web.rule[0].cidr.address, web.rule[0].cidr.mask_size = "0.0.0.0", 0
    host.call(Request(sg_add=web))
    vms = {name: lab.vm() for name in ("snf", "pee", "ids")}
    add(host, IDS, vms["ids"], security_group=["open"])
    add(host, PEE, vms["pee"], security_group=["open"])
    add(host, SNF, vms["snf"], security_group=["web"], ip_anti_spoof=True,
        sniff_target_nic_id="ids")  # fmt: skip
    return host, vms


def test_the_target_sees_what_the_groups_drop_not_what_anti_spoofing_drops(
    switch: tuple[Host, dict[str, Vm]],
) -> None:
    host, vms = switch
    before = host.call(Request(nic_stats="snf", with_additions=True)).nic_stats.sniffed_frames
    dropped, unrelated = udp(PEE, SNF, "to-snf-dropped"), udp(PEE, IDS, "pee-to-ids")
    got = capture(
        {"ids": vms["ids"], "snf": vms["snf"]},
        vms["pee"],
        "pee",
        [dropped, unrelated, udp(PEE, SNF, "last-in")],
        "last-in",
    )
    assert seen(got["ids"], dropped) == 1, "the IDS missed a frame the group dropped"
    assert seen(got["snf"], dropped) == 0, "the group should have dropped it"
    assert seen(got["ids"], unrelated) == 1, "traffic not to or from snf is not copied"
    attacks = {
        "spoofed-ip": udp(SNF, PEE, "spoofed-ip", src_ip="10.60.0.77"),
        "forged-mac": udp(SNF, PEE, "forged-mac", src_mac=FORGED_MAC),
    }
    legitimate = udp(SNF, PEE, "from-snf")
    got = capture(
        {"ids": vms["ids"], "pee": vms["pee"]},
        vms["snf"],
        "snf",
        [*attacks.values(), legitimate],
        "from-snf",
    )
    assert seen(got["ids"], legitimate) == 1 and seen(got["pee"], legitimate) == 1
    for name, attack in attacks.items():
        assert seen(got["ids"], attack) == 0, f"{name}: copied although anti-spoofing drops it"
        assert seen(got["pee"], attack) == 0, f"{name}: the anti-spoofing let it through"
    stats = host.call(Request(nic_stats="snf", with_additions=True)).nic_stats
    assert stats.sniffed_frames >= before + 3 and stats.sniffed_bytes > 0, stats
    plain = host.call(Request(nic_stats="snf")).nic_stats
    assert not plain.HasField("sniffed_frames")
    assert "sniffed frames: " in host.cli("nic", "stats", "snf")
    assert host.call(Request(nic_details="snf")).nic_details[0].sniff_target_nic_id == "ids"


def test_deleting_either_vnic_stops_the_copies(
    lab: Lab, switch: tuple[Host, dict[str, Vm]]
) -> None:
    host, vms = switch
    assert "dup to" in sniff_table(host)
    host.delete_vnic("ids")
    assert "dup to" not in sniff_table(host)
    add(host, IDS, vms["ids"], security_group=["open"])  # the target is back: copied again
    again = udp(PEE, SNF, "again")
    got = capture({"ids": vms["ids"]}, vms["pee"], "pee", [again], "again")
    assert seen(got["ids"], again) == 1
    host.delete_vnic("snf")
    assert "dup to" not in sniff_table(host)
    gone = udp(PEE, SNF, "gone")
    got = capture({"ids": vms["ids"]}, vms["pee"], "pee", [gone], "gone")
    assert seen(got["ids"], gone) == 0


def test_a_target_in_another_vni_needs_the_daemons_permission(lab: Lab) -> None:
    strict = lab.host()
    other = lab.vm()
    add(strict, ("ids2", "52:54:00:00:61:03", "10.61.0.3"), other, vni=VNI + 1)
    with pytest.raises(LabError, match="sniff-cross-vni option is off"):
        add(strict, ("src2", "52:54:00:00:60:11", "10.60.0.11"), lab.vm(),
            sniff_target_nic_id="ids2", bypass_filtering=True)  # fmt: skip
    allowing = lab.host(extra_args=["--sniff-cross-vni"])
    ids, source = lab.vm(), lab.vm()
    add(allowing, ("ids3", "52:54:00:00:61:13", "10.61.0.13"), ids, vni=VNI + 1)
    add(allowing, ("src3", "52:54:00:00:60:13", "10.60.0.13"), source,
        sniff_target_nic_id="ids3", bypass_filtering=True)  # fmt: skip
    across = udp(("src3", "52:54:00:00:60:13", "10.60.0.13"),
                 ("x", "52:54:00:00:60:ff", "10.60.0.255"), "across")  # fmt: skip
    got = capture({"ids3": ids}, source, "src3", [across], "across")
    assert seen(got["ids3"], across) == 1
