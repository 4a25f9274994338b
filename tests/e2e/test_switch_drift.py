"""Other software changing butterfly's kernel objects under a real butterflyd: what it
changes is put back, and filtering never fails open meanwhile.

One host, one VNI: a server vnic whose group opens TCP port 80 only, a client vnic.
Each test makes one change with ``nft``, ``ip``, ``bridge`` or ``tc`` in the host's
namespace (never the root namespace) while the client pings the server every 10 ms:
ICMP is what the server's group drops, so not one reply may come back, before, during
or after the change (the positive control: TCP port 80 answers before the change and
again within 1 s after it). Then the kernel must be as it was: the same nftables
objects, links, port flags, port guards and pinned addresses.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from switch_helpers import BackgroundPing

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.guard import GUARD_PRIO, SENDER_PRIO, GuardKind
from butterfly.dataplane.naming import TABLE, sg_in_chain
from butterfly.dataplane.ruleset import BRIDGE, INET, Key, Obj, parse_listing
from butterfly_lab.lab import UNDERLAY_V4, Host, Lab, Vm, wait_for

pytestmark = pytest.mark.root

VNI = 320
SERVER, CLIENT = "10.32.0.10", "10.32.0.11"
SERVER_MAC = "52:54:00:00:32:10"
BACK_WITHIN = 1.0
"""Seconds within which the allowed flow must be back after a change."""


class Switch:
    def __init__(self, host: Host, server: Vm, client: Vm) -> None:
        self.host, self.server, self.client = host, server, client
        self.baseline = kernel_view(host)

    def allowed(self, timeout: float = 0.3) -> bool:
        return self.client.probe("tcp", SERVER, 80, timeout=timeout)


def _group(host: Host, sg_id: str, *rule: str) -> None:
    host.cli("sg", "add", sg_id, "+", "sg", "rule", "add", sg_id, *rule)


def make_switch(lab: Lab, *extra_args: str) -> Switch:
    host = lab.host(extra_args=extra_args)
    _group(host, "web", "--ip-proto", "tcp", "--port", "80", "--cidr", "0.0.0.0/0")
    _group(host, "open", "--ip-proto", "all", "--cidr", "0.0.0.0/0")
    server, client = lab.vm(), lab.vm()
    host.add_vnic("srv", vm=server, mac=SERVER_MAC, vni=VNI, ips=[SERVER], security_groups=["web"])
    host.add_vnic(
        "cli",
        vm=client,
        mac="52:54:00:00:32:11",
        vni=VNI,
        ips=[CLIENT],
        security_groups=["open"],
        ip_anti_spoof=True,  # the bridge table's IP checks are on the path too
    )
    for port in (80, 81):
        server.listen("tcp", port)
    # What reaches the server, counted inside it: a reply path closed too could hide it.
    server.exec(
        "nft",
        "add table inet probe; add counter inet probe arrived;"
        " add chain inet probe input { type filter hook input priority 0; };"
        " add rule inet probe input icmp type echo-request counter name arrived",
    )
    assert client.reaches("tcp", SERVER, 80), "positive control: port 80 must answer"
    assert client.blocked("tcp", SERVER, 81)
    return Switch(host, server, client)


@pytest.fixture(scope="module")
def switch(lab: Lab) -> Switch:
    return make_switch(lab)


def kernel_view(host: Host) -> dict[str, Any]:
    """butterfly's kernel objects in ``host``, comparable across a re-creation: its
    nftables objects, and per ``bf*`` link its kind, master, MTU, state, port flags,
    guard and sender mark (its tc programs) and pinned addresses (not its ifindex,
    which a re-created link changes)."""
    objects: dict[Key, Obj] = {}
    for family in (BRIDGE, INET):
        listed = host.exec("nft", "-j", "list", "table", family, TABLE, check=False)
        if listed.strip():
            nftables = json.loads(listed)["nftables"]
            objects.update(
                parse_listing(family, [o for o in nftables if "metainfo" not in o]).objects
            )
    shown = json.loads(host.ip("-d", "-j", "link", "show"))
    names = {link["ifindex"]: link["ifname"] for link in shown}
    links = {}
    for link in shown:
        if not link["ifname"].startswith("bf"):
            continue
        slave = link.get("linkinfo", {}).get("info_slave_data", {})
        filters = {
            hook: json.loads(host.exec("tc", "-j", "filter", "show", "dev", link["ifname"], hook))
            for hook in ("egress", "ingress")
        }
        links[link["ifname"]] = {
            "kind": link.get("linkinfo", {}).get("info_kind"),
            "master": link.get("master"),
            "mtu": link["mtu"],
            "up": "UP" in link["flags"],
            "port": {k: slave.get(k) for k in ("learning", "flood", "locked")},
            **{
                hook: sorted(f["options"].get("bpf_name", "") for f in shown if "options" in f)
                for hook, shown in filters.items()
            },
            "alias": link.get("ifalias"),
        }
    pinned = sorted(
        (names.get(entry.get("ifindex"), entry.get("ifname", "?")), entry["mac"])
        for entry in json.loads(host.exec("bridge", "-j", "fdb", "show"))
        if entry.get("state") == "static" and entry.get("ifname", "").startswith("bf")
    )
    return {"nft": objects, "links": links, "pinned": pinned}


def wait_kernel_right(switch: Switch, timeout: float = 10) -> None:
    wait_for(lambda: kernel_view(switch.host) == switch.baseline, "the kernel put back", timeout)


def drift_status(host: Host) -> MessageV0.DriftStatus:
    status = host.call(MessageV0.Request(app_status=True, app_status_drift=True)).app_status
    assert status.HasField("drift")
    return status.drift


def time_back(switch: Switch, timeout: float = 10) -> float:
    """Seconds until the allowed flow answers again."""
    start = time.monotonic()
    while not switch.allowed():
        assert time.monotonic() - start < timeout, "the allowed flow never came back"
    return time.monotonic() - start


def arrived(server: Vm, reset: bool = False) -> int:
    """ICMP echo requests that reached the server (since the last reset)."""
    command = "reset" if reset else "list"
    listed = json.loads(server.exec("nft", "-j", command, "counter", "inet", "probe", "arrived"))
    return int(next(o["counter"]["packets"] for o in listed["nftables"] if "counter" in o))


@pytest.fixture
def blocked_ping(switch: Switch) -> Iterator[BackgroundPing]:
    """ICMP to the server, every 10 ms, all along: its group drops ICMP, so not one
    echo request may reach it."""
    arrived(switch.server, reset=True)
    ping = BackgroundPing(switch.client, SERVER, interval=0.01)
    try:
        yield ping
    finally:
        ping.stop()
        assert ping.replies == 0 and arrived(switch.server) == 0, "a blocked flow got through"


CHANGES = {
    "nft flush ruleset": "nft flush ruleset",
    "delete inet table": f"nft delete table inet {TABLE}",
    "delete bridge table": f"nft delete table bridge {TABLE}",
    "flush forward chain": f"nft flush chain inet {TABLE} filter",
    "flush bridge chain": f"nft flush chain bridge {TABLE} forward",
    "flush group chain": f"nft flush chain inet {TABLE} {sg_in_chain('web')}",
    "flush dispatch map": f"nft flush map inet {TABLE} in_mac",
    "flush port ids": f"nft flush map bridge {TABLE} port_ids",
    "flush filtered set": f"nft flush set bridge {TABLE} filtered",
    "flush anti-spoofing set": f"nft flush set bridge {TABLE} unchecked",
    "flush profile map": f"nft flush map inet {TABLE} in_profiles",
    "delete port": "ip link del bf-srv",
    "port down": "ip link set bf-srv down",
    "port off bridge": "ip link set bf-srv nomaster",
    "port mtu": "ip link set bf-srv mtu 1300",
    "port renamed": "ip link set bf-srv down && ip link set bf-srv name bfstray",
    "port learning": "bridge link set dev bf-srv learning on",
    "port unlocked": "bridge link set dev bf-srv locked off",
    "port flooding": "bridge link set dev bf-srv flood on",
    "pinned address removed": f"bridge fdb del {SERVER_MAC} dev bf-srv master",
    "guard removed": "tc qdisc del dev bf-srv clsact",
    "sender mark removed": (
        f"tc filter del block {GuardKind.OPEN.blocks.ingress} pref {SENDER_PRIO}"
    ),
    "guard program removed": (
        f"tc filter del block {GuardKind.FILTERED.blocks.egress} pref {GUARD_PRIO}"
    ),
    "guard anchor deleted": f"ip link del {GuardKind.FILTERED.anchor}",
    "bridge down": f"ip link set bfbr{VNI} down",
    "bridge deleted": f"ip link del bfbr{VNI}",
    "vxlan deleted": f"ip link del bfvx{VNI}",
    "vxlan mtu": f"ip link set bfvx{VNI} mtu 1280",
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_change_is_put_back_and_never_opens_the_filter(
    switch: Switch, blocked_ping: BackgroundPing, change: str
) -> None:
    assert switch.allowed(timeout=1.0), "positive control before the change"
    before = drift_status(switch.host)
    time.sleep(0.2)  # blocked pings in flight before the change too
    switch.host.exec("sh", "-c", CHANGES[change])
    back = time_back(switch)
    assert back <= BACK_WITHIN, f"the allowed flow came back after {back:.2f} s"
    wait_kernel_right(switch)
    assert switch.client.blocked("tcp", SERVER, 81)
    time.sleep(0.2)  # and blocked pings after the repair
    after = drift_status(switch.host)
    assert after.changes_seen > before.changes_seen
    assert after.repairs > before.repairs
    assert after.repair_failures == before.repair_failures


def test_a_storm_of_flushes_leaves_the_daemon_answering_and_the_kernel_right(
    switch: Switch, blocked_ping: BackgroundPing
) -> None:
    switch.host.exec(
        "sh", "-c", "for i in $(seq 100); do nft flush ruleset || exit 1; done", timeout=120
    )
    assert switch.host.call(MessageV0.Request(nic_list=True)).nic_list
    wait_kernel_right(switch)
    assert switch.allowed(timeout=1.0)
    assert switch.client.blocked("tcp", SERVER, 81)


def test_a_removed_flooding_peer_is_put_back(switch: Switch) -> None:
    peer = UNDERLAY_V4.format(200)  # on the lab's own fabric, where no host has it
    switch.host.cli("vni", "peer", "add", str(VNI), peer)
    try:

        def flooded() -> bool:
            shown = switch.host.exec("bridge", "fdb", "show", "dev", f"bfvx{VNI}")
            return f"dst {peer} " in shown

        assert flooded()
        switch.host.exec(
            "bridge", "fdb", "del", "00:00:00:00:00:00", "dev", f"bfvx{VNI}", "dst", peer
        )
        wait_for(flooded, "the flooding peer put back", timeout=5)
        assert any(peer in line for line in drift_status(switch.host).last_changes)
    finally:
        switch.host.cli("vni", "peer", "del", str(VNI), peer)


def test_status_shows_drift_only_when_asked(switch: Switch) -> None:
    switch.host.exec("nft", "flush", "ruleset")
    wait_kernel_right(switch)
    plain = switch.host.call(MessageV0.Request(app_status=True)).app_status
    assert not plain.HasField("drift"), "a revision-6 client would not parse it"
    shown = switch.host.cli("status")
    assert "kernel drift (repaired)" in shown
    assert "delete table" in shown


@pytest.fixture(scope="module")
def unrepaired(lab: Lab) -> Switch:
    """A switch whose daemon only reports: a change stays until the daemon restarts."""
    return make_switch(lab, "--report-drift-only")


TABLE_CHANGES = [name for name, command in CHANGES.items() if command.startswith("nft")]


@pytest.mark.parametrize("change", TABLE_CHANGES, ids=TABLE_CHANGES)
def test_every_table_change_left_in_place_fails_closed(unrepaired: Switch, change: str) -> None:
    """Not a race won by the repair: with nothing repaired, the blocked flow stays
    blocked for a whole second of pings after each nftables change (the layout fails
    closed); a restart (its start-up reconcile) then puts the filtering back (vnic
    ids lost with the tables may be given in another order)."""
    switch = unrepaired
    arrived(switch.server, reset=True)
    ping = BackgroundPing(switch.client, SERVER, interval=0.01)
    try:
        switch.host.exec("sh", "-c", CHANGES[change])
        time.sleep(1.0)
        assert drift_status(switch.host).changes_seen > 0
        assert switch.client.blocked("tcp", SERVER, 81, timeout=0.2)
    finally:
        ping.stop()
        switch.host.restart()
    assert ping.replies == 0 and arrived(switch.server) == 0, "a blocked flow got through"
    assert switch.client.reaches("tcp", SERVER, 80)
    assert switch.client.blocked("tcp", SERVER, 81)


def test_report_only_repairs_nothing_and_stays_closed(lab: Lab) -> None:
    watched = make_switch(lab, "--report-drift-only")
    arrived(watched.server, reset=True)
    ping = BackgroundPing(watched.client, SERVER, interval=0.01)
    try:
        watched.host.exec("nft", "flush", "ruleset")
        wait_for(lambda: drift_status(watched.host).changes_seen > 0, "the change reported")
        time.sleep(1.0)
        assert not watched.host.exec("nft", "list", "ruleset").strip(), "nothing repaired"
        assert not watched.allowed(), "fail closed: without the tables nothing passes"
        drift = drift_status(watched.host)
        assert drift.report_only and drift.repairs == 0
    finally:
        ping.stop()
    assert ping.replies == 0 and arrived(watched.server) == 0


def test_without_the_guard_a_lost_table_would_open_the_filter(lab: Lab) -> None:
    """The probe's own control: with the guards taken away too, the flush lets the
    blocked flow through (so the tests above would see a filter that fails open)."""
    watched = make_switch(lab, "--report-drift-only")
    arrived(watched.server, reset=True)
    watched.host.exec(
        "sh", "-c", "tc qdisc del dev bf-srv clsact; tc qdisc del dev bf-cli clsact;"
        " nft flush ruleset",
    )  # fmt: skip
    assert watched.server.ping(SERVER.replace(".10", ".11"), count=3).received > 0
    assert arrived(watched.server) == 0
    assert watched.client.ping(SERVER, count=3).received > 0
    assert arrived(watched.server) >= 3


# A filtered sender's own elements: ``out_mac`` (the dispatch to its OUTBOUND rules) and
# ``filtered`` (its non-IP frames dropped). Unlike the rest, losing them could open
# the filter only towards ports without filtering: a sender is probed towards one.

SENDER_MAC, OPEN_MAC, CONTROL_MAC = "52:54:00:00:32:21", "52:54:00:00:32:22", "52:54:00:00:32:23"
OPEN_VM = "10.32.0.22"
RAW_FRAMES = """
import socket, sys, time
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
raw.bind((sys.argv[1], 0))
frame = bytes.fromhex(sys.argv[2])
for _ in range(int(sys.argv[3])):
    raw.send(frame)
    time.sleep(0.01)
