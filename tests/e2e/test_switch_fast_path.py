"""The eBPF fast path (``--fast-path``) through a real butterflyd, attacked from its VMs.

Every test runs twice: with ``--fast-path ebpf`` and with ``off`` (bridge +
nftables only), and must see the same verdicts; only the path differs. A
server vnic ``srv`` lets UDP 7000 in; clients ``cli`` (IP anti-spoofing on)
and ``oth`` are open to nothing but replies. VNI 411 holds twins of ``srv``
and ``cli`` with the same MACs and addresses. Which path a frame took is told
by two counters: the program's own (per sending vnic, in ``butterfly
status``) and an nftables counter of this test in the host's forward hook,
which only frames crossing the bridge reach (fast_path_helpers.py). Across
hosts: test_switch_fast_path_across.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from functools import partial

import pytest
from fast_path_helpers import (
    FLOW,
    ONE_WAY_PORT,
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

from butterfly.api.client import Client
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.fastpath import FILTER_NAME
from butterfly.dataplane.guard import FAST_PATH_PRIO, GuardKind
from butterfly.dataplane.naming import tap_name
from butterfly_lab.lab import Lab, wait_for

pytestmark = [pytest.mark.root, pytest.mark.needs("ebpf-fast-path")]

VNI, TWIN_VNI = 410, 411
SRV4, SRV6, SRV_MAC = "10.41.0.10", "fd41::10", "52:54:00:00:41:10"
CLI4, CLI6, CLI_MAC = "10.41.0.11", "fd41::11", "52:54:00:00:41:11"
OTH4, OTH_MAC = "10.41.0.12", "52:54:00:00:41:12"
FORGED_MAC = "52:54:00:00:41:99"


@pytest.fixture(scope="module", params=["ebpf", "off"])
def switch(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Switch]:
    mode = str(request.param)
    host = lab.host(extra_args=["--fast-path", mode])
    host.cli(
        "sg", "add", "udp",
        "+", "sg", "rule", "add", "udp", "--ip-proto", "udp", "--port", str(PORT),
        "--cidr", "0.0.0.0/0",
        "+", "sg", "rule", "add", "udp", "--ip-proto", "udp", "--port", str(PORT),
        "--cidr", "::/0",
        "+", "sg", "rule", "add", "udp", "--ip-proto", "tcp", "--port", str(TCP_PORT),
        "--cidr", "0.0.0.0/0",
    )  # fmt: skip
    vms = {name: lab.vm() for name in ("srv", "cli", "oth", "tsrv", "tcli")}
    host.add_vnic(
        "srv", vm=vms["srv"], mac=SRV_MAC, vni=VNI, ips=(SRV4, SRV6), security_groups=("udp",)
    )
    host.add_vnic("cli", vm=vms["cli"], mac=CLI_MAC, vni=VNI, ips=(CLI4, CLI6), ip_anti_spoof=True)
    host.add_vnic("oth", vm=vms["oth"], mac=OTH_MAC, vni=VNI, ips=(OTH4,))
    host.add_vnic(
        "tsrv", vm=vms["tsrv"], mac=SRV_MAC, vni=TWIN_VNI, ips=(SRV4,), security_groups=("udp",)
    )
    host.add_vnic("tcli", vm=vms["tcli"], mac=CLI_MAC, vni=TWIN_VNI, ips=(CLI4,))
    for name in ("srv", "tsrv"):
        vms[name].listen("udp", PORT, 4)
    vms["srv"].listen("udp", PORT, 6)
    vms["srv"].listen("tcp", TCP_PORT, 4)
    for name in ("cli", "oth", "tcli"):
        # The guests' neighbour entries, so that raw frames and flows need no ARP first.
        vms[name].ip("neigh", "replace", SRV4, "lladdr", SRV_MAC, "dev", tap_name(name))
    add_probe(host)
    yield Switch(mode, host, vms)
    host.stop()


def test_status_names_the_path(switch: Switch) -> None:
    graph = switch.host.cli("status")
    expected = "fast path: ebpf" if switch.fast else "fast path: off (--fast-path off)"
    assert expected in graph


@pytest.mark.parametrize(("src", "dst", "sport"), [(CLI4, SRV4, 5001), (CLI6, SRV6, 5101)])
def test_established_udp_takes_the_fast_path(
    switch: Switch, src: str, dst: str, sport: int
) -> None:
    """All 60 echoes come back on either path; with ebpf, all but the first
    exchange (which conntrack must see: new, then its reply) skip the bridge,
    and nic_stats still count every frame."""
    request = MessageV0.Request(nic_stats="srv")
    stats_before = switch.host.call(request).nic_stats
    forwarded_before = (switch.forwarded("cli"), switch.forwarded("srv"))
    bridged_before = switch.bridged()
    assert switch.flow("cli", src, sport, dst, 60) == 60
    forwarded = (
        switch.forwarded("cli") - forwarded_before[0],
        switch.forwarded("srv") - forwarded_before[1],
    )
    bridged = switch.bridged() - bridged_before
    if switch.fast:
        assert forwarded[0] >= 58 and forwarded[1] >= 58, forwarded
        assert bridged <= 4, bridged
    else:
        assert forwarded == (0, 0)
        assert bridged >= 120
    stats = switch.host.call(request).nic_stats
    payload = 60 * len("flow 10")
    assert stats.__getattribute__("in") - stats_before.__getattribute__("in") >= payload
    assert stats.out - stats_before.out >= payload


def test_blocked_ports_stay_blocked(switch: Switch) -> None:
    """A port no rule opens, in both directions, even beside an established flow."""
    assert switch.flow("cli", CLI4, 5002, SRV4, 5) == 5, "positive control"
    switch.vms["cli"].listen("udp", 5002, 4)
    assert not switch.vms["srv"].reaches("udp", CLI4, 5002, tries=2)
    assert switch.vms["cli"].blocked("udp", SRV4, 7001)


def test_forged_frames_are_dropped(switch: Switch) -> None:
    """Frames of an established flow from a MAC that is not the vnic's, or with a VLAN
    tag, never arrive."""
    assert switch.flow("cli", CLI4, 5003, SRV4, 5) == 5
    tagged = Ether(src=CLI_MAC, dst=SRV_MAC) / Dot1Q(vlan=5) / IP(src=CLI4, dst=SRV4)
    forged = {
        "forged-mac": udp_frame(FORGED_MAC, CLI4, 5003, SRV_MAC, SRV4),
        "vlan-tagged": tagged / UDP(sport=5003, dport=PORT),
    }
    last = udp_frame(CLI_MAC, CLI4, 5003, SRV_MAC, SRV4)
    assert switch.seen("cli", "srv", forged, last) == set()


def test_forged_address_is_dropped_with_ip_anti_spoof(switch: Switch) -> None:
    """cli forges oth's address on oth's established flow: dropped while cli has IP
    anti-spoofing; without it, the very same frame gets through (on both paths:
    the flow is established), which shows the frame would match."""
    assert switch.flow("oth", OTH4, 5004, SRV4, 5) == 5
    assert switch.flow("cli", CLI4, 5003, SRV4, 5) == 5
    forged = {"forged-ip": udp_frame(CLI_MAC, OTH4, 5004, SRV_MAC, SRV4)}
    last = udp_frame(CLI_MAC, CLI4, 5003, SRV_MAC, SRV4)
    assert switch.seen("cli", "srv", forged, last) == set()
    switch.host.cli("nic", "update", "--id", "cli", "--enable-antispoof", "false")
    try:
        assert switch.seen("cli", "srv", forged, last) == {"forged-ip"}
    finally:
        switch.host.cli("nic", "update", "--id", "cli", "--enable-antispoof", "true")


def test_vnis_stay_apart_with_the_same_macs_and_addresses(switch: Switch) -> None:
    """Both VNIs hold the same established flow (same MACs, addresses, ports): a frame
    of VNI 411's reaches VNI 411's server only."""
    assert switch.flow("cli", CLI4, 5006, SRV4, 5) == 5
    assert switch.flow("tcli", CLI4, 5006, SRV4, 5) == 5
    frame = udp_frame(CLI_MAC, CLI4, 5006, SRV_MAC, SRV4)
    assert switch.twin_only(frame) == ({"twin"}, False)


def test_rule_removal_stops_new_flows_not_established_ones(switch: Switch) -> None:
    """As the bridge + nftables path does: once srv's rule is gone, a new flow is
    dropped at once, while a flow established before lives on (conntrack)."""
    assert switch.flow("cli", CLI4, 5007, SRV4, 5) == 5
    switch.host.cli("nic", "sg", "set", "srv")
    try:
        assert switch.flow("cli", CLI4, 5008, SRV4, 3) == 0
        assert switch.flow("cli", CLI4, 5007, SRV4, 5) == 5
    finally:
        switch.host.cli("nic", "sg", "set", "srv", "udp")
    assert switch.flow("cli", CLI4, 5008, SRV4, 3) == 3


def test_tcp_stays_on_the_bridge_path_while_conntrack_checks_windows(switch: Switch) -> None:
    before = switch.forwarded("cli"), switch.forwarded("srv")
    assert switch.tcp_flow("cli", SRV4, 20) == (20, True)
    assert (switch.forwarded("cli"), switch.forwarded("srv")) == before


def test_a_program_removed_by_hand_is_put_back(switch: Switch) -> None:
    """Drift repair: another program deletes the fast path's filter from the ports'
    shared blocks; the daemon puts it back within a second, and the flow takes
    it again."""

    def programs() -> str:
        return switch.host.exec("tc", "filter", "show", "dev", tap_name("cli"), "ingress")

    if not switch.fast:
        assert "bpf" not in programs()
        return
    assert FILTER_NAME in programs()
    for kind in GuardKind:
        block = str(kind.blocks.ingress)
        switch.host.exec("tc", "filter", "del", "block", block, "pref", str(FAST_PATH_PRIO))
    wait_for(lambda: FILTER_NAME in programs(), "the daemon putting the fast path back")
    before = switch.forwarded("cli")
    assert switch.flow("cli", CLI4, 5010, SRV4, 20) == 20
    assert switch.forwarded("cli") - before >= 19


def test_restarts_keep_the_flow_and_off_takes_the_program_away(lab: Lab) -> None:
    """kill -9 and a restart while an established flow runs: no datagram lost, the
    new daemon's program takes over; a daemon started with ``off`` removes it."""
    host = lab.host(extra_args=["--fast-path", "ebpf"])
    srv, cli = lab.vm(), lab.vm()
    host.cli(
        "sg", "add", "udp", "+", "sg", "rule", "add", "udp", "--ip-proto", "udp",
        "--port", str(PORT), "--cidr", "0.0.0.0/0",
    )  # fmt: skip
    host.add_vnic("srv", vm=srv, mac=SRV_MAC, vni=VNI, ips=(SRV4,), security_groups=("udp",))
    host.add_vnic("cli", vm=cli, mac=CLI_MAC, vni=VNI, ips=(CLI4,))
    srv.listen("udp", PORT, 4)
    switch = Switch("ebpf", host, {"srv": srv, "cli": cli})
    assert switch.flow("cli", CLI4, 5009, SRV4, 5) == 5
    flow = cli.popen(sys.executable, "-c", FLOW, CLI4, "5009", SRV4, str(PORT), "300", "0.02")
    time.sleep(0.5)
    host.kill()
    host.start()
    output, _ = flow.communicate(timeout=60)
    assert int(output.strip()) == 300
    assert switch.flow("cli", CLI4, 5009, SRV4, 20) == 20
    assert switch.forwarded("cli") >= 19, "the new daemon's program forwards"
    host.stop()
    host.daemon.extra_args = [*host.daemon.extra_args, "--fast-path", "off"]
    host.start()

    def programs() -> str:
        return "".join(
            host.exec("tc", "filter", "show", "dev", tap_name(port), "ingress")
            for port in ("srv", "cli")
        )

    wait_for(lambda: "bpf" not in programs(), "the start-up reconcile removing the programs")
    assert switch.flow("cli", CLI4, 5009, SRV4, 5) == 5
    assert "fast path: off (--fast-path off)" in host.cli("status")


