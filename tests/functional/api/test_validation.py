"""Every validation failure: status false, the deployed phrase first, the bad
value named, and the state exactly as it was (dump before == dump after)."""

from typing import Any

import pytest
from api_helpers import Sg, call, dump, fail, nic, ok, rule

from butterfly.api.client import Client
from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Error, Messages
from butterfly.model.sessions import FlowTuple, Session, SessionExport, TcpInfo, encode_sessions

BAD_NIC = "Bad NIC format"
BAD_RULE = "Bad Security Group rule format"
BAD_IP = "Bad IP format"
BAD_SG = "Bad Security Group format"
NO_SG = "Security Group not found"

RuleAdd = MessageV0.SgRuleAddReq
RuleDel = MessageV0.SgRuleDelReq
MemberAdd = MessageV0.SgMemberAddReq
MemberDel = MessageV0.SgMemberDelReq
Update = MessageV0.NicUpdateReq
Import = MessageV0.NicImportReq
BAD_SESSIONS = "Bad session data"
MAC3 = "52:54:00:00:00:09"


def _blob(*, vni: int = 42, src: str = "10.0.0.1") -> bytes:
    """A well-formed export of one TCP session of n1 (10.0.0.1, vni 42)."""
    original = FlowTuple(src, "10.0.0.2", sport=40000, dport=80)
    reply = FlowTuple("10.0.0.2", src, sport=80, dport=40000)
    session = Session(6, original, reply, status=14, timeout=300, tcp=TcpInfo(state=3))
    return encode_sessions(SessionExport(vni=vni, nic_id="n1", sessions=(session,)))


def _flipped(blob: bytes) -> bytes:
    return blob[:-5] + bytes([blob[-5] ^ 0x20]) + blob[-4:]


def _other_version(blob: bytes) -> bytes:
    return blob[:8] + bytes([2]) + blob[9:]


def _state(client: Client) -> None:
    """Something for a bad request to damage."""
    ok(client, nic_add=nic("n1", ips=("10.0.0.1",), sgs=("sg1",)))
    ok(client, nic_add=nic("n2", mac="52:54:00:00:00:02", vni=7, type=MessageV0.Nic.TAP))
    ok(
        client,
        sg_add=Sg(
            id="sg1",
            member=["10.0.0.1", "10.0.0.2"],
            rule=[rule(protocol=6, ports=(22, 22), cidr=("10.0.0.0", 8))],
        ),
    )
    ok(client, vni_peer_add=MessageV0.VniPeerReq(vni=42, peer="192.0.2.1"))


def _tcp(ports: tuple[int, int] | None, **source: Any) -> MessageV0.Rule:
    return rule(protocol=6, ports=ports, **source)


CIDR = {"cidr": ("10.0.0.0", 8)}

