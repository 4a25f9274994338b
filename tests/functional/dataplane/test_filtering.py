"""Isolation and security groups, proven with real traffic between guest namespaces."""

from dataclasses import dataclass, replace

import pytest

from butterfly.dataplane import SgChange
from butterfly.model import (
    SecurityGroup,
    State,
    Vnic,
    make_rule,
    make_security_group,
)

from .conftest import Dataplane, Guest, Lab, netns_vnic, plug

pytestmark = pytest.mark.root

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
IN, OUT = 0, 1


@dataclass
class Switch:
    dataplane: Dataplane
    state: State
    guests: list[Guest]
    vnics: list[Vnic]

    def ip(self, index: int, family: int = 4) -> str:
        return f"2001:db8::{index + 1}" if family == 6 else f"10.0.0.{index + 1}"

    def put_sg(
        self, sg_id: str, *, members: tuple[str, ...] = (), rules: list[dict[str, object]]
    ) -> None:
        """sg_add as the service does it: state first, then the data plane."""
        sg = make_security_group(
            sg_id,
            members=list(members),
            rules=[make_rule(sg_id, **r) for r in rules],  # type: ignore[arg-type]
        )
        self._change(sg_id, sg)

    def _change(self, sg_id: str, sg: SecurityGroup | None) -> None:
        old = self.state.put_sg(sg) if sg is not None else self.state.remove_sg(sg_id)
        self.dataplane.update_security_groups({sg_id: SgChange(old, sg)}, self.state)

    def members(self, sg_id: str, *members: str) -> None:
        old = self.state.sg(sg_id)
        assert old is not None
        new = make_security_group(sg_id, members=list(members), rules=list(old.rules))
        self._change(sg_id, new)

    def use(self, index: int, *sg_ids: str) -> None:
        """nic_update of the vnic's security groups."""
        before = self.vnics[index]
        after = replace(before, security_groups=sg_ids)
        self.state.put_vnic(after)
        self.dataplane.update(before, after, self.state)
        self.vnics[index] = after


def switch(
    lab: Lab, count: int, sgs: dict[int, tuple[str, ...]] | None = None, vni: int = 42
) -> Switch:
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    guests, vnics = [], []
    for index in range(count):
        guest = lab.guest()
        vnic = netns_vnic(
            f"v{index}",
            guest,
            f"52:54:00:00:00:{index + 1:02x}",
            (f"10.0.0.{index + 1}", f"2001:db8::{index + 1}"),
            vni=vni,
            security_groups=(sgs or {}).get(index, ()),
        )
        plug(dataplane, state, vnic)
        guests.append(guest)
        vnics.append(vnic)
    return Switch(dataplane, state, guests, vnics)


OPEN = {"direction": IN, "protocol": -1, "cidr": ("0.0.0.0", 0)}
OPEN6 = {"direction": IN, "protocol": -1, "cidr": ("::", 0)}


def test_vnis_are_isolated_even_with_identical_addresses_and_flows(lab: Lab) -> None:
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    state.put_sg(make_security_group("open", members=[], rules=[make_rule("open", **OPEN)]))  # type: ignore[arg-type]
    guests = {}
    for vni in (1, 2):
        for n in (1, 2):
            guest = lab.guest()
            guests[vni, n] = guest
            plug(
                dataplane,
                state,
                netns_vnic(
                    f"v{vni}{n}",
                    guest,
                    f"52:54:00:00:00:0{n}",
                    (f"10.0.0.{n}",),
                    vni=vni,
                    security_groups=("open",),
                ),
            )
    guests[1, 2].listen("tcp", 80)
    guests[2, 2].listen("tcp", 81)
    assert guests[1, 1].reaches("tcp", "10.0.0.2", 80)
    assert guests[2, 1].reaches("tcp", "10.0.0.2", 81)
    answer = guests[2, 1].agent.call("connect", proto="tcp", host="10.0.0.2", port=80, timeout=2)
    assert "refused" in answer["error"], "vni 2 reached vni 1's server"
    guests[2, 2].listen("tcp", 80)
    held = [
        guests[vni, 1].agent.call("hold", host="10.0.0.2", port=80, timeout=3, sport=40000)
        for vni in (1, 2)
    ]
    assert all(h["ok"] for h in held), held
    for vni, h in zip((1, 2), held, strict=True):
        assert guests[vni, 1].agent.call("echo", conn_id=h["id"], timeout=3)["ok"]


def test_inbound_is_dropped_by_default_and_outbound_open(lab: Lab) -> None:
    sw = switch(lab, 2, {1: ("open",)})
    sw.put_sg("open", rules=[OPEN, OPEN6])
    sw.guests[0].listen("tcp", 80)
    sw.guests[1].listen("tcp", 80)
    sw.guests[1].listen("tcp", 80, family=6)
    assert sw.guests[0].reaches("tcp", sw.ip(1), 80), "a vnic without group cannot reach out"
    assert sw.guests[0].reaches("tcp", sw.ip(1, 6), 80), "IPv6 (and ND) do not work"
    assert sw.guests[1].blocked("tcp", sw.ip(0), 80)
    assert sw.guests[1].blocked("icmp", sw.ip(0))