def test_a_restart_answers_before_the_program_loads_and_a_vnic_added_then_takes_it(
    lab: Lab,
) -> None:
    """kill -9 and a restart: the first request, sent while the daemon starts, is
    answered while the fast path is still loading (status says so: the kernel's
    verifier runs after the API serves); a vnic added then is served by the new
    program once the start-up reconcile has attached it, as one added later is."""
    host = lab.host(extra_args=["--fast-path", "ebpf"])
    srv, cli = lab.vm(), lab.vm()
    host.cli(
        "sg", "add", "udp", "+", "sg", "rule", "add", "udp", "--ip-proto", "udp",
        "--port", str(PORT), "--cidr", "0.0.0.0/0",
    )  # fmt: skip
    host.add_vnic("srv", vm=srv, mac=SRV_MAC, vni=VNI, ips=(SRV4,), security_groups=("udp",))
    srv.listen("udp", PORT, 4)
    host.kill()
    add = MessageV0.Request()
    add.nic_add.id = "cli"
    add.nic_add.mac = CLI_MAC
    add.nic_add.vni = VNI
    add.nic_add.ip.append(CLI4)
    add.nic_add.type = MessageV0.Nic.NETNS
    add.nic_add.path = cli.name
    with Client(endpoint=host.endpoint, timeout_ms=20_000) as early:
        host.spawn()
        status = MessageV0.Request(app_status=True, app_status_reconcile=True)
        first = early.call(status).response
        added = early.call(add).response
    assert first.status.status and added.status.status, (first, added)
    assert "fast path: ebpf, loading" in first.app_status.graph_dot
    assert first.app_status.reconcile.running
    wait_for(
        lambda: "fast path: ebpf: established UDP" in host.cli("status"),
        "the start-up reconcile attaching the fast path",
    )
    switch = Switch("ebpf", host, {"srv": srv, "cli": cli})
    assert switch.flow("cli", CLI4, 5011, SRV4, 20) == 20
    assert switch.forwarded("cli") >= 19, "the vnic added during the start-up takes the fast path"
    assert switch.forwarded("srv") >= 19