# (request field, value, phrase the description starts with, text it must contain)
CASES: list[tuple[str, Any, str, str]] = [
    # nic_add: MAC
    ("nic_add", nic("n1", mac="52:54:00:12:34"), BAD_NIC, "52:54:00:12:34"),
    ("nic_add", nic("n3", mac="52-54-00-12-34-56"), BAD_NIC, "52-54-00-12-34-56"),
    ("nic_add", nic("n3", mac="52:54:00:12:34:5g"), BAD_NIC, "52:54:00:12:34:5g"),
    ("nic_add", nic("n3", mac="525400123456"), BAD_NIC, "525400123456"),
    ("nic_add", nic("n3", mac=""), BAD_NIC, "mac"),
    ("nic_add", nic("n3", mac=" 52:54:00:12:34:56"), BAD_NIC, "52:54:00:12:34:56"),
    ("nic_add", nic("n3", mac="01:00:5e:00:00:01"), BAD_NIC, "01:00:5e:00:00:01"),
    ("nic_add", nic("n3", mac="ff:ff:ff:ff:ff:ff"), BAD_NIC, "ff:ff:ff:ff:ff:ff"),
    ("nic_add", nic("n3", mac="52:54:00:00:00:01"), BAD_NIC, "already used by nic 'n1'"),
    # nic_add: VNI
    ("nic_add", nic("n1", vni=1 << 24), BAD_NIC, str(1 << 24)),
    ("nic_add", nic("n3", vni=(1 << 32) - 1), BAD_NIC, str((1 << 32) - 1)),
    # nic_add: IPs
    ("nic_add", nic("n1", ips=("10.0.0.256",)), BAD_IP, "10.0.0.256"),
    ("nic_add", nic("n3", ips=("10.0.0.1", "bogus")), BAD_IP, "bogus"),
    ("nic_add", nic("n3", ips=("10.0.0.0/24",)), BAD_IP, "10.0.0.0/24"),
    ("nic_add", nic("n3", ips=("2001:db8::1::2",)), BAD_IP, "2001:db8::1::2"),
    ("nic_add", nic("n3", ips=("fe80::1%eth0",)), BAD_IP, "fe80::1%eth0"),
    ("nic_add", nic("n3", ips=("",)), BAD_IP, "''"),
    ("nic_add", nic("n3", ips=(" 10.0.0.1",)), BAD_IP, " 10.0.0.1"),
    # nic_add: ids
    ("nic_add", nic(""), BAD_NIC, "''"),
    ("nic_add", nic("a/b"), BAD_NIC, "a/b"),
    ("nic_add", nic(".."), BAD_NIC, ".."),
    ("nic_add", nic("has space"), BAD_NIC, "has space"),
    ("nic_add", nic("tab\there"), BAD_NIC, "tab\\there"),
    ("nic_add", nic("x" * 129), BAD_NIC, "(129 characters)"),
    ("nic_add", nic("n3", sgs=("ok", "not ok")), BAD_NIC, "not ok"),
    ("nic_add", nic("n3", sgs=("",)), BAD_NIC, "''"),
    # nic_add: what this daemon does not offer
    ("nic_add", nic("n3", type=MessageV0.Nic.BENCH), "", "BENCH"),
    ("nic_add", nic("n3", mac=MAC3, sniff_target_nic_id="n3"), BAD_NIC, "names the nic itself"),
    ("nic_add", nic("n3", mac=MAC3, sniff_target_nic_id="a b"), BAD_NIC, "'a b'"),
    ("nic_add", nic("n3", type=MessageV0.Nic.NETNS), BAD_NIC, "NETNS"),
    # nic_update
    (
        "nic_update",
        Update(id="ghost", ip_anti_spoof=True),
        "NIC does not exist with id ghost",
        "ghost",
    ),
    ("nic_update", Update(id="n1", ip=["10.0.0.9", "10.0.0.999"]), BAD_IP, "10.0.0.999"),
    ("nic_update", Update(id="n1", security_group=["a b"]), BAD_NIC, "a b"),
    ("nic_update", Update(id="n1", ip=["10.0.0.5"], security_group=["a b"]), BAD_NIC, "a b"),
    ("nic_update", Update(id="n1", packet_trace_path="a\0b"), BAD_NIC, "packet_trace_path"),
    # reads of missing objects
    ("nic_details", "ghost", "NIC does not exist with id ghost", "ghost"),
    ("nic_stats", "ghost", "NIC does not exist with id ghost", "ghost"),
    ("nic_export", "ghost", "NIC does not exist with id ghost", "ghost"),
    ("sg_details", "ghost", NO_SG, "ghost"),
    ("sg_rule_list", "ghost", NO_SG, "ghost"),
    ("sg_member_list", "ghost", NO_SG, "ghost"),
    # sg_add
    ("sg_add", Sg(id="sg1", member=["10.0.0.3", "10.0.0.300"]), BAD_IP, "10.0.0.300"),
    ("sg_add", Sg(id="sg1", rule=[rule(protocol=256, **CIDR)]), BAD_RULE, "256"),
    ("sg_add", Sg(id="sg9", rule=[rule(protocol=-2, **CIDR)]), BAD_RULE, "-2"),
    ("sg_add", Sg(id=""), BAD_SG, "''"),
    ("sg_add", Sg(id="a b"), BAD_SG, "a b"),
    # rules, through sg_rule_add
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=_tcp(None, **CIDR)), BAD_RULE, "port"),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=rule(protocol=17, **CIDR)), BAD_RULE, "udp"),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=_tcp((1, 65536), **CIDR)), BAD_RULE, "65536"),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=_tcp((70000, 70000), **CIDR)), BAD_RULE, "70000"),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=_tcp((90, 80), **CIDR)), BAD_RULE, "90"),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=rule()), BAD_RULE, "exactly one"),
    (
        "sg_rule_add",
        RuleAdd(sg_id="sg1", rule=rule(cidr=("10.0.0.0", 8), sg="sg2")),
        BAD_RULE,
        "exactly one",
    ),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=rule(cidr=("10.0.0.0", 33))), BAD_RULE, "33"),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=rule(cidr=("2001:db8::", 129))), BAD_RULE, "129"),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=rule(cidr=("10.0.0", 8))), BAD_RULE, "10.0.0"),
    (
        "sg_rule_add",
        RuleAdd(sg_id="sg1", rule=rule(cidr=("10.0.0.0/8", 8))),
        BAD_RULE,
        "10.0.0.0/8",
    ),
    ("sg_rule_add", RuleAdd(sg_id="sg1", rule=rule(sg="bad id")), BAD_RULE, "bad id"),
    ("sg_rule_add", RuleAdd(sg_id="new", rule=rule(protocol=300, **CIDR)), BAD_RULE, "300"),
    ("sg_rule_add", RuleAdd(sg_id="", rule=rule(**CIDR)), BAD_SG, "''"),
    ("sg_rule_del", RuleDel(sg_id="sg1", rule=_tcp((22, 21), **CIDR)), BAD_RULE, "22"),
    # members
    ("sg_member_add", MemberAdd(sg_id="sg1", member="10.0.0.1 "), BAD_IP, "10.0.0.1 "),
    ("sg_member_add", MemberAdd(sg_id="new", member=""), BAD_IP, "''"),
    ("sg_member_add", MemberAdd(sg_id="new", member="10.0.0.0/8"), BAD_IP, "10.0.0.0/8"),
    ("sg_member_add", MemberAdd(sg_id="", member="10.0.0.1"), BAD_SG, "''"),
    ("sg_member_del", MemberDel(sg_id="sg1", member="nonsense"), BAD_IP, "nonsense"),
    # nic_import: blobs that are not a session export of this vnic
    ("nic_import", Import(id="ghost", data=_blob()), "NIC does not exist with id ghost", "ghost"),
    ("nic_import", Import(id="n1", data=_blob(vni=7)), BAD_SESSIONS, "vni 7"),
    ("nic_import", Import(id="n1", data=_blob()[:-3]), BAD_SESSIONS, "corrupted or truncated"),
    ("nic_import", Import(id="n1", data=_blob()[:20]), BAD_SESSIONS, "truncated"),
    ("nic_import", Import(id="n1", data=_flipped(_blob())), BAD_SESSIONS, "corrupted"),
    ("nic_import", Import(id="n1", data=_other_version(_blob())), BAD_SESSIONS, "version 2"),
    ("nic_import", Import(id="n1", data=b"not a blob" * 10), BAD_SESSIONS, "magic"),
    ("nic_import", Import(id="n1", data=_blob(src="10.9.9.9")), BAD_SESSIONS, "10.9.9.9"),
    # the daemon
    ("app_config", MessageV0.AppConfigReq(log_level="verbose"), "", "verbose"),
    ("app_config", MessageV0.AppConfigReq(log_level="INFO"), "", "INFO"),
]