def test_port_rules_ranges_cidrs_and_protocols(lab: Lab) -> None:
    sw = switch(lab, 3, {0: ("web",)})
    sw.put_sg(
        "web",
        rules=[
            {
                "direction": IN,
                "protocol": TCP,
                "port_start": 80,
                "port_end": 80,
                "cidr": ("10.0.0.0", 24),
            },
            {
                "direction": IN,
                "protocol": TCP,
                "port_start": 8000,
                "port_end": 8010,
                "cidr": ("10.0.0.3", 32),
            },
            {
                "direction": IN,
                "protocol": UDP,
                "port_start": 53,
                "port_end": 53,
                "cidr": ("0.0.0.0", 0),
            },
            {"direction": IN, "protocol": ICMP, "cidr": ("10.0.0.2", 32)},
            {
                "direction": IN,
                "protocol": TCP,
                "port_start": 22,
                "port_end": 22,
                "cidr": ("2001:db8::", 64),
            },
        ],
    )
    server = sw.guests[0]
    for port in (80, 81, 8005, 8011, 22):
        server.listen("tcp", port)
    server.listen("tcp", 22, family=6)
    server.listen("udp", 53)
    one, two = sw.guests[1], sw.guests[2]
    assert one.reaches("tcp", sw.ip(0), 80)
    assert one.blocked("tcp", sw.ip(0), 81)
    assert two.reaches("tcp", sw.ip(0), 8005)
    assert two.blocked("tcp", sw.ip(0), 8011)
    assert one.blocked("tcp", sw.ip(0), 8005), "the range is for 10.0.0.3 only"
    assert one.reaches("udp", sw.ip(0), 53)
    assert one.reaches("icmp", sw.ip(0))
    assert two.blocked("icmp", sw.ip(0))
    assert two.reaches("tcp", sw.ip(0, 6), 22)
    assert two.blocked("tcp", sw.ip(0), 22), "the IPv6 rule let IPv4 in"


def test_security_group_members_change_while_traffic_runs(lab: Lab) -> None:
    sw = switch(lab, 3, {0: ("srv",)})
    sw.put_sg("clients", members=("10.0.0.2",), rules=[])
    sw.put_sg(
        "srv",
        rules=[
            {
                "direction": IN,
                "protocol": TCP,
                "port_start": 80,
                "port_end": 80,
                "security_group": "clients",
            },
        ],
    )
    sw.guests[0].listen("tcp", 80)
    one, two = sw.guests[1], sw.guests[2]
    assert one.reaches("tcp", sw.ip(0), 80)
    held = one.agent.call("hold", host=sw.ip(0), port=80, timeout=3)
    assert held["ok"]
    assert two.blocked("tcp", sw.ip(0), 80)
    sw.members("clients", "10.0.0.2", "10.0.0.3")
    assert two.reaches("tcp", sw.ip(0), 80)
    sw.members("clients", "10.0.0.3")
    assert one.blocked("tcp", sw.ip(0), 80), "a removed member opened a new connection"
    assert one.agent.call("echo", conn_id=held["id"], timeout=3)["ok"], (
        "an established flow was cut"
    )


def test_a_rule_may_name_a_group_before_it_exists(lab: Lab) -> None:
    sw = switch(lab, 2, {0: ("srv",)})
    sw.put_sg("srv", rules=[{"direction": IN, "protocol": -1, "security_group": "later"}])
    sw.guests[0].listen("tcp", 80)
    assert sw.guests[1].blocked("tcp", sw.ip(0), 80)
    sw.put_sg("later", members=("10.0.0.2",), rules=[])
    assert sw.guests[1].reaches("tcp", sw.ip(0), 80)


def test_rules_of_several_groups_add_up_and_deleted_rules_stop(lab: Lab) -> None:
    sw = switch(lab, 2, {0: ("a", "b")})
    rule_a = {
        "direction": IN,
        "protocol": TCP,
        "port_start": 80,
        "port_end": 80,
        "cidr": ("0.0.0.0", 0),
    }
    sw.put_sg("a", rules=[rule_a])
    sw.put_sg(
        "b",
        rules=[
            {
                "direction": IN,
                "protocol": TCP,
                "port_start": 81,
                "port_end": 81,
                "cidr": ("0.0.0.0", 0),
            }
        ],
    )
    sw.guests[0].listen("tcp", 80)
    sw.guests[0].listen("tcp", 81)
    client = sw.guests[1]
    assert client.reaches("tcp", sw.ip(0), 80)
    assert client.reaches("tcp", sw.ip(0), 81)
    sw.put_sg("a", rules=[])
    assert client.blocked("tcp", sw.ip(0), 80)
    assert client.reaches("tcp", sw.ip(0), 81)
    sw.use(0, "a")
    assert client.blocked("tcp", sw.ip(0), 81)


