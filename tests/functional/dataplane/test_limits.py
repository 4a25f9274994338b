"""Per-vnic caps on connections: a tenant flooding new flows cannot fill the host's table.

The attackers send UDP from many source ports (each a new tracked flow) with
their own addresses, to a neighbour whose group admits everything; what the
host's connection table then holds is read with ``conntrack`` in the host's
namespace, what was dropped from butterfly's drop counter.
"""

import re
import threading
import time
from dataclasses import replace

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from butterfly.dataplane.naming import tap_name
from butterfly.dataplane.ruleset import ConnLimits
from butterfly.model import State, Vnic

from .conftest import Dataplane, Guest, Host, Lab, netns_vnic, open_sg, plug

pytestmark = pytest.mark.root


def _mac(index: int) -> str:
    return f"52:54:00:00:0c:{index:02x}"


def _ip(index: int, vni: int = 42) -> str:
    return f"10.{vni % 256}.0.{index}"


class Tenants:
    """One host; vnic ``i`` of VNI ``vni`` is ``_mac(i)``/``_ip(i, vni)``, group "open"."""

    def __init__(self, lab: Lab, limits: ConnLimits) -> None:
        self.lab = lab
        self.host: Host = lab.host()
        self.dataplane: Dataplane = self.host.dataplane(limits=limits)
        self.state = State()
        open_sg(self.dataplane, self.state)
        self.guests: dict[int, Guest] = {}
        self.vnics: dict[int, Vnic] = {}

    def add(self, index: int, vni: int = 42, **fields: object) -> Guest:
        guest = self.lab.guest()
        vnic = netns_vnic(
            f"v{index}", guest, _mac(index), (_ip(index, vni),), vni=vni,
            security_groups=("open",), ip_anti_spoof=True, **fields,
        )  # fmt: skip
        plug(self.dataplane, self.state, vnic)
        self.guests[index], self.vnics[index] = guest, vnic
        return guest

    def update(self, index: int, **fields: object) -> None:
        before = self.vnics[index]
        after = replace(before, **fields)  # type: ignore[arg-type]
        self.state.put_vnic(after)
        self.dataplane.update(before, after, self.state)
        self.vnics[index] = after

    def flood(
        self, sender: int, receiver: int, flows: int, first_port: int = 1024, per_flow: int = 1
    ) -> None:
        """``flows`` new UDP flows (distinct source ports), ``per_flow`` datagrams each."""
        frames = [
            bytes(
                Ether(src=_mac(sender), dst=_mac(receiver))
                / IP(src=_ip(sender), dst=_ip(receiver))
                / UDP(sport=first_port + n, dport=9)
            ).hex()
            for n in range(flows)
            for _ in range(per_flow)
        ]
        guest = self.guests[sender]
        for start in range(0, flows, 5000):
            guest.agent.call(
                "send_frames", ifname=tap_name(f"v{sender}"), frames=frames[start : start + 5000]
            )

    def tracked(self, index: int) -> int:
        """Flows the host tracks from vnic ``index``."""
        time.sleep(0.2)
        listing = self.host.exec("conntrack", "-L", "-p", "udp", "-s", _ip(index), check=False)
        return len([line for line in listing.splitlines() if line.startswith("udp")])

    def dropped(self, index: int) -> int:
        """Packets of vnic ``index`` dropped by its caps (butterfly's counter)."""
        listing = self.host.exec("nft", "list", "set", "inet", "butterfly", "dyn_drops")
        found = re.search(rf"{re.escape(_mac(index))} counter packets (\d+)", listing)
        return int(found.group(1)) if found else 0


