"""From parsed arguments to protocol requests, and from answers back (no daemon)."""

import pytest
from google.protobuf import text_format

from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages
from butterfly.cli import requests
from butterfly.cli.args import Args, parse
from butterfly.errors import BadRequest, ClientError, ConfigError
from butterfly.model import Cidr, Direction, Rule

Request = MessageV0.Request


def args_of(line: str, *more: str) -> Args:
    """The arguments of one command line (split on spaces), plus ``more`` words."""
    return parse([*line.split(), *more]).commands[0].args


def request_text(request: Request) -> str:
    return text_format.MessageToString(request, as_one_line=True)


def test_nic_add_sends_what_the_original_sent() -> None:
    request = requests.nic_add(
        args_of(
            "nic add --id vnic_1 --mac 52:54:00:12:34:01 --vni 1337 --ip 42.0.0.1 --ip ::1 --sg web"
        )
    )
    assert request_text(request) == (
        'nic_add { id: "vnic_1" mac: "52:54:00:12:34:01" vni: 1337 ip: "42.0.0.1" ip: "::1"'
        ' security_group: "web" ip_anti_spoof: false bypass_filtering: false'
        " type: VHOST_USER_SERVER }"
    )


def test_nic_add_flags_type_and_trace() -> None:
    nic = requests.nic_add(
        args_of(
            "nic add --id a --mac m --vni 0 --type TAP --enable-antispoof --bypass-filtering"
            " --packet-trace true --trace-path /t.pcap"
        )
    ).nic_add
    assert nic.type == MessageV0.Nic.TAP
    assert nic.ip_anti_spoof and nic.bypass_filtering
    assert nic.packet_trace and nic.packet_trace_path == "/t.pcap"
    assert not nic.HasField("path")