def test_replies_and_related_icmp_errors_pass(lab: Lab) -> None:
    sw = switch(lab, 2, {1: ("open",)})
    sw.put_sg("open", rules=[OPEN])
    sw.guests[1].listen("udp", 53)
    client = sw.guests[0]
    assert client.reaches("udp", sw.ip(1), 53), "a reply to an outgoing flow was dropped"
    answer = client.agent.call("connect", proto="udp", host=sw.ip(1), port=54, timeout=2)
    assert not answer["ok"]
    assert "refused" in answer["error"], "the ICMP port unreachable did not come back"


def test_outbound_rules_restrict_egress_only_when_present(lab: Lab) -> None:
    sw = switch(lab, 2, {0: ("out",), 1: ("open",)})
    sw.put_sg("open", rules=[OPEN, OPEN6])
    sw.put_sg("out", rules=[])
    server = sw.guests[1]
    server.listen("tcp", 80)
    server.listen("tcp", 81)
    server.listen("tcp", 80, family=6)
    client = sw.guests[0]
    assert client.reaches("tcp", sw.ip(1), 81)
    assert client.reaches("tcp", sw.ip(1, 6), 80)
    sw.put_sg(
        "out",
        rules=[
            {
                "direction": OUT,
                "protocol": TCP,
                "port_start": 80,
                "port_end": 80,
                "cidr": ("10.0.0.0", 24),
            }
        ],
    )
    assert client.reaches("tcp", sw.ip(1), 80)
    assert client.blocked("tcp", sw.ip(1), 81)
    assert client.blocked("tcp", sw.ip(1, 6), 80), "IPv6 escaped the OUTBOUND rules"
    sw.put_sg("out", rules=[])
    assert client.reaches("tcp", sw.ip(1), 81)


def test_icmpv6_rules_and_neighbour_discovery(lab: Lab) -> None:
    sw = switch(lab, 2, {0: ("ping6",)})
    sw.put_sg("ping6", rules=[{"direction": IN, "protocol": ICMPV6, "cidr": ("::", 0)}])
    assert sw.guests[1].reaches("icmp", sw.ip(0, 6))
    assert sw.guests[1].blocked("icmp", sw.ip(0))


def test_a_vni_without_filtered_vnics_is_not_tracked(lab: Lab) -> None:
    """No rule needs the state of such a VNI's connections: conntrack is skipped
    (its cost is most of the data path's), while a filtered VNI is tracked."""
    sw = switch(lab, 2, {1: ("open",)})
    sw.put_sg("open", rules=[OPEN])
    quiet = switch(lab, 2, vni=43)
    for vnic in list(quiet.vnics):
        bypass = replace(vnic, bypass_filtering=True)
        quiet.state.put_vnic(bypass)
        quiet.dataplane.update(vnic, bypass, quiet.state)
    for one in (sw, quiet):
        one.guests[1].listen("tcp", 80)
        assert one.guests[0].reaches("tcp", one.ip(1), 80)
    tracked = sw.dataplane.host.exec("conntrack", "-L", "-p", "tcp", "--dport", "80")
    untracked = quiet.dataplane.host.exec("conntrack", "-L", "-p", "tcp", "--dport", "80")
    assert "dst=10.0.0.2" in tracked, "the filtered VNI's connection is not tracked"
    assert "dst=10.0.0.2" not in untracked, "a VNI without filtered vnics is tracked"


def test_a_port_that_turns_filtered_loses_its_sender_mark(lab: Lab) -> None:
    """A port without filtering marks what enters it as unfiltered (see the port
    guard); a vnic found filtered by a reconcile (its filtering changed while the
    daemon was away) must lose that mark, or a lost ``out_mac`` element would let
    it skip its OUTBOUND rules. The mark's absence is what keeps it closed: with
    its dispatch flushed, its new flows drop."""
    sw = switch(lab, 2, {0: ("out",)})
    sw.put_sg("out", rules=[{"direction": OUT, "protocol": TCP, "port_start": 80,
                             "port_end": 80, "cidr": ("10.0.0.0", 24)}])  # fmt: skip
    host = sw.dataplane.host

    def reconciled(index: int, bypass: bool) -> bool:
        """Whether the vnic's port marks senders, after a reconcile with ``bypass``."""
        sw.state.put_vnic(replace(sw.vnics[index], bypass_filtering=bypass))
        sw.dataplane.reconcile(sw.state)
        port = f"bf-v{index}"
        return "bf-sender-open" in host.exec("tc", "filter", "show", "dev", port, "ingress")

    assert reconciled(1, bypass=True)
    assert reconciled(0, bypass=True)
    assert not reconciled(0, bypass=False)
    sw.guests[1].listen("tcp", 80)
    sw.guests[1].listen("tcp", 81)
    assert sw.guests[0].reaches("tcp", sw.ip(1), 80)
    assert sw.guests[0].blocked("tcp", sw.ip(1), 81), "its OUTBOUND rules are back"
    host.exec("nft", "flush", "map", "inet", "butterfly", "out_mac")
    assert sw.guests[0].blocked("tcp", sw.ip(1), 80), "no dispatch, no sender proof: drop"