def test_a_vnic_holds_at_most_its_cap_of_tracked_connections(lab: Lab) -> None:
    """The daemon-wide cap, a vnic's lower one, and a vnic without cap (the
    positive control: every flow is tracked); the excess is counted."""
    tenants = Tenants(lab, ConnLimits(connections=100, per_second=0))
    for index in (1, 2, 3, 4):
        tenants.add(index)
    tenants.update(3, max_connections=20)
    tenants.update(4, max_connections=0)
    for sender in (1, 3, 4):
        tenants.flood(sender, 2, 400)
    assert 90 <= tenants.tracked(1) <= 100
    assert 15 <= tenants.tracked(3) <= 20
    assert tenants.tracked(4) == 400
    assert tenants.dropped(1) >= 300
    assert tenants.dropped(3) >= 380
    assert tenants.dropped(4) == 0
    graph = tenants.dataplane.graph(tenants.state)
    shown = re.search(r"limits: at most 100 connections, any new/s; (\d+) dropped", graph)
    assert shown is not None and int(shown.group(1)) == tenants.dropped(1)
    assert "limits: any connections, any new/s; 0 dropped" in graph


def test_a_vnic_starts_at_most_its_rate_of_connections(lab: Lab) -> None:
    """A burst of 400 new flows gets the rate's worth through (its burst, plus
    what the bucket refills while the burst is sent), a second after as many
    again; a vnic whose own rate is higher gets more."""
    tenants = Tenants(lab, ConnLimits(connections=0, per_second=50))
    for index in (1, 2, 3):
        tenants.add(index)
    tenants.update(3, max_new_connections=300)

    def passed(sender: int, rate: int, first_port: int, before: int = 0) -> None:
        start = time.monotonic()
        tenants.flood(sender, 2, 400, first_port=first_port)
        refill = rate * (time.monotonic() - start)
        assert rate - 5 <= tenants.tracked(sender) - before <= rate + refill + 5

    passed(1, 50, 1024)
    time.sleep(1.2)
    passed(1, 50, 2000, before=tenants.tracked(1))
    passed(3, 300, 1024)
    assert tenants.dropped(1) >= 600


def test_a_one_way_stream_is_one_connection_however_fast(lab: Lab) -> None:
    """Until it is answered, every datagram of a UDP flow is in conntrack's state
    "new": only the flow's first one may count against the rate of new
    connections, or a one-way stream (video, logs) above the rate loses the
    excess. The positive control: as many distinct flows are capped."""
    tenants = Tenants(lab, ConnLimits(connections=0, per_second=50))
    for index in (1, 2):
        tenants.add(index)
    tenants.flood(1, 2, 1, first_port=4000, per_flow=400)
    assert tenants.tracked(1) == 1
    assert tenants.dropped(1) == 0
    tenants.flood(1, 2, 400, first_port=5000)
    assert tenants.dropped(1) >= 300


def test_a_flood_from_two_vnics_leaves_the_others_connections_working(lab: Lab) -> None:
    """Two attackers of one tenant flood each other with new flows for several
    seconds; meanwhile new TCP connections between other vnics, in the
    attackers' VNI and in another, all succeed, and the attackers together
    hold no more than their caps in the host's table."""
    tenants = Tenants(lab, ConnLimits(connections=500, per_second=200))
    for index in (1, 2, 3, 4):
        tenants.add(index)
    for index in (5, 6):
        tenants.add(index, vni=7)
    tenants.guests[4].listen("tcp", 8080)
    tenants.guests[6].listen("tcp", 8080)
    stop = threading.Event()

    def flood(sender: int, receiver: int) -> None:
        port = 1024
        while not stop.is_set() and port < 60000:
            tenants.flood(sender, receiver, 5000, first_port=port)
            port += 5000

    floods = [threading.Thread(target=flood, args=pair) for pair in ((1, 2), (2, 1))]
    for thread in floods:
        thread.start()
    try:
        time.sleep(1)
        failures = []
        for attempt in range(20):
            for client, server, vni in ((3, 4, 42), (5, 6, 7)):
                if not tenants.guests[client].probe("tcp", _ip(server, vni), 8080, timeout=2):
                    failures.append((attempt, client))
            time.sleep(0.1)
        attackers = tenants.tracked(1) + tenants.tracked(2)
    finally:
        stop.set()
        for thread in floods:
            thread.join()
    assert failures == []
    assert attackers <= 2 * 500
    assert tenants.dropped(1) > 0
    assert tenants.dropped(2) > 0
