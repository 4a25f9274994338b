"""Deployed (revision-6) clients against a real butterflyd with its data plane on.

The client here knows upstream's field set only (``upstream/*.proto``, from
the specification's tables): it dumps the switch as the C++ client's ``dump``
does (text format, unknown fields printed by number), parses that text back
and replays it as ``butterfly request`` does. A reply holding any addition of
ours (``Nic.mtu``, the NETNS type...) would break that round trip, as it did
before (``Expected identifier, got: 100``). Our own clients, which ask through
``with_additions``, still see everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import text_format
from upstream_client import UpstreamClient, UpstreamProtocol, unknown_fields

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import tap_name, trace_path
from butterfly_lab.lab import Host, Lab, Vm

pytestmark = pytest.mark.root

Request = MessageV0.Request
Nic = MessageV0.Nic
Rule = MessageV0.Rule

PEER = "198.51.100.77"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> UpstreamProtocol:
    return UpstreamProtocol(str(tmp_path_factory.mktemp("upstream")))


def _rule(
    direction: int,
    protocol: int,
    *,
    ports: tuple[int, int] | None = None,
    cidr: tuple[str, int] | None = None,
    sg: str | None = None,
) -> MessageV0.Rule:
    rule = Rule(direction=direction, protocol=protocol)  # type: ignore[arg-type]
    if ports is not None:
        rule.port_start, rule.port_end = ports
    if cidr is not None:
        rule.cidr.address, rule.cidr.mask_size = cidr
    if sg is not None:
        rule.security_group = sg
    return rule


def _build_every_kind(host: Host, vm: Vm) -> None:
    """Security groups of every rule form, vnics of every type and option, VNI peers."""
    web = MessageV0.Sg(id="sg-web", member=["10.0.0.5", "2001:db8::5"])
    web.rule.extend(
        [
            _rule(Rule.INBOUND, 6, ports=(80, 443), cidr=("0.0.0.0", 0)),
            _rule(Rule.INBOUND, 17, ports=(53, 53), cidr=("2001:db8::", 32)),
            _rule(Rule.INBOUND, 1, sg="sg-db"),
            _rule(Rule.OUTBOUND, -1, cidr=("::", 0)),
            _rule(Rule.INBOUND, 47, cidr=("10.1.0.0", 16)),
        ]
    )
    host.call(Request(sg_add=web))
    host.call(Request(sg_member_add=MessageV0.SgMemberAddReq(sg_id="sg-db", member="10.0.0.9")))
    host.call(Request(sg_add=MessageV0.Sg(id="sg-empty")))
    nics = [
        Nic(id="tap1", mac="52:54:00:00:01:01", vni=42, ip=["10.0.0.1", "2001:db8::1"],
            security_group=["sg-web", "sg-db"], ip_anti_spoof=True, type=Nic.TAP),
        Nic(id="ns1", mac="52:54:00:00:01:02", vni=42, ip=["10.0.0.2"],
            security_group=["sg-web"], type=Nic.NETNS, path=vm.name),
        Nic(id="vh1", mac="52:54:00:00:01:03", vni=43, bypass_filtering=True),
        Nic(id="tr1", mac="52:54:00:00:01:04", vni=43, ip=["10.0.1.4"], type=Nic.TAP,
            packet_trace=True, packet_trace_path=os.path.join(host.folder, "tr1.pcap"),
            sniff_target_nic_id="off1"),
        Nic(id="off1", mac="52:54:00:00:01:05", vni=43, type=Nic.TAP, packet_trace=False),
    ]  # fmt: skip
    for nic in nics:
        host.call(Request(nic_add=nic))
    host.call(Request(vni_peer_add=MessageV0.VniPeerReq(vni=42, peer=PEER)))


@pytest.fixture(scope="module")
def switch(lab: Lab) -> Iterator[tuple[Host, Vm]]:
    host = lab.host()
    vm = lab.vm()
    _build_every_kind(host, vm)
    yield host, vm


def _statuses(reply: Any) -> list[tuple[bool, str]]:
    return [
        (m.message_0.response.status.status, m.message_0.response.status.error.description)
        for m in reply.messages
    ]


def test_dump_request_round_trip_with_upstreams_field_set(
    switch: tuple[Host, Vm], upstream: UpstreamProtocol
) -> None:
    host, vm = switch
    client = UpstreamClient(upstream, host.client)
    text, replies = client.dump()
    for reply in replies:
        assert unknown_fields(reply) == [], text_format.MessageToString(reply)
    replay = upstream.parse_text(text)  # what failed with "Expected identifier, got: 100"
    nics = {m.message_0.request.nic_add.id: m.message_0.request.nic_add for m in replay.messages
            if m.message_0.request.HasField("nic_add")}  # fmt: skip
    sgs = [m.message_0.request.sg_add.id for m in replay.messages
           if m.message_0.request.HasField("sg_add")]  # fmt: skip
    assert sorted(nics) == ["ns1", "off1", "tap1", "tr1", "vh1"]
    assert sgs == ["sg-db", "sg-empty", "sg-web"]
    # NETNS in the closest form revision 6 has: TAP, path still naming the namespace.
    assert nics["ns1"].type == upstream.MessageV0.Nic.TAP
    assert nics["ns1"].path == vm.name
    assert nics["vh1"].type == upstream.MessageV0.Nic.VHOST_USER_SERVER

    # Restore as an operator would: everything deleted, then `butterfly request dump`.
    for nic_id in nics:
        client.ask(nic_del=nic_id)
    for sg_id in sgs:
        client.ask(sg_del=sg_id)
    assert not client.ask(nic_list=True)[0].nic_list
    assert all(ok for ok, _ in _statuses(client.request(text))), _statuses(client.request(text))

    again, _ = client.dump()
    expected = upstream.parse_text(text)
    for message in expected.messages:
        if message.message_0.request.nic_add.id == "ns1":
            # What only our addition could say is lost: it comes back as a tap.
            message.message_0.request.nic_add.path = tap_name("ns1")
    assert again == text_format.MessageToString(expected, print_unknown_fields=True)
    # Our client puts the namespace vnic back, for the module's other tests.
    original = Nic(id="ns1", mac="52:54:00:00:01:02", vni=42, ip=["10.0.0.2"],
                   security_group=["sg-web"], type=Nic.NETNS, path=vm.name)  # fmt: skip
    host.call(Request(nic_add=original))


def test_our_clients_still_see_every_addition(switch: tuple[Host, Vm]) -> None:
    host, vm = switch
    ours = host.call(Request(nic_details="ns1", with_additions=True)).nic_details[0]
    assert ours.type == Nic.NETNS and ours.path == vm.name and ours.mtu > 0
    plain = host.call(Request(nic_details="ns1")).nic_details[0]
    assert plain.type == Nic.TAP and not plain.HasField("mtu")
    # A request of ours is itself the ask: vni_peer_list answers its field 100.
    peers = host.call(Request(vni_peer_list=True)).vni_peer_list
    assert [(group.vni, list(group.peer)) for group in peers] == [(42, [PEER])]
    # The CLI asks on every request.
    details = host.cli("nic", "details", "ns1")
    assert "type: netns" in details and "mtu: " in details, details


def test_packet_trace_settings_are_always_reported(
    switch: tuple[Host, Vm], upstream: UpstreamProtocol
) -> None:
    host, _ = switch
    response, _ = UpstreamClient(upstream, host.client).ask(nic_details="")
    reported = {
        nic.id: (nic.HasField("packet_trace") and nic.packet_trace, nic.packet_trace_path)
        for nic in response.nic_details
    }
    folder = host.folder
    assert reported == {
        "ns1": (False, trace_path(folder, "ns1")),
        "off1": (False, trace_path(folder, "off1")),
        "tap1": (False, trace_path(folder, "tap1")),
        "tr1": (True, os.path.join(folder, "tr1.pcap")),
        "vh1": (False, trace_path(folder, "vh1")),
    }
    assert all(nic.HasField("packet_trace") for nic in response.nic_details)


def test_packet_trace_inherited_from_the_daemons_option(
    lab: Lab, upstream: UpstreamProtocol
) -> None:
    host = lab.host(extra_args=["-t"])
    host.call(Request(nic_add=Nic(id="inh", mac="52:54:00:00:02:01", vni=44, type=Nic.TAP)))
    host.call(
        Request(nic_add=Nic(id="no", mac="52:54:00:00:02:02", vni=44, type=Nic.TAP,
                            packet_trace=False))
    )  # fmt: skip
    response, _ = UpstreamClient(upstream, host.client).ask(nic_details="")
    reported = {nic.id: (nic.packet_trace, nic.packet_trace_path) for nic in response.nic_details}
    assert reported == {
        "inh": (True, trace_path(host.folder, "inh")),
        "no": (False, trace_path(host.folder, "no")),
    }
    assert os.path.exists(trace_path(host.folder, "inh"))  # really traced
    assert not os.path.exists(trace_path(host.folder, "no"))
