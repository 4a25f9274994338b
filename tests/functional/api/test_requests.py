"""Every request type of the protocol against a real daemon, over ZeroMQ.

Each test starts from an empty daemon (the ``client`` fixture) and checks
one behaviour of shared/protocol.md, "Behaviour the clients rely on".
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from api_helpers import (
    INBOUND,
    OUTBOUND,
    Sg,
    call,
    dump,
    fail,
    nic,
    ok,
    request,
    rule,
)

from butterfly.api.client import Client
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.model.sessions import SessionExport, decode_sessions, encode_sessions

if TYPE_CHECKING:
    from conftest import Daemon

Request = MessageV0.Request

# vnics


def test_nic_add_answers_the_vhost_user_socket_path(daemon: Daemon, client: Client) -> None:
    response = ok(client, nic_add=nic("vnic-1", ips=("10.0.0.1",)))
    assert response.nic_add.path == os.path.join(daemon.socket_dir, "qemu-vhost-vnic-1")


def test_nic_details_of_one_nic(daemon: Daemon, client: Client) -> None:
    ok(
        client,
        nic_add=nic(
            "vnic-1",
            mac="52:54:00:AB:cd:11",
            vni=1234,
            ips=("10.0.0.1", "2001:db8::1"),
            sgs=("sg-web", "sg-ssh"),
            ip_anti_spoof=True,
        ),
    )
    details = ok(client, nic_details="vnic-1").nic_details
    assert len(details) == 1
    got = details[0]
    assert got.id == "vnic-1"
    assert got.mac == "52:54:00:AB:cd:11"  # returned as given
    assert got.vni == 1234
    assert list(got.ip) == ["10.0.0.1", "2001:db8::1"]
    assert list(got.security_group) == ["sg-web", "sg-ssh"]
    assert got.ip_anti_spoof is True
    assert got.bypass_filtering is False
    assert got.type == MessageV0.Nic.VHOST_USER_SERVER
    assert got.path == os.path.join(daemon.socket_dir, "qemu-vhost-vnic-1")


def test_tap_nic_reports_its_real_type_and_interface(client: Client) -> None:
    response = ok(client, nic_add=nic("t1", type=MessageV0.Nic.TAP))
    assert response.nic_add.path == "bf-t1"
    got = ok(client, nic_details="t1").nic_details[0]
    assert got.type == MessageV0.Nic.TAP
    assert got.path == "bf-t1"


def test_bypass_filtering_is_kept(client: Client) -> None:
    ok(client, nic_add=nic("b1", bypass_filtering=True))
    assert ok(client, nic_details="b1").nic_details[0].bypass_filtering is True


def test_nic_add_with_an_existing_id_replaces_the_whole_nic(client: Client) -> None:
    ok(
        client,
        nic_add=nic("vnic-1", vni=1, ips=("10.0.0.1",), sgs=("sg-a",), ip_anti_spoof=True),
    )
    ok(client, nic_add=nic("vnic-1", mac="52:54:00:00:00:99", vni=2, ips=("10.0.0.2",)))
    got = ok(client, nic_details="vnic-1").nic_details
    assert len(got) == 1
    assert got[0].mac == "52:54:00:00:00:99"
    assert got[0].vni == 2
    assert list(got[0].ip) == ["10.0.0.2"]
    assert list(got[0].security_group) == []  # not merged with the old nic
    assert got[0].ip_anti_spoof is False
    assert list(ok(client, nic_list=True).nic_list) == ["vnic-1"]


def test_nic_del(client: Client) -> None:
    ok(client, nic_add=nic("a"))
    ok(client, nic_add=nic("b", mac="52:54:00:00:00:02"))
    ok(client, nic_del="a")
    assert list(ok(client, nic_list=True).nic_list) == ["b"]
    assert fail(client, nic_details="a") == "NIC does not exist with id a"


def test_deletes_of_missing_objects_succeed(client: Client) -> None:
    before = dump(client)
    ok(client, nic_del="nope")
    ok(client, sg_del="nope")
    ok(client, sg_rule_del=MessageV0.SgRuleDelReq(sg_id="nope", rule=rule(cidr=("10.0.0.0", 8))))
    ok(client, sg_member_del=MessageV0.SgMemberDelReq(sg_id="nope", member="10.0.0.1"))
    ok(client, vni_peer_del=MessageV0.VniPeerReq(vni=5, peer="192.0.2.1"))
    # and of a missing rule or member of an existing SG
    ok(client, sg_add=Sg(id="sg", member=["10.0.0.1"]))
    ok(client, sg_rule_del=MessageV0.SgRuleDelReq(sg_id="sg", rule=rule(cidr=("10.0.0.0", 8))))
    ok(client, sg_member_del=MessageV0.SgMemberDelReq(sg_id="sg", member="10.0.0.2"))
    ok(client, sg_del="sg")
    assert dump(client) == before


def test_nic_list_and_nic_details_all_are_sorted_by_id(client: Client) -> None:
    ids = ["vnic-b", "vnic-10", "A", "vnic-a", "vnic-2", "zz", "0"]
    for index, nic_id in enumerate(ids):
        ok(client, nic_add=nic(nic_id, vni=index))
    assert list(ok(client, nic_list=True).nic_list) == sorted(ids)
    details = ok(client, nic_details="").nic_details
    assert [d.id for d in details] == sorted(ids)


def test_nic_list_value_is_ignored(client: Client) -> None:
    ok(client, nic_add=nic("a"))
    assert list(ok(client, nic_list=False).nic_list) == ["a"]
    assert list(ok(client, sg_list=False).sg_list) == []


def test_empty_listings(client: Client) -> None:
    assert list(ok(client, nic_list=True).nic_list) == []
    assert list(ok(client, nic_details="").nic_details) == []
    assert list(ok(client, sg_list=True).sg_list) == []
    assert list(ok(client, sg_details="").sg_details) == []
    assert list(ok(client, vni_peer_list=True).vni_peer_list) == []


def test_ips_are_canonical_and_deduplicated(client: Client) -> None:
    ok(
        client,
        nic_add=nic(
            "n",
            ips=("2001:0db8:0000::1", "10.0.0.1", "2001:db8::1", "10.0.0.1", "::FFFF:10.0.0.1"),
        ),
    )
    got = ok(client, nic_details="n").nic_details[0]
    assert list(got.ip) == ["2001:db8::1", "10.0.0.1", "::ffff:10.0.0.1"]


def test_nic_stats_of_a_nic_are_zero_without_a_data_plane(client: Client) -> None:
    ok(client, nic_add=nic("n"))
    stats = ok(client, nic_stats="n").nic_stats
    assert stats.HasField("in") and stats.HasField("out")
    assert getattr(stats, "in") == 0
    assert stats.out == 0
    assert fail(client, nic_stats="missing") == "NIC does not exist with id missing"


def test_nic_export_answers_a_blob_that_nic_import_takes(client: Client) -> None:
    """Without a data plane there are no sessions, but the blob is a real one."""
    ok(client, nic_add=nic("n", ips=("10.0.0.1",)))
    data = ok(client, nic_export="n").nic_export.fw_data.data
    assert decode_sessions(data) == SessionExport(vni=42, nic_id="n", sessions=())
    ok(client, nic_import=MessageV0.NicImportReq(id="n", data=data))
    assert fail(client, nic_export="missing") == "NIC does not exist with id missing"


# nic_update


def _nic(client: Client, nic_id: str) -> MessageV0.Nic:
    details = ok(client, nic_details=nic_id).nic_details
    assert len(details) == 1
    return details[0]


def test_nic_update_replaces_ips_and_sgs(client: Client) -> None:
    ok(client, nic_add=nic("n", ips=("10.0.0.1", "10.0.0.2"), sgs=("a", "b")))
    ok(
        client,
        nic_update=MessageV0.NicUpdateReq(
            id="n", ip=["2001:0DB8::5", "10.0.0.3"], security_group=["c"]
        ),
    )
    got = _nic(client, "n")
    assert list(got.ip) == ["2001:db8::5", "10.0.0.3"]
    assert list(got.security_group) == ["c"]


def test_nic_update_single_empty_string_clears(client: Client) -> None:
    ok(client, nic_add=nic("n", ips=("10.0.0.1",), sgs=("a",)))
    ok(client, nic_update=MessageV0.NicUpdateReq(id="n", ip=[""]))
    got = _nic(client, "n")
    assert list(got.ip) == []
    assert list(got.security_group) == ["a"]  # not given: kept
    ok(client, nic_update=MessageV0.NicUpdateReq(id="n", security_group=[""]))
    assert list(_nic(client, "n").security_group) == []


def test_nic_update_changes_only_present_fields(client: Client) -> None:
    ok(
        client,
        nic_add=nic(
            "n",
            mac="52:54:00:12:34:56",
            vni=7,
            ips=("10.0.0.1",),
            sgs=("a",),
            ip_anti_spoof=True,
            packet_trace=True,
            packet_trace_path="/tmp/trace.pcap",
        ),
    )
    before = _nic(client, "n")
    ok(client, nic_update=MessageV0.NicUpdateReq(id="n"))
    assert _nic(client, "n") == before
    ok(client, nic_update=MessageV0.NicUpdateReq(id="n", ip_anti_spoof=False))
    after = _nic(client, "n")
    assert after.ip_anti_spoof is False
    expected = MessageV0.Nic()
    expected.CopyFrom(before)
    expected.ip_anti_spoof = False
    assert after == expected
    ok(client, nic_update=MessageV0.NicUpdateReq(id="n", packet_trace=False))
    assert _nic(client, "n").packet_trace is False
    ok(client, nic_update=MessageV0.NicUpdateReq(id="n", packet_trace_path="/tmp/other.pcap"))
    got = _nic(client, "n")
    assert got.packet_trace_path == "/tmp/other.pcap"
    assert (got.mac, got.vni, list(got.ip), list(got.security_group)) == (
        "52:54:00:12:34:56",
        7,
        ["10.0.0.1"],
        ["a"],
    )


def test_nic_update_of_a_missing_nic_fails(client: Client) -> None:
    description = fail(client, nic_update=MessageV0.NicUpdateReq(id="ghost", ip_anti_spoof=True))
    assert description == "NIC does not exist with id ghost"


# security groups


def test_sg_add_and_details(client: Client) -> None:
    sg = Sg(
        id="sg-1",
        member=["10.0.0.2", "2001:0db8::0001", "10.0.0.1"],
        rule=[
            rule(protocol=6, ports=(22, 22), cidr=("0.0.0.0", 0)),
            rule(direction=OUTBOUND, protocol=17, ports=(53, 54), cidr=("2001:0db8::8001", 8)),
            rule(protocol=-1, sg="sg-2"),
        ],
    )
    ok(client, sg_add=sg)
    details = ok(client, sg_details="sg-1").sg_details
    assert len(details) == 1
    got = details[0]
    assert got.id == "sg-1"
    assert list(got.member) == ["10.0.0.2", "2001:db8::1", "10.0.0.1"]  # order kept
    assert len(got.rule) == 3
    assert got.rule[0] == rule(protocol=6, ports=(22, 22), cidr=("0.0.0.0", 0))
    # canonical address, host bits kept
    assert got.rule[1] == rule(
        direction=OUTBOUND, protocol=17, ports=(53, 54), cidr=("2001:db8::8001", 8)
    )
    assert got.rule[2] == rule(protocol=-1, sg="sg-2")
    assert list(ok(client, sg_rule_list="sg-1").sg_rule_list) == list(got.rule)
    assert list(ok(client, sg_member_list="sg-1").sg_member_list) == list(got.member)


def test_sg_add_replaces_rules_and_members(client: Client) -> None:
    ok(client, sg_add=Sg(id="s", member=["10.0.0.1"], rule=[rule(cidr=("10.0.0.0", 8))]))
    ok(client, sg_add=Sg(id="s", member=["10.0.0.2"]))
    got = ok(client, sg_details="s").sg_details[0]
    assert list(got.member) == ["10.0.0.2"]
    assert list(got.rule) == []


def test_sg_del(client: Client) -> None:
    ok(client, sg_add=Sg(id="a"))
    ok(client, sg_add=Sg(id="b"))
    ok(client, sg_del="a")
    assert list(ok(client, sg_list=True).sg_list) == ["b"]
    assert fail(client, sg_details="a").startswith("Security Group not found")


def test_sg_del_keeps_the_nics_that_name_it(client: Client) -> None:
    ok(client, sg_add=Sg(id="a"))
    ok(client, nic_add=nic("n", sgs=("a",)))
    ok(client, sg_del="a")
    assert list(_nic(client, "n").security_group) == ["a"]


def test_sg_list_and_details_all_are_sorted(client: Client) -> None:
    ids = ["web", "db", "Admin", "db-2", "10"]
    for sg_id in ids:
        ok(client, sg_add=Sg(id=sg_id))
    assert list(ok(client, sg_list=True).sg_list) == sorted(ids)
    assert [sg.id for sg in ok(client, sg_details="").sg_details] == sorted(ids)


def test_sg_rule_add_creates_the_sg_and_keeps_order(client: Client) -> None:
    rules = [
        rule(protocol=6, ports=(80, 80), cidr=("10.0.0.0", 8)),
        rule(protocol=-1, sg="elsewhere"),  # names an SG that does not exist
        rule(direction=OUTBOUND, protocol=1, cidr=("0.0.0.0", 0)),
        rule(protocol=17, ports=(1000, 2000), cidr=("2001:db8::", 32)),
    ]
    for one in rules:
        ok(client, sg_rule_add=MessageV0.SgRuleAddReq(sg_id="new", rule=one))
    assert list(ok(client, sg_list=True).sg_list) == ["new"]  # "elsewhere" not created
    assert list(ok(client, sg_rule_list="new").sg_rule_list) == rules
    ok(client, sg_rule_del=MessageV0.SgRuleDelReq(sg_id="new", rule=rules[1]))
    assert list(ok(client, sg_rule_list="new").sg_rule_list) == [rules[0], *rules[2:]]


def test_rule_with_protocol_all_carries_no_ports(client: Client) -> None:
    ok(
        client,
        sg_rule_add=MessageV0.SgRuleAddReq(
            sg_id="s", rule=rule(protocol=-1, ports=(10, 20), cidr=("10.0.0.0", 8))
        ),
    )
    ok(
        client,
        sg_rule_add=MessageV0.SgRuleAddReq(
            sg_id="s", rule=rule(protocol=1, ports=(10, 20), cidr=("10.0.0.0", 8))
        ),
    )
    listed = ok(client, sg_rule_list="s").sg_rule_list
    assert [(r.protocol, r.HasField("port_start"), r.HasField("port_end")) for r in listed] == [
        (-1, False, False),
        (1, False, False),
    ]
    # the rule is found again whatever ports are given with it
    ok(
        client,
        sg_rule_del=MessageV0.SgRuleDelReq(sg_id="s", rule=rule(protocol=-1, cidr=("10.0.0.0", 8))),
    )
    assert [r.protocol for r in ok(client, sg_rule_list="s").sg_rule_list] == [1]


def test_sg_member_add_creates_the_sg_keeps_order_and_canonical_form(client: Client) -> None:
    members = ["10.0.0.9", "2001:0DB8:0000::0001", "10.0.0.1", "::1"]
    for member in members:
        ok(client, sg_member_add=MessageV0.SgMemberAddReq(sg_id="s", member=member))
    ok(client, sg_member_add=MessageV0.SgMemberAddReq(sg_id="s", member="2001:db8::1"))
    expected = ["10.0.0.9", "2001:db8::1", "10.0.0.1", "::1"]
    assert list(ok(client, sg_member_list="s").sg_member_list) == expected
    ok(client, sg_member_del=MessageV0.SgMemberDelReq(sg_id="s", member="2001:db8:0::1"))
    assert list(ok(client, sg_member_list="s").sg_member_list) == ["10.0.0.9", "10.0.0.1", "::1"]
    ok(client, sg_member_add=MessageV0.SgMemberAddReq(sg_id="s", member="2001:db8::1"))
    assert list(ok(client, sg_member_list="s").sg_member_list) == [
        "10.0.0.9",
        "10.0.0.1",
        "::1",
        "2001:db8::1",
    ]


def test_lists_of_a_missing_sg_fail(client: Client) -> None:
    for name in ("sg_rule_list", "sg_member_list", "sg_details"):
        description = fail(client, **{name: "ghost"})
        assert description.startswith("Security Group not found"), description
        assert "ghost" in description


def test_sg_details_all(client: Client) -> None:
    ok(client, sg_member_add=MessageV0.SgMemberAddReq(sg_id="b", member="10.0.0.2"))
    ok(client, sg_rule_add=MessageV0.SgRuleAddReq(sg_id="a", rule=rule(sg="b")))
    details = ok(client, sg_details="").sg_details
    assert [sg.id for sg in details] == ["a", "b"]
    assert list(details[0].rule) == [rule(sg="b")]
    assert list(details[1].member) == ["10.0.0.2"]


# VNI peers (butterfly's extension)


def test_vni_peers(client: Client) -> None:
    ok(client, vni_peer_add=MessageV0.VniPeerReq(vni=20, peer="192.0.2.2"))
    ok(client, vni_peer_add=MessageV0.VniPeerReq(vni=10, peer="2001:0db8::2"))
    ok(client, vni_peer_add=MessageV0.VniPeerReq(vni=20, peer="192.0.2.1"))
    ok(client, vni_peer_add=MessageV0.VniPeerReq(vni=20, peer="192.0.2.2"))
    listed = ok(client, vni_peer_list=True).vni_peer_list
    assert [(p.vni, list(p.peer)) for p in listed] == [
        (10, ["2001:db8::2"]),
        (20, ["192.0.2.2", "192.0.2.1"]),
    ]
    ok(client, vni_peer_del=MessageV0.VniPeerReq(vni=20, peer="192.0.2.2"))
    ok(client, vni_peer_del=MessageV0.VniPeerReq(vni=10, peer="2001:db8::2"))
    listed = ok(client, vni_peer_list=True).vni_peer_list
    assert [(p.vni, list(p.peer)) for p in listed] == [(20, ["192.0.2.1"])]


def test_vni_peer_validation(client: Client) -> None:
    before = dump(client)
    description = fail(client, vni_peer_add=MessageV0.VniPeerReq(vni=1 << 24, peer="192.0.2.1"))
    assert str(1 << 24) in description
    description = fail(client, vni_peer_add=MessageV0.VniPeerReq(vni=1, peer="192.0.2.300"))
    assert description.startswith("Bad IP format") and "192.0.2.300" in description
    assert dump(client) == before


# the daemon


def test_app_status(client: Client) -> None:
    ok(client, nic_add=nic("n", vni=77))
    before = int(time.time())
    status = ok(client, app_status=True).app_status
    assert status.HasField("start_date") and status.HasField("current_date")
    assert 0 < status.start_date <= status.current_date
    assert status.current_date >= before - 1
    assert status.request_counter >= 2
    assert status.graph_dot.startswith("digraph")
    assert "vni 77" in status.graph_dot
    later = ok(client, app_status=True).app_status
    assert later.request_counter > status.request_counter


def test_app_status_without_the_graph(client: Client) -> None:
    """A poller's status (our addition) leaves the graph out; the default still draws it."""
    ok(client, nic_add=nic("n", vni=77))
    for graph in (False, True):
        response = client.call(Request(app_status=True, app_status_graph=graph)).response
        assert response.status.status, response.status.error.description
        status = response.app_status
        assert status.HasField("start_date") and status.request_counter >= 2
        assert status.HasField("graph_dot") == graph
        assert ("vni 77" in status.graph_dot) == graph