@pytest.mark.parametrize(
    ("field", "value", "phrase", "named"),
    CASES,
    ids=[f"{i}-{case[0]}" for i, case in enumerate(CASES)],
)
def test_bad_request_fails_and_changes_nothing(
    client: Client, field: str, value: Any, phrase: str, named: str
) -> None:
    _state(client)
    before = dump(client)
    description = fail(client, **{field: value})
    assert description.startswith(phrase), description
    assert named in description, description
    assert dump(client) == before
    # and the same again: a failed request is idempotent too
    assert fail(client, **{field: value}) == description
    assert dump(client) == before


def test_nic_add_replacing_with_a_bad_nic_keeps_the_old_one(client: Client) -> None:
    _state(client)
    before = dump(client)
    fail(client, nic_add=nic("n1", ips=("10.0.0.7", "300.0.0.1"), sgs=("other",)))
    assert dump(client) == before


def test_a_failed_message_does_not_undo_or_block_its_neighbours(client: Client) -> None:
    _state(client)
    envelope = MessageV0.Request
    requests = [
        envelope(sg_member_add=MemberAdd(sg_id="sg1", member="10.0.0.3")),
        envelope(sg_add=Sg(id="sg1", member=["10.0.0.4", "bad"])),
        envelope(sg_member_add=MemberAdd(sg_id="sg1", member="10.0.0.5")),
    ]
    answers = [client.call(one).response for one in requests]
    assert [a.status.status for a in answers] == [True, False, True]
    members = ok(client, sg_member_list="sg1").sg_member_list
    assert list(members) == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5"]


def test_descriptions_are_single_readable_lines(client: Client) -> None:
    for field, value, _, _ in CASES:
        description = call(client, **{field: value}).status.error.description
        assert description.isprintable(), description


def _with_unknown_enum(message: Any, field_number: int, value: int) -> Any:
    """``message`` with an enum field set to a number outside the enum (as a C++ peer may)."""
    raw = message.SerializePartialToString() + bytes([field_number << 3, value])
    out = type(message)()
    out.ParseFromString(raw)
    return out


def _partial_frame_reply(client: Client, one: MessageV0.Request) -> Messages:
    """The reply to a request sent as is, even with a required field unset (a
    C++ peer's unknown enum value is unset for us)."""
    envelope = Messages()
    envelope.messages.add(revision=REVISION).message_0.request.CopyFrom(one)
    reply = Messages()
    reply.ParseFromString(client.send_frame(envelope.SerializePartialToString()))
    return reply


def test_unknown_rule_direction_is_a_parse_error_not_read_as_inbound(client: Client) -> None:
    """direction is required: with an unknown value it is missing, and the
    frame does not parse, as for the deployed C++ daemons."""
    _state(client)
    before = dump(client)
    odd = _with_unknown_enum(MessageV0.Rule(protocol=-1, security_group="sg1"), 1, 5)
    for one in (
        MessageV0.Request(sg_rule_add=RuleAdd(sg_id="sg1", rule=odd)),
        MessageV0.Request(sg_add=Sg(id="sg9", rule=[odd])),
    ):
        reply = _partial_frame_reply(client, one)
        assert len(reply.messages) == 1, reply
        assert reply.messages[0].error.code == Error.PARSE_ERROR, reply
    assert dump(client) == before


def test_unknown_nic_type_is_refused_not_read_as_vhost_user(client: Client) -> None:
    _state(client)
    before = dump(client)
    odd = _with_unknown_enum(nic("n3"), 9, 7)
    description = fail(client, nic_add=odd)
    assert description.startswith(BAD_NIC) and "type 7" in description, description
    assert dump(client) == before
