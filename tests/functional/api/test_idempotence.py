"""Idempotence: every request sent twice leaves the same state and gets the same answer."""

from typing import Any

import pytest
from api_helpers import Sg, call, dump, nic, ok, rule, text

from butterfly.api.client import Client
from butterfly.api.proto.message0_pb2 import MessageV0

RuleAdd = MessageV0.SgRuleAddReq
RuleDel = MessageV0.SgRuleDelReq
MemberAdd = MessageV0.SgMemberAddReq
MemberDel = MessageV0.SgMemberDelReq
Update = MessageV0.NicUpdateReq
Peer = MessageV0.VniPeerReq


def _state(client: Client) -> None:
    ok(client, nic_add=nic("n1", ips=("10.0.0.1", "2001:db8::1"), sgs=("sg1", "sg2")))
    ok(client, nic_add=nic("n2", mac="52:54:00:00:00:02", vni=7, type=MessageV0.Nic.TAP))
    ok(
        client,
        sg_add=Sg(
            id="sg1",
            member=["10.0.0.1", "10.0.0.2"],
            rule=[
                rule(protocol=6, ports=(22, 22), cidr=("10.0.0.0", 8)),
                rule(protocol=-1, sg="sg2"),
            ],
        ),
    )
    ok(client, sg_member_add=MemberAdd(sg_id="sg2", member="10.1.0.1"))
    ok(client, vni_peer_add=Peer(vni=42, peer="192.0.2.1"))


REQUESTS: list[tuple[str, Any]] = [
    ("nic_add", nic("n3", ips=("10.0.0.3", "10.0.0.3"), sgs=("sg1",))),
    ("nic_add", nic("n1", vni=99, ips=("2001:0db8::7",))),  # replacement
    ("nic_add", nic("n1", ips=("10.0.0.1", "2001:db8::1"), sgs=("sg1", "sg2"))),  # same again
    ("nic_update", Update(id="n1", ip=["10.0.0.9"], security_group=[""])),
    ("nic_update", Update(id="n1", ip_anti_spoof=True, packet_trace=True)),
    ("nic_update", Update(id="n1")),
    ("nic_del", "n2"),
    ("nic_del", "ghost"),
    ("nic_list", True),
    ("nic_details", "n1"),
    ("nic_details", ""),
    ("nic_stats", "n1"),
    ("nic_export", "n1"),
    ("sg_add", Sg(id="sg3", member=["10.3.0.1"], rule=[rule(sg="sg1")])),
    ("sg_add", Sg(id="sg1", member=["10.0.0.2", "10.0.0.1"])),  # replacement
    ("sg_del", "sg2"),
    ("sg_del", "ghost"),
    ("sg_list", True),
    (
        "sg_rule_add",
        RuleAdd(sg_id="sg1", rule=rule(protocol=17, ports=(53, 53), cidr=("2001:0db8::8001", 8))),
    ),
    (
        "sg_rule_add",
        RuleAdd(sg_id="sg1", rule=rule(protocol=6, ports=(22, 22), cidr=("10.0.0.0", 8))),
    ),  # already there
    ("sg_rule_add", RuleAdd(sg_id="new", rule=rule(protocol=-1, ports=(1, 2), sg="sg1"))),
    ("sg_rule_del", RuleDel(sg_id="sg1", rule=rule(protocol=-1, sg="sg2"))),
    ("sg_rule_del", RuleDel(sg_id="ghost", rule=rule(protocol=-1, sg="sg2"))),
    ("sg_rule_list", "sg1"),
    ("sg_member_add", MemberAdd(sg_id="sg1", member="10.0.0.3")),
    ("sg_member_add", MemberAdd(sg_id="sg1", member="10.0.0.1")),  # already there
    ("sg_member_add", MemberAdd(sg_id="new", member="2001:DB8::10")),
    ("sg_member_del", MemberDel(sg_id="sg1", member="10.0.0.1")),
    ("sg_member_del", MemberDel(sg_id="ghost", member="10.0.0.1")),
    ("sg_member_list", "sg1"),
    ("sg_details", "sg1"),
    ("sg_details", ""),
    ("app_config", MessageV0.AppConfigReq(log_level="debug")),
    ("vni_peer_add", Peer(vni=42, peer="192.0.2.2")),
    ("vni_peer_add", Peer(vni=42, peer="192.0.2.1")),
    ("vni_peer_del", Peer(vni=42, peer="192.0.2.1")),
    ("vni_peer_list", True),
    # failures are idempotent too
    ("nic_add", nic("n1", mac="01:00:00:00:00:01")),
    ("nic_details", "ghost"),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=rule())),
]


@pytest.mark.parametrize(
    ("field", "value"), REQUESTS, ids=[f"{i}-{r[0]}" for i, r in enumerate(REQUESTS)]
)
def test_request_twice_same_state_same_answer(client: Client, field: str, value: Any) -> None:
    _state(client)
    first = call(client, **{field: value})
    after_first = dump(client)
    second = call(client, **{field: value})
    assert dump(client) == after_first
    assert text(second) == text(first)


def test_app_status_twice_same_state(client: Client) -> None:
    """app_status answers a request counter and a date, so only the state is compared."""
    _state(client)
    before = dump(client)
    first = ok(client, app_status=True).app_status
    second = ok(client, app_status=True).app_status
    assert dump(client) == before
    assert (first.start_date, first.graph_dot) == (second.start_date, second.graph_dot)