def test_app_config_log_levels(daemon: Daemon, client: Client) -> None:
    for level in ("none", "error", "warning", "info", "debug"):
        ok(client, app_config=MessageV0.AppConfigReq(log_level=level))
    ok(client, app_config=MessageV0.AppConfigReq())  # nothing to change
    description = fail(client, app_config=MessageV0.AppConfigReq(log_level="loud"))
    assert "loud" in description
    ok(client, nic_add=nic("still-serving"))
    ok(client, app_config=MessageV0.AppConfigReq(log_level="debug"))
    ok(client, nic_del="still-serving")
    assert daemon.alive()


def test_app_quit_answers_then_stops_cleanly(daemon: Daemon, client: Client) -> None:
    ok(client, nic_add=nic("kept"))
    ok(client, app_quit=True)
    assert daemon.wait_exit(timeout=10) == 0
    daemon.restart()
    assert list(ok(client, nic_list=True).nic_list) == ["kept"]


def test_request_without_a_field_fails_cleanly(client: Client) -> None:
    reply = client.call(MessageV0.Request())
    assert not reply.response.status.status
    assert reply.response.status.error.description
    assert ok(client, app_status=True).app_status.request_counter >= 1


def test_every_request_type_is_answered(client: Client) -> None:
    """One of each, so a new field in Request without a handler is caught."""
    fields = MessageV0.Request.DESCRIPTOR.oneofs_by_name["request"].fields
    answered = set()
    samples = {
        "nic_add": nic("n"),
        "nic_update": MessageV0.NicUpdateReq(id="n", ip_anti_spoof=True),
        "nic_del": "other",
        "nic_list": True,
        "nic_details": "n",
        "nic_export": "n",
        "nic_stats": "n",
        "nic_import": MessageV0.NicImportReq(
            id="n", data=encode_sessions(SessionExport(vni=42, nic_id="n", sessions=()))
        ),
        "sg_add": Sg(id="s"),
        "sg_del": "other",
        "sg_list": True,
        "sg_rule_add": MessageV0.SgRuleAddReq(sg_id="s", rule=rule(sg="s")),
        "sg_rule_del": MessageV0.SgRuleDelReq(sg_id="s", rule=rule(sg="x")),
        "sg_rule_list": "s",
        "sg_member_add": MessageV0.SgMemberAddReq(sg_id="s", member="10.0.0.1"),
        "sg_member_del": MessageV0.SgMemberDelReq(sg_id="s", member="10.0.0.2"),
        "sg_member_list": "s",
        "app_status": True,
        "app_config": MessageV0.AppConfigReq(log_level="info"),
        "sg_details": "s",
        "vni_peer_add": MessageV0.VniPeerReq(vni=1, peer="192.0.2.1"),
        "vni_peer_del": MessageV0.VniPeerReq(vni=1, peer="192.0.2.1"),
        "vni_peer_list": True,
    }
    for field in fields:
        if field.name == "app_quit":
            continue  # test_app_quit_answers_then_stops_cleanly
        assert field.name in samples, f"no sample for request {field.name}"
        response = call(client, **{field.name: samples[field.name]})
        assert response.status.status, (field.name, response)
        answered.add(field.name)
    assert answered == {f.name for f in fields} - {"app_quit"}
    assert request(nic_list=True).WhichOneof("request") == "nic_list"