def test_tcp_takes_the_fast_path_when_conntrack_is_liberal(lab: Lab) -> None:
    """With nf_conntrack_tcp_be_liberal in the daemon's namespace, established TCP
    takes the fast path; the close still goes through conntrack (FIN: the entry
    ends in TIME_WAIT) and a port no rule opens stays closed."""
    host = lab.host(start=False, extra_args=["--fast-path", "ebpf"])
    host.exec("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1")
    host.start()
    assert "established UDP and TCP (conntrack is liberal)" in host.cli("status")
    srv, cli = lab.vm(), lab.vm()
    host.cli(
        "sg", "add", "tcp", "+", "sg", "rule", "add", "tcp", "--ip-proto", "tcp",
        "--port", str(TCP_PORT), "--cidr", "0.0.0.0/0",
    )  # fmt: skip
    host.add_vnic("srv", vm=srv, mac=SRV_MAC, vni=VNI, ips=(SRV4,), security_groups=("tcp",))
    host.add_vnic("cli", vm=cli, mac=CLI_MAC, vni=VNI, ips=(CLI4,))
    srv.listen("tcp", TCP_PORT, 4)
    srv.listen("tcp", TCP_PORT + 1, 4)
    switch = Switch("ebpf", host, {"srv": srv, "cli": cli})
    assert switch.tcp_flow("cli", SRV4, 40) == (40, True)
    assert switch.forwarded("cli") >= 38 and switch.forwarded("srv") >= 38
    entries = host.exec("conntrack", "-L", "-p", "tcp", "--dport", str(TCP_PORT), check=False)
    assert "TIME_WAIT" in entries, entries
    assert cli.blocked("tcp", SRV4, TCP_PORT + 1)