"""
"""Sends a frame every 10 ms: in the VM of ``argv[1]``, ``argv[3]`` times."""


def _frame(source: str, destination: str) -> str:
    """A frame neither IP nor ARP (the local experimental ethertype)."""
    return destination.replace(":", "") + source.replace(":", "") + "88b5" + "00" * 46


class Senders:
    """A filtered sender whose OUTBOUND rules open TCP port 80 only, a server (TCP 80
    in), and two vnics without filtering: one the probes aim at, one the control."""

    def __init__(self, lab: Lab, *extra_args: str, vni: int = VNI) -> None:
        """``vni``: another lab host with the same MACs in the same VNI would share
        its VXLAN segment (the lab's fabric) and learn them."""
        host = self.host = lab.host(extra_args=extra_args)
        _group(host, "web", "--ip-proto", "tcp", "--port", "80", "--cidr", "0.0.0.0/0")
        _group(host, "egress", "--dir", "out", "--ip-proto", "tcp", "--port", "80",
               "--cidr", "0.0.0.0/0")  # fmt: skip
        self.server, self.sender, self.open, self.control = (lab.vm() for _ in range(4))
        host.add_vnic("srv", vm=self.server, mac=SERVER_MAC, vni=vni, ips=[SERVER],
                      security_groups=["web"])  # fmt: skip
        host.add_vnic("snd", vm=self.sender, mac=SENDER_MAC, vni=vni, ips=[CLIENT],
                      security_groups=["egress"])  # fmt: skip
        host.add_vnic("opn", vm=self.open, mac=OPEN_MAC, vni=vni, ips=[OPEN_VM],
                      bypass_filtering=True)  # fmt: skip
        host.add_vnic("ctl", vm=self.control, mac=CONTROL_MAC, vni=vni, ips=["10.32.0.23"],
                      bypass_filtering=True)  # fmt: skip
        for vm in (self.server, self.open):
            vm.listen("tcp", 80)
        # What reaches the unfiltered vnic, counted inside it, by sender.
        self.open.exec(
            "nft",
            "add table netdev probe; add counter netdev probe leaked;"
            " add counter netdev probe control; add counter netdev probe pings;"
            " add chain netdev probe in { type filter hook ingress device bf-opn priority 0; };"
            f" add rule netdev probe in ether saddr {SENDER_MAC} ether type 0x88b5"
            " counter name leaked;"
            f" add rule netdev probe in ether saddr {CONTROL_MAC} ether type 0x88b5"
            " counter name control;"
            f" add rule netdev probe in ether saddr {SENDER_MAC} icmp type echo-request"
            " counter name pings",
        )
        assert self.sender.reaches("tcp", SERVER, 80), "positive control: port 80 answers"
        assert self.sender.reaches("tcp", OPEN_VM, 80), "positive control: the sender's rules"
        assert self.control.ping(OPEN_VM, count=3).received, "positive control: no filtering"
        self.baseline = kernel_view(host)

    def counted(self, name: str, reset: bool = False) -> int:
        command = "reset" if reset else "list"
        listed = json.loads(
            self.open.exec("nft", "-j", command, "counter", "netdev", "probe", name)
        )
        return int(next(o["counter"]["packets"] for o in listed["nftables"] if "counter" in o))

    def frames(self, vm: Vm, source: str, count: int) -> Any:
        """``count`` frames from ``vm`` to the unfiltered vnic, every 10 ms, in the background."""
        port = "bf-snd" if vm is self.sender else "bf-ctl"
        frame = _frame(source, OPEN_MAC)
        return vm.popen(sys.executable, "-c", RAW_FRAMES, port, frame, str(count))


@contextmanager
def sender_probes(senders: Senders) -> Iterator[None]:
    """While the test acts: the sender pings the unfiltered vnic (its OUTBOUND rules
    drop ICMP) and sends it non-IP frames (dropped from a filtered vnic), every 10 ms;
    the control sends it non-IP frames too, which must go on arriving."""
    for name in ("leaked", "control", "pings"):
        senders.counted(name, reset=True)
    ping = BackgroundPing(senders.sender, OPEN_VM, interval=0.01)
    leaks = senders.frames(senders.sender, SENDER_MAC, 1000)
    control = senders.frames(senders.control, CONTROL_MAC, 1000)
    try:
        wait_for(lambda: senders.counted("control") > 0, "the control's frames arriving")
        started = senders.counted("control")
        yield
    finally:
        ping.stop()
        for process in (leaks, control):
            process.kill()
            process.wait()
    assert senders.counted("control") > started, "positive control: unfiltered frames arrive"
    assert ping.replies == 0 and senders.counted("pings") == 0, "OUTBOUND rules skipped"
    assert senders.counted("leaked") == 0, "a filtered vnic's non-IP frame got through"


SENDER_CHANGES = {
    "flush outbound map": f"nft flush map inet {TABLE} out_mac",
    "flush outbound profiles": f"nft flush map inet {TABLE} out_profiles",
    "sender's outbound element": f"nft delete element inet {TABLE} out_mac"
    f" {{ bfbr{VNI} . {SENDER_MAC} }}",
    "sender's filtered element": f"nft delete element bridge {TABLE} filtered {{ bf-snd }}",
    "flush filtered set": f"nft flush set bridge {TABLE} filtered",
}


@pytest.fixture(scope="module")
def senders(lab: Lab) -> Senders:
    return Senders(lab)


@pytest.mark.parametrize("change", list(SENDER_CHANGES), ids=list(SENDER_CHANGES))
def test_a_lost_sender_element_is_put_back_and_never_opens_the_filter(
    senders: Senders, change: str
) -> None:
    with sender_probes(senders):
        time.sleep(0.3)  # blocked probes in flight before the change too
        senders.host.exec("sh", "-c", SENDER_CHANGES[change])
        start = time.monotonic()
        while not senders.sender.probe("tcp", SERVER, 80, timeout=0.3):
            assert time.monotonic() - start < 10, "the allowed flow never came back"
        back = time.monotonic() - start
        assert back <= BACK_WITHIN, f"the allowed flow came back after {back:.2f} s"
        wait_for(lambda: kernel_view(senders.host) == senders.baseline, "the kernel put back")
        assert senders.sender.probe("tcp", OPEN_VM, 80, timeout=1.0), "the sender's rules"
        time.sleep(0.3)  # and blocked probes after the repair


def test_lost_sender_elements_left_in_place_fail_closed(lab: Lab) -> None:
    """Not a race won by the repair: with nothing repaired, a second of probes after
    both elements are gone; then the probe's own control: the unfiltered vnic's
    guard taken away too, the sender's frames arrive (the probe sees a leak)."""
    unrepaired = Senders(lab, "--report-drift-only", vni=VNI + 1)
    with sender_probes(unrepaired):
        unrepaired.host.exec(
            "sh", "-c", f"{SENDER_CHANGES['flush outbound map']};"
            f" {SENDER_CHANGES['flush filtered set']}",
        )  # fmt: skip
        time.sleep(1.0)
        assert drift_status(unrepaired.host).changes_seen > 0
        # Without its dispatch, even what its rules allow drops: they cannot be read.
        assert not unrepaired.sender.probe("tcp", SERVER, 80, timeout=0.5), "fails closed"
    unrepaired.host.exec("tc", "qdisc", "del", "dev", "bf-opn", "clsact")
    unrepaired.frames(unrepaired.sender, SENDER_MAC, 5).wait()
    assert unrepaired.counted("leaked") == 5
    assert unrepaired.sender.ping(OPEN_VM, count=3).received == 3