def test_nic_add_netns_needs_a_path() -> None:
    base = "nic add --id a --mac m --vni 1"
    nic = requests.nic_add(args_of(f"{base} --type netns --path ns1")).nic_add
    assert nic.type == MessageV0.Nic.NETNS
    assert nic.path == "ns1"
    with pytest.raises(ConfigError, match="--type netns needs --path"):
        requests.nic_add(args_of(f"{base} --type netns"))
    with pytest.raises(ConfigError, match="--path is only for --type netns"):
        requests.nic_add(args_of(f"{base} --path ns1"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "--id is mandatory"),
        ("--id a", "--mac is mandatory"),
        ("--id a --mac m", "--vni is mandatory"),
        ("--id a --mac m --vni 16777216", "--vni 16777216 is out of range"),
        ("--id a --mac m --vni x", "--vni 'x' is not a number"),
        ("--id a --mac m --vni 1 --type bench", "--type 'bench' is not"),
        ("--id a --mac m --vni 1 --trace-path /p", "--trace-path needs --packet-trace true"),
        (
            "--id a --mac m --vni 1 --packet-trace false --trace-path /p",
            "--trace-path needs --packet-trace true",
        ),
        ("--id a --mac m --vni 1 --packet-trace on", "--packet-trace 'on' is not true or false"),
    ],
)
def test_nic_add_refuses_what_the_original_refused(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        requests.nic_add(args_of(f"nic add {line}"))


def test_nic_update_sends_only_what_is_given() -> None:
    update = requests.nic_update(args_of("nic update --id a --enable-antispoof true")).nic_update
    assert update.ip_anti_spoof is True
    assert list(update.ip) == []
    assert not update.HasField("packet_trace")
    cleared = requests.nic_update(args_of("nic update --id a --ip", "")).nic_update
    assert list(cleared.ip) == [""]


def test_caps_go_to_our_fields_only_when_given() -> None:
    base = "nic add --id a --mac 52:54:00:00:00:01 --vni 1"
    plain = requests.nic_add(args_of(base)).nic_add
    assert not plain.HasField("max_connections")
    assert not plain.HasField("max_new_connections")
    capped = requests.nic_add(
        args_of(f"{base} --max-connections 0 --max-new-connections 200")
    ).nic_add
    assert (capped.max_connections, capped.max_new_connections) == (0, 200)
    assert capped.HasField("max_connections")
    update = requests.nic_update(args_of("nic update --id a --max-connections 5")).nic_update
    assert update.max_connections == 5
    assert not update.HasField("max_new_connections")
    with pytest.raises(ConfigError, match="--max-new-connections -1 is out of range"):
        requests.nic_add(args_of(f"{base} --max-new-connections -1"))


def test_nic_update_errors() -> None:
    with pytest.raises(ConfigError, match="nothing to update"):
        requests.nic_update(args_of("nic update --id a"))
    with pytest.raises(ConfigError, match="--id is mandatory"):
        requests.nic_update(args_of("nic update --ip 1.1.1.1"))
    with pytest.raises(ConfigError, match="cannot be given with other --ip"):
        requests.nic_update(args_of("nic update --id a --ip ::1 --ip", ""))


def test_nic_sg_lists_keep_order_and_report_no_change() -> None:
    assert requests.sgs_after_add(["b", "a"], ["c", "a"]) == ["b", "a", "c"]
    assert requests.sgs_after_add(["b", "a"], ["a"]) is None
    assert requests.sgs_after_del(["b", "a"], ["a", "x"]) == ["b"]
    assert requests.sgs_after_del(["b", "a"], ["x"]) is None
    assert requests.sgs_after_del(["a"], ["a"]) == []


def test_removing_the_last_sg_sends_one_empty_string() -> None:
    update = requests.nic_sg_update("vnic_1", []).nic_update
    assert list(update.security_group) == [""]
    assert list(requests.nic_sg_update("vnic_1", ["a"]).nic_update.security_group) == ["a"]


def rule_of(options: str) -> MessageV0.Rule:
    return requests.rule_from_args(args_of(f"sg rule add sg1 {options}"))


def test_rule_single_port_range_and_sources() -> None:
    single = rule_of("--ip-proto tcp --port 22 --cidr 42.0.3.1/32")
    assert text_format.MessageToString(single, as_one_line=True) == (
        "direction: INBOUND protocol: 6 port_start: 22 port_end: 22"
        ' cidr { address: "42.0.3.1" mask_size: 32 }'
    )
    ranged = rule_of(
        "--dir out --ip-proto udp --port-start 1000 --port-end 2000 --sg-members users"
    )
    assert (ranged.direction, ranged.protocol) == (MessageV0.Rule.OUTBOUND, 17)
    assert (ranged.port_start, ranged.port_end) == (1000, 2000)
    assert ranged.security_group == "users"
    assert rule_of("--ip-proto all --cidr ::/0").protocol == -1
    assert rule_of("--ip-proto icmp --cidr ::/0").protocol == 1
    assert rule_of("--ip-proto 47 --cidr ::/0").protocol == 47


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("--cidr ::/0", "--ip-proto is mandatory"),
        ("--ip-proto tcp --cidr ::/0", "wrong port configuration"),
        ("--ip-proto tcp --port-start 1 --cidr ::/0", "wrong port configuration"),
        (
            "--ip-proto tcp --port-start 9 --port-end 8 --cidr ::/0",
            "--port-start 9 is above --port-end 8",
        ),
        ("--ip-proto icmp --port 1 --cidr ::/0", "ports apply to tcp and udp only"),
        ("--ip-proto tcp --port 1 --port-end 2 --cidr ::/0", "--port cannot be given with"),
        ("--ip-proto tcp --port 65536 --cidr ::/0", "--port 65536 is out of range"),
        ("--ip-proto 256 --cidr ::/0", "--ip-proto 256 is out of range"),
        ("--ip-proto gre --cidr ::/0", "--ip-proto 'gre' is not a number"),
        ("--ip-proto all", "you must set --cidr or --sg-members"),
        ("--ip-proto all --cidr ::/0 --sg-members x", "--cidr can't be set with --sg-members"),
        ("--ip-proto all --cidr 10.0.0.1", "--cidr format not recognized"),
        ("--ip-proto all --cidr ::/x", "--cidr mask 'x' is not a number"),
        ("--ip-proto all --cidr ::/0 --dir both", "--dir argument not recognized"),
    ],
)
def test_rule_errors(options: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rule_of(options)


def test_rule_del_by_hash_or_by_options() -> None:
    assert requests.sg_rule_del(args_of("sg rule del sg1 0123abcd")) == "0123abcd"
    deletion = requests.sg_rule_del(args_of("sg rule del sg1 --ip-proto all --cidr ::/0"))
    assert isinstance(deletion, Request)
    assert deletion.sg_rule_del.sg_id == "sg1"
    assert deletion.sg_rule_del.rule.protocol == -1
    with pytest.raises(ConfigError, match="not both"):
        requests.sg_rule_del(args_of("sg rule del sg1 abc --ip-proto all"))
    with pytest.raises(ConfigError, match="missing RULE_HASH"):
        requests.sg_rule_del(args_of("sg rule del sg1"))


def test_rule_hash_is_the_models_digest() -> None:
    rule = rule_of("--ip-proto tcp --port-start 1 --port-end 2 --cidr ::/0")
    model = Rule(
        direction=Direction.INBOUND, protocol=6, port_start=1, port_end=2, cidr=Cidr("::", 0)
    )
    assert requests.rule_hash(rule) == model.hash
    other = rule_of("--ip-proto all --sg-members web")
    assert requests.rule_hash(other) != requests.rule_hash(rule)
    assert requests.find_rule([other, rule], model.hash) is rule
    assert requests.find_rule([other], model.hash) is None


def test_vni_peer_request() -> None:
    peer = requests.vni_peer(args_of("vni peer add 1337 192.0.2.1"))
    assert (peer.vni, peer.peer) == (1337, "192.0.2.1")
    with pytest.raises(ConfigError, match="VNI 'x' is not a number"):
        requests.vni_peer(args_of("vni peer add x 192.0.2.1"))


def answer(ok: bool, description: str = "") -> MessageV0:
    message = MessageV0()
    message.response.status.status = ok
    if description:
        message.response.status.error.description = description
    return message


def reply_of(*answers: MessageV0) -> Messages:
    reply = Messages()
    for one in answers:
        reply.messages.add(revision=REVISION).message_0.CopyFrom(one)
    return reply


def test_envelope_tags_revision_and_ids() -> None:
    sent = requests.envelope([Request(nic_list=True), Request(sg_list=True)], ids=["a", "b"])
    assert [m.revision for m in sent.messages] == [REVISION, REVISION]
    assert [m.message_0.message_id for m in sent.messages] == ["a", "b"]


def test_responses_raise_the_daemons_description() -> None:
    one = requests.envelope([Request(nic_del="x")])
    with pytest.raises(BadRequest) as caught:
        requests.responses(one, reply_of(answer(False, "Bad NIC format: mac")))
    assert str(caught.value) == "Bad NIC format: mac"
    two = requests.envelope([Request(nic_del="x"), Request(nic_del="y")])
    with pytest.raises(BadRequest) as caught:
        requests.responses(two, reply_of(answer(True), answer(False, "nope")))
    assert str(caught.value) == "message 2 (nic_del): nope"
    assert len(requests.responses(two, reply_of(answer(True), answer(True)))) == 2


def test_responses_check_the_answer_count() -> None:
    with pytest.raises(ClientError, match="answered 1 messages to a request of 2"):
        requests.responses(requests.envelope([Request(nic_list=True)] * 2), reply_of(answer(True)))


def test_failures_without_description_or_response() -> None:
    sent = requests.envelope([Request(app_status=True), Request(app_status=True)])
    found = requests.failures(sent, reply_of(answer(False), MessageV0()))
    assert [str(f) for f in found] == [
        "message 1 (app_status): failed without a description",
        "message 2 (app_status): the daemon sent no response",
    ]


def test_dump_replay_puts_sgs_first_and_drops_daemon_fields() -> None:
    sg = MessageV0.Sg(id="web", member=["10.0.0.1"])
    vhost = MessageV0.Nic(id="a", mac="m", vni=1, path="/run/qemu-vhost-a", mtu=1450)
    netns = MessageV0.Nic(id="b", mac="m", vni=1, type=MessageV0.Nic.NETNS, path="ns1")
    peers = MessageV0.VniPeers(vni=1, peer=["192.0.2.1", "192.0.2.2"])
    replay = requests.dump_replay([sg], [vhost, netns], [peers])
    sent = [m.message_0.request for m in replay.messages]
    assert [requests.request_name(r) for r in sent] == [
        "sg_add",
        "nic_add",
        "nic_add",
        "vni_peer_add",
        "vni_peer_add",
    ]
    assert not sent[1].nic_add.HasField("path")
    assert not sent[1].nic_add.HasField("mtu")
    assert sent[2].nic_add.path == "ns1"
    assert sent[4].vni_peer_add.peer == "192.0.2.2"
    assert all(m.revision == REVISION for m in replay.messages)


def test_dump_query_names_its_answers() -> None:
    query = requests.dump_query()
    assert [m.message_0.message_id for m in query.messages] == [
        requests.DUMP_SGS,
        requests.DUMP_NICS,
        requests.DUMP_PEERS,
    ]


def test_request_file_round_trips_a_dump() -> None:
    replay = requests.dump_replay([MessageV0.Sg(id="web")], [], [])
    text = text_format.MessageToString(replay)
    assert requests.parse_request_file(text, "f") == replay


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "f: holds no messages"),
        ("messages { bogus: 1 }", 'f: 1:12 : Message type "proto.Message" has no field'),
        ("messages { message_0 { request { nic_list: true } } }", "revision"),
    ],
)
def test_request_file_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        requests.parse_request_file(text, "f")