@pytest.fixture
def one_way(switch: Switch) -> Iterator[Switch]:
    """srv lets cli's one-way flows to ONE_WAY_PORT in (:func:`one_way_group`)."""
    with one_way_group(switch.host, CLI4):
        try:
            yield switch
        finally:
            switch.host.cli("nic", "sg", "set", "oth")


_one_way_batch = partial(one_way_batch, src=(CLI_MAC, CLI4), dst=(SRV_MAC, SRV4))


def _unreplied(switch: Switch, sport: int) -> str:
    """conntrack's entry of cli's flow from ``sport`` to ONE_WAY_PORT ("" if none)."""
    return switch.host.exec(
        "conntrack", "-L", "-p", "udp", "--sport", str(sport), "--dport", str(ONE_WAY_PORT),
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("narrowing", ["rule removed", "group detached", "member removed"])
def test_a_narrowing_change_stops_an_unreplied_flow(one_way: Switch, narrowing: str) -> None:
    """A one-way flow the groups allow passes, and conntrack holds it unreplied;
    once the change takes its permission away, its very next datagrams are
    dropped, as the tables drop every frame of a flow never answered."""
    switch = one_way
    sport = {"rule removed": 6001, "group detached": 6011, "member removed": 6021}[narrowing]
    expected = {f"before-{i}" for i in range(5)}
    assert _one_way_batch(switch, sport, "before") == expected, "positive control"
    assert "UNREPLIED" in _unreplied(switch, sport)
    if narrowing == "rule removed":
        switch.host.cli(
            "sg", "rule", "del", "oneway", "--ip-proto", "udp", "--port", str(ONE_WAY_PORT),
            "--sg-members", "clients",
        )  # fmt: skip
    elif narrowing == "group detached":
        switch.host.cli("nic", "sg", "set", "srv", "udp")
    else:
        switch.host.cli("sg", "member", "del", "clients", CLI4)
    assert _one_way_batch(switch, sport, "after") == set()


def test_a_flow_the_groups_never_allowed_never_passes(one_way: Switch) -> None:
    """One port up from the open one: every datagram of the flow dropped, however many."""
    switch = one_way
    frames = {
        f"closed-{i}": Ether(src=CLI_MAC, dst=SRV_MAC)
        / IP(src=CLI4, dst=SRV4)
        / UDP(sport=6031, dport=ONE_WAY_PORT + 1)
        for i in range(20)
    }
    assert switch.seen("cli", "srv", frames, udp_frame(CLI_MAC, CLI4, 6032, SRV_MAC, SRV4)) == set()


def test_an_unreplied_flow_admitted_by_one_vnic_does_not_open_another(one_way: Switch) -> None:
    """cli sends a datagram to srv's MAC but oth's address: srv's groups admit it, so
    conntrack holds the flow (unreplied, in the VNI's zone). The same 5-tuple sent
    to oth's MAC must still meet oth's groups (which let only port 7000 in): an
    unreplied entry proves a verdict for the frame's receiver, not for the flow."""
    switch = one_way
    switch.host.cli("nic", "sg", "set", "oth", "udp")
    admitted = {
        "to-srv": Ether(src=CLI_MAC, dst=SRV_MAC)
        / IP(src=CLI4, dst=OTH4)
        / UDP(sport=6041, dport=ONE_WAY_PORT)
    }
    assert switch.seen("cli", "srv", admitted, udp_frame(CLI_MAC, CLI4, 6042, SRV_MAC, SRV4)) == {
        "to-srv"
    }, "positive control"
    assert "UNREPLIED" in _unreplied(switch, 6041)
    replayed = {
        f"to-oth-{i}": Ether(src=CLI_MAC, dst=OTH_MAC)
        / IP(src=CLI4, dst=OTH4)
        / UDP(sport=6041, dport=ONE_WAY_PORT)
        for i in range(5)
    }
    last = udp_frame(CLI_MAC, CLI4, 6043, OTH_MAC, OTH4)
    assert switch.seen("cli", "oth", replayed, last) == set()


def test_an_admitted_one_way_flow_takes_the_fast_path(one_way: Switch) -> None:
    """After its first datagram (judged by the tables), an unreplied flow's next
    ones skip the bridge with ebpf (the program's counter); all arrive on both
    paths. The first frame of the reply direction still takes the bridge, so
    conntrack sees it: the entry is no longer unreplied."""
    switch = one_way
    assert _one_way_batch(switch, 6051, "first") == {f"first-{i}" for i in range(5)}
    before = switch.forwarded("cli"), switch.forwarded("srv")
    frames = {
        f"next-{i}": Ether(src=CLI_MAC, dst=SRV_MAC)
        / IP(src=CLI4, dst=SRV4)
        / UDP(sport=6051, dport=ONE_WAY_PORT)
        for i in range(30)
    }
    last = udp_frame(CLI_MAC, CLI4, 6052, SRV_MAC, SRV4)
    assert switch.seen("cli", "srv", frames, last) == set(frames)
    forwarded = switch.forwarded("cli") - before[0]
    if switch.fast:
        assert forwarded >= 30, forwarded
    else:
        assert forwarded == 0
    assert "UNREPLIED" in _unreplied(switch, 6051)
    assert _one_way_batch(switch, 6053, "other") == {f"other-{i}" for i in range(5)}
    time.sleep(0.5)  # srv's echoes of the batches' last datagrams are through
    before_replies = switch.forwarded("srv")

    def reply(sport: int) -> Ether:
        return (
            Ether(src=SRV_MAC, dst=CLI_MAC)
            / IP(src=SRV4, dst=CLI4)
            / UDP(sport=ONE_WAY_PORT, dport=sport)
        )

    assert switch.seen("srv", "cli", {"reply": reply(6051)}, reply(6053)) == {"reply"}
    assert switch.forwarded("srv") == before_replies, "first replies take the bridge"
    for sport in (6051, 6053):
        entry = _unreplied(switch, sport)
        assert "UNREPLIED" not in entry and "udp" in entry, entry


def test_an_unreplied_flow_admitted_from_one_vnic_does_not_free_another(one_way: Switch) -> None:
    """oth (no IP anti-spoofing, no OUTBOUND rules) sends a flow with cli's address
    to srv, which admits it. cli's OUTBOUND rules allow only UDP 7000: the
    very same 5-tuple from cli must still meet them and be dropped."""
    switch = one_way
    host = switch.host
    host.cli(
        "sg", "add", "out7000",
        "+", "sg", "rule", "add", "out7000", "--dir", "out", "--ip-proto", "udp",
        "--port", str(PORT), "--cidr", "0.0.0.0/0",
    )  # fmt: skip
    host.cli("nic", "sg", "set", "cli", "out7000")
    try:
        switch.vms["oth"].ip("neigh", "replace", CLI4, "lladdr", CLI_MAC, "dev", tap_name("oth"))
        spoofed = {
            f"from-oth-{i}": Ether(src=OTH_MAC, dst=SRV_MAC)
            / IP(src=CLI4, dst=SRV4)
            / UDP(sport=6061, dport=ONE_WAY_PORT)
            for i in range(3)
        }
        last = udp_frame(OTH_MAC, OTH4, 6062, SRV_MAC, SRV4)
        assert switch.seen("oth", "srv", spoofed, last) == set(spoofed), "positive control"
        assert "UNREPLIED" in _unreplied(switch, 6061)
        replayed = {
            f"from-cli-{i}": Ether(src=CLI_MAC, dst=SRV_MAC)
            / IP(src=CLI4, dst=SRV4)
            / UDP(sport=6061, dport=ONE_WAY_PORT)
            for i in range(5)
        }
        last = udp_frame(CLI_MAC, CLI4, 6063, SRV_MAC, SRV4)
        assert switch.seen("cli", "srv", replayed, last) == set()
    finally:
        host.cli("nic", "sg", "set", "cli")
        host.cli("sg", "del", "out7000")