def test_a_rule_naming_a_missing_sg_is_kept_when_that_sg_appears(client: Client) -> None:
    ok(client, sg_rule_add=MessageV0.SgRuleAddReq(sg_id="web", rule=rule(sg="lb")))
    ok(client, sg_member_add=MessageV0.SgMemberAddReq(sg_id="lb", member="10.0.0.1"))
    assert list(ok(client, sg_rule_list="web").sg_rule_list) == [rule(sg="lb")]
    ok(client, sg_del="lb")
    assert list(ok(client, sg_rule_list="web").sg_rule_list) == [rule(sg="lb")]


def test_inbound_and_outbound_rules_are_distinct(client: Client) -> None:
    one = rule(direction=INBOUND, cidr=("10.0.0.0", 8))
    other = rule(direction=OUTBOUND, cidr=("10.0.0.0", 8))
    ok(client, sg_rule_add=MessageV0.SgRuleAddReq(sg_id="s", rule=one))
    ok(client, sg_rule_add=MessageV0.SgRuleAddReq(sg_id="s", rule=other))
    assert list(ok(client, sg_rule_list="s").sg_rule_list) == [one, other]


def test_a_nics_caps_are_answered_only_to_a_request_asking_for_them(
    daemon: Daemon, client: Client
) -> None:
    """A deployed client cannot parse fields 110/111: plain nic_details never has them."""
    ok(client, nic_add=nic("vnic-1", max_connections=0, max_new_connections=50))
    plain = ok(client, nic_details="vnic-1").nic_details[0]
    assert not plain.HasField("max_connections")
    assert not plain.HasField("max_new_connections")
    asked = Request(nic_details="vnic-1", with_additions=True)
    got = client.call(asked).response.nic_details[0]
    assert (got.max_connections, got.max_new_connections) == (0, 50)
    assert got.HasField("max_connections")
    ok(client, nic_update=MessageV0.NicUpdateReq(id="vnic-1", max_connections=7))
    got = client.call(asked).response.nic_details[0]
    assert (got.max_connections, got.max_new_connections) == (7, 50)
    ok(client, nic_add=nic("vnic-2", mac="52:54:00:00:00:02"))
    untouched = client.call(Request(nic_details="vnic-2", with_additions=True)).response
    assert not untouched.nic_details[0].HasField("max_connections")


def test_a_cap_out_of_range_is_refused_and_changes_nothing(daemon: Daemon, client: Client) -> None:
    message = fail(client, nic_add=nic("vnic-1", max_connections=10_000_001))
    assert message == (
        "Bad NIC format: nic 'vnic-1': max_connections 10000001 is out of range 0-10000000"
    )
    assert list(ok(client, nic_list=True).nic_list) == []
