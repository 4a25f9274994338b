"""The eBPF fast path across hosts: two butterflyd joined by VXLAN, attacked from their VMs.

Every test runs with ``--fast-path ebpf`` and with ``off`` on both hosts, and must
see the same verdicts; only the path differs. Host one holds the clients ``cli``
(IP anti-spoofing on) and ``oth`` (off), open to nothing but replies; host two the
server ``srv``, which lets UDP 7000 in. VNI 421 holds twins of ``cli`` and ``srv``
with the same MACs and addresses. Each host judges a frame by its own conntrack:
the sending host's fast path lets an established flow go to the VXLAN device, the
receiving host's takes it from there only when its own entry is established too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fast_path_helpers import (
    FLOW,
    PORT,
    TCP_PORT,
    Switch,
    add_probe,
    one_way_batch,
    one_way_group,
    udp_frame,
)
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from butterfly.dataplane.naming import tap_name, vxlan_name
from butterfly_lab.lab import Host, Lab, Vm, wait_for

pytestmark = [pytest.mark.root, pytest.mark.needs("ebpf-fast-path")]

VNI, TWIN_VNI = 420, 421
TCP_VNI, KILL_VNI = 422, 423
"""The tests with hosts of their own: VNIs of their own too (every host of the lab
shares the fabric, and the module's hosts may still run)."""
SRV4, SRV_MAC = "10.42.0.10", "52:54:00:00:42:10"
CLI4, CLI_MAC = "10.42.0.11", "52:54:00:00:42:11"
OTH4, OTH_MAC = "10.42.0.12", "52:54:00:00:42:12"
BYP4, BYP_MAC = "10.42.0.13", "52:54:00:00:42:13"
FORGED_MAC = "52:54:00:00:42:99"
CLOSED_PORT = 7001


@dataclass
class Across:
    one: Switch
    """Host one's view (the clients')."""
    two: Switch
    """Host two's (the server's)."""

    @property
    def fast(self) -> bool:
        return self.one.fast

    def seen(self, sender: str, receiver: str, frames: dict[str, Ether], last: Ether) -> set[str]:
        return self.one.seen(sender, receiver, frames, last)


def _udp_group(host: Host) -> None:
    host.cli(
        "sg", "add", "udp",
        "+", "sg", "rule", "add", "udp", "--ip-proto", "udp", "--port", str(PORT),
        "--cidr", "0.0.0.0/0",
        "+", "sg", "rule", "add", "udp", "--ip-proto", "tcp", "--port", str(TCP_PORT),
        "--cidr", "0.0.0.0/0",
    )  # fmt: skip


def _neighbours(vms: dict[str, Vm], *, server: str, clients: dict[str, tuple[str, str]]) -> None:
    """Neighbour entries both ways between the server and each client (by vnic id:
    address, MAC), so that raw frames and flows need no ARP first (a flow's first
    echo would wait for it, across hosts, and miss the client's time-out)."""
    for name, (address, mac) in clients.items():
        vms[name].ip("neigh", "replace", SRV4, "lladdr", SRV_MAC, "dev", tap_name(name))
        vms[server].ip("neigh", "replace", address, "lladdr", mac, "dev", tap_name(server))


@pytest.fixture(scope="module", params=["ebpf", "off"])
def across(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Across]:
    mode = str(request.param)
    one, two = lab.hosts(2, extra_args=["--fast-path", mode])
    for host in (one, two):
        _udp_group(host)
        add_probe(host)
    vms = {name: lab.vm() for name in ("cli", "oth", "srv", "tcli", "tsrv")}
    one.add_vnic("cli", vm=vms["cli"], mac=CLI_MAC, vni=VNI, ips=(CLI4,), ip_anti_spoof=True)
    one.add_vnic("oth", vm=vms["oth"], mac=OTH_MAC, vni=VNI, ips=(OTH4,))
    one.add_vnic("tcli", vm=vms["tcli"], mac=CLI_MAC, vni=TWIN_VNI, ips=(CLI4,))
    two.add_vnic("srv", vm=vms["srv"], mac=SRV_MAC, vni=VNI, ips=(SRV4,), security_groups=("udp",))
    two.add_vnic(
        "tsrv", vm=vms["tsrv"], mac=SRV_MAC, vni=TWIN_VNI, ips=(SRV4,), security_groups=("udp",)
    )
    for name in ("srv", "tsrv"):
        vms[name].listen("udp", PORT, 4)
    _neighbours(vms, server="srv", clients={"cli": (CLI4, CLI_MAC), "oth": (OTH4, OTH_MAC)})
    _neighbours(vms, server="tsrv", clients={"tcli": (CLI4, CLI_MAC)})
    yield Across(Switch(mode, one, vms), Switch(mode, two, vms))
    # The VNIs go with their vnics: a stopped daemon's kernel would still answer
    # the next mode's hosts on the shared fabric.
    for host, vnic_ids in ((one, ("cli", "oth", "tcli")), (two, ("srv", "tsrv"))):
        for vnic_id in vnic_ids:
            host.delete_vnic(vnic_id)
        host.stop()


def test_status_tells_what_the_fast_path_does_with_the_vxlan_device(across: Across) -> None:
    """With ebpf, each host's VXLAN device of the VNI carries frames both ways (every
    vnic of the VNI is served there); with off, status says nothing of it."""
    for switch in (across.one, across.two):
        frames, both_ways = switch.tunneled(VNI)
        assert both_ways is across.fast
        if not across.fast:
            assert frames == 0


def test_established_udp_crosses_on_the_fast_path_at_both_ends(across: Across) -> None:
    """All 60 echoes come back on either path; with ebpf, all but the first exchange
    skip both bridges: the client's port sends to the VXLAN device, the server's
    host takes the datagrams from its VXLAN device to the server, and back."""
    one, two = across.one, across.two
    before = (
        one.forwarded("cli"),
        two.tunneled(VNI)[0],
        two.forwarded("srv"),
        one.tunneled(VNI)[0],
    )
    bridged = one.bridged(), two.bridged()
    assert one.flow("cli", CLI4, 5001, SRV4, 60) == 60
    after = (
        one.forwarded("cli"),
        two.tunneled(VNI)[0],
        two.forwarded("srv"),
        one.tunneled(VNI)[0],
    )
    forwarded = [a - b for a, b in zip(after, before, strict=True)]
    crossed = one.bridged() - bridged[0], two.bridged() - bridged[1]
    if across.fast:
        assert min(forwarded) >= 58, forwarded
        assert max(crossed) <= 4, crossed
    else:
        assert forwarded == [0, 0, 0, 0]
        assert min(crossed) >= 120, crossed


def test_a_flow_only_the_sending_host_holds_established_stops_at_the_other(
    across: Across,
) -> None:
    """oth (no IP anti-spoofing) forges srv's side of a flow to a port srv keeps
    closed, then sends its own side: host one's conntrack now holds the flow as
    established, and with ebpf its fast path sends the datagrams on to host two.
    Host two has no such flow: its tables judge them, and srv's groups drop them.
    Once srv's group opens the port, the same datagrams arrive (the control)."""
    one, two = across.one, across.two
    forged_reply = Ether(src=OTH_MAC, dst=SRV_MAC) / IP(src=SRV4, dst=OTH4)
    forged_reply /= UDP(sport=CLOSED_PORT, dport=6100)
    frames = {
        f"closed-{i}": Ether(src=OTH_MAC, dst=SRV_MAC)
        / IP(src=OTH4, dst=SRV4)
        / UDP(sport=6100, dport=CLOSED_PORT)
        for i in range(5)
    }
    last = udp_frame(OTH_MAC, OTH4, 6101, SRV_MAC, SRV4)
    before = one.forwarded("oth")
    assert across.seen("oth", "srv", {"forged-reply": forged_reply, **frames}, last) == set()
    entry = one.host.exec(
        "conntrack", "-L", "-p", "udp", "--sport", str(CLOSED_PORT), "--dport", "6100",
        check=False,
    )  # fmt: skip
    assert "udp" in entry and "UNREPLIED" not in entry, entry
    if across.fast:
        assert one.forwarded("oth") - before >= 4, "host one took the flow as established"
    rule = ("udp", "--ip-proto", "udp", "--port", str(CLOSED_PORT), "--cidr", "0.0.0.0/0")
    two.host.cli("sg", "rule", "add", *rule)
    try:
        assert across.seen("oth", "srv", frames, last) == set(frames), "positive control"
    finally:
        two.host.cli("sg", "rule", "del", *rule)


def test_forged_frames_on_an_established_flow_are_dropped(across: Across) -> None:
    """cli's flow to srv is established on both hosts: frames of it from a MAC not
    cli's, with a VLAN tag, or (IP anti-spoofing) from oth's address on oth's own
    established flow never arrive; without IP anti-spoofing the last one does."""
    one = across.one
    assert one.flow("oth", OTH4, 5004, SRV4, 5) == 5
    assert one.flow("cli", CLI4, 5003, SRV4, 5) == 5
    tagged = Ether(src=CLI_MAC, dst=SRV_MAC) / Dot1Q(vlan=5) / IP(src=CLI4, dst=SRV4)
    forged = {
        "forged-mac": udp_frame(FORGED_MAC, CLI4, 5003, SRV_MAC, SRV4),
        "vlan-tagged": tagged / UDP(sport=5003, dport=PORT),
        "forged-ip": udp_frame(CLI_MAC, OTH4, 5004, SRV_MAC, SRV4),
    }
    last = udp_frame(CLI_MAC, CLI4, 5003, SRV_MAC, SRV4)
    assert across.seen("cli", "srv", forged, last) == set()
    one.host.cli("nic", "update", "--id", "cli", "--enable-antispoof", "false")
    try:
        assert across.seen("cli", "srv", {"forged-ip": forged["forged-ip"]}, last) == {
            "forged-ip"
        }, "positive control"
    finally:
        one.host.cli("nic", "update", "--id", "cli", "--enable-antispoof", "true")


def test_vnis_stay_apart_with_the_same_macs_and_addresses(across: Across) -> None:
    """Both VNIs hold the same established flow across the hosts: a frame of VNI
    421's reaches VNI 421's server only."""
    one = across.one
    assert one.flow("cli", CLI4, 5006, SRV4, 5) == 5
    assert one.flow("tcli", CLI4, 5006, SRV4, 5) == 5
    frame = udp_frame(CLI_MAC, CLI4, 5006, SRV_MAC, SRV4)
    assert one.twin_only(frame) == ({"twin"}, False)


def test_a_bypassing_vnic_keeps_its_vnis_frames_to_other_hosts_on_the_bridge(
    lab: Lab, across: Across
) -> None:
    """A bypassing vnic's port learns MACs, so while one is in the VNI, frames to a
    MAC of no served vnic take the bridge (which knows where it is): cli's flow to
    the bypassing vnic gets every echo, cli's flow to srv leaves host one by the
    bridge, and host two still takes it on its fast path. Once the bypassing vnic
    is gone, cli's frames to srv skip host one's bridge again."""
    one, two = across.one, across.two
    byp = lab.vm()
    one.vms["byp"] = byp
    one.host.add_vnic("byp", vm=byp, mac=BYP_MAC, vni=VNI, ips=(BYP4,), bypass_filtering=True)
    try:
        byp.listen("udp", PORT, 4)
        assert one.tunneled(VNI)[1] is False
        assert one.flow("cli", CLI4, 5020, BYP4, 20) == 20
        before = one.forwarded("cli"), two.tunneled(VNI)[0]
        assert one.flow("cli", CLI4, 5021, SRV4, 20) == 20
        assert one.forwarded("cli") == before[0]
        if across.fast:
            assert two.tunneled(VNI)[0] - before[1] >= 19
    finally:
        one.host.delete_vnic("byp")
    assert one.tunneled(VNI)[1] is across.fast
    before_cli = one.forwarded("cli")
    assert one.flow("cli", CLI4, 5021, SRV4, 20) == 20
    assert (one.forwarded("cli") - before_cli >= 19) is across.fast


def test_a_vxlan_device_deleted_by_hand_is_served_once_made_again(across: Across) -> None:
    """Drift: another program deletes host two's VXLAN device of the VNI; the daemon
    makes it again, and the fast path takes the new device (a new ifindex) in."""
    one, two = across.one, across.two
    assert one.flow("cli", CLI4, 5030, SRV4, 5) == 5
    assert (two.tunneled(VNI)[0] > 0) is across.fast
    old = json.loads(two.host.ip("-j", "link", "show", vxlan_name(VNI)))[0]["ifindex"]
    two.host.exec("ip", "link", "del", vxlan_name(VNI))

    def made_again() -> bool:
        links = json.loads(two.host.ip("-j", "link", "show"))
        return any(link["ifname"] == vxlan_name(VNI) for link in links)

    wait_for(made_again, "the daemon making the VXLAN device again")
    new = json.loads(two.host.ip("-j", "link", "show", vxlan_name(VNI)))[0]["ifindex"]
    assert new != old
    # A new device's count starts at 0: the old one's is gone with it.
    wait_for(lambda: two.tunneled(VNI) == (0, across.fast), "the fast path serving it")
    assert one.flow("cli", CLI4, 5030, SRV4, 20) == 20
    assert (two.tunneled(VNI)[0] >= 19) is across.fast


@pytest.fixture
def one_way(across: Across) -> Iterator[Across]:
    """srv lets cli's one-way flows to ONE_WAY_PORT in (:func:`one_way_group`)."""
    with one_way_group(across.two.host, CLI4):
        yield across


def _one_way_batch(across: Across, sport: int, tag: str, count: int = 5) -> set[str]:
    return one_way_batch(across.one, sport, tag, count, src=(CLI_MAC, CLI4), dst=(SRV_MAC, SRV4))


def test_an_admitted_one_way_flow_from_another_host_until_a_narrowing_change(
    one_way: Across,
) -> None:
    """A one-way flow srv's groups admit: after its first datagram, host two takes the
    next ones from its VXLAN device with ebpf (host one sends them by its bridge:
    it has no verdict of srv's); once the member is removed, the very next
    datagrams are dropped, as the tables drop every frame of a flow never answered."""
    across = one_way
    one, two = across.one, across.two
    assert _one_way_batch(across, 6001, "first") == {f"first-{i}" for i in range(5)}
    before = one.forwarded("cli"), two.tunneled(VNI)[0]
    assert _one_way_batch(across, 6001, "next", 30) == {f"next-{i}" for i in range(30)}
    assert one.forwarded("cli") - before[0] <= 1, "only the closing datagram's flow is answered"
    assert (two.tunneled(VNI)[0] - before[1] >= 30) is across.fast
    two.host.cli("sg", "member", "del", "clients", CLI4)
    assert _one_way_batch(across, 6001, "after") == set()


def test_tcp_crosses_on_the_fast_path_when_conntrack_is_liberal(lab: Lab) -> None:
    """With nf_conntrack_tcp_be_liberal on both hosts, an established TCP connection
    across them takes the fast path at both ends; its close still goes through
    conntrack on both (FIN: TIME_WAIT) and a port no rule opens stays closed."""
    hosts = [lab.host(start=False, extra_args=["--fast-path", "ebpf"]) for _ in range(2)]
    for host in hosts:
        host.exec("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1")
        host.start()
        _udp_group(host)
    vms = {"cli": lab.vm(), "srv": lab.vm()}
    hosts[0].add_vnic("cli", vm=vms["cli"], mac=CLI_MAC, vni=TCP_VNI, ips=(CLI4,))
    hosts[1].add_vnic("srv", vm=vms["srv"], mac=SRV_MAC, vni=TCP_VNI, ips=(SRV4,))
    hosts[1].cli("nic", "sg", "set", "srv", "udp")
    vms["srv"].listen("tcp", TCP_PORT, 4)
    vms["srv"].listen("tcp", TCP_PORT + 1, 4)
    one, two = Switch("ebpf", hosts[0], vms), Switch("ebpf", hosts[1], vms)
    assert one.tcp_flow("cli", SRV4, 40) == (40, True)
    assert one.forwarded("cli") >= 38 and two.forwarded("srv") >= 38
    assert one.tunneled(TCP_VNI)[0] >= 38 and two.tunneled(TCP_VNI)[0] >= 38
    for host in hosts:
        entries = host.exec("conntrack", "-L", "-p", "tcp", "--dport", str(TCP_PORT), check=False)
        assert "TIME_WAIT" in entries, entries
    assert vms["cli"].blocked("tcp", SRV4, TCP_PORT + 1)


def test_kill_9_of_either_host_loses_no_datagram_of_a_flow_across(lab: Lab) -> None:
    """kill -9 and a restart of each daemon in turn while a flow across them runs:
    every datagram comes back, and the new daemons' programs take the flow over."""
    one, two = lab.hosts(2, extra_args=["--fast-path", "ebpf"])
    for host in (one, two):
        _udp_group(host)
    vms = {"cli": lab.vm(), "srv": lab.vm()}
    one.add_vnic("cli", vm=vms["cli"], mac=CLI_MAC, vni=KILL_VNI, ips=(CLI4,))
    two.add_vnic(
        "srv", vm=vms["srv"], mac=SRV_MAC, vni=KILL_VNI, ips=(SRV4,), security_groups=("udp",)
    )
    vms["srv"].listen("udp", PORT, 4)
    _neighbours(vms, server="srv", clients={"cli": (CLI4, CLI_MAC)})
    switches = Switch("ebpf", one, vms), Switch("ebpf", two, vms)
    assert switches[0].flow("cli", CLI4, 5009, SRV4, 5) == 5
    command = (sys.executable, "-c", FLOW, CLI4, "5009", SRV4, str(PORT), "400", "0.02")
    flow = vms["cli"].popen(*command)
    for host in (one, two):
        time.sleep(0.5)
        host.kill()
        host.start()
    output, _ = flow.communicate(timeout=60)
    assert int(output.strip()) == 400
    assert switches[0].flow("cli", CLI4, 5009, SRV4, 20) == 20
    assert switches[0].forwarded("cli") >= 19 and switches[1].tunneled(KILL_VNI)[0] >= 19
