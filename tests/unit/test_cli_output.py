"""What the CLI prints: the original client's text, and JSON for scripts."""

import json

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.cli import output
from butterfly.cli.requests import rule_hash


def test_ids_one_per_line_or_a_json_list() -> None:
    assert output.ids(["a", "b"], as_json=False) == "a\nb\n"
    assert output.ids([], as_json=False) == ""
    assert json.loads(output.ids(["a", "b"], as_json=True)) == ["a", "b"]


def test_nic_stats() -> None:
    stats = MessageV0.NicStats(out=7)
    setattr(stats, "in", 5)
    assert output.nic_stats(stats, as_json=False) == "in: 5\nout: 7\n"
    assert json.loads(output.nic_stats(stats, as_json=True)) == {"in": 5, "out": 7}


def test_nic_details_keeps_the_original_lines_first() -> None:
    nic = MessageV0.Nic(
        id="vnic_1",
        mac="52:54:00:12:34:01",
        vni=1337,
        ip=["42.0.0.1", "::1"],
        security_group=["web"],
        ip_anti_spoof=True,
        bypass_filtering=False,
        packet_trace=False,
        path="/run/butterfly/qemu-vhost-vnic_1",
        mtu=1450,
        max_connections=0,
        max_new_connections=200,
    )
    assert output.nic_details(nic, as_json=False) == (
        "id: vnic_1\n"
        "mac: 52:54:00:12:34:01\n"
        "vni: 1337\n"
        "ip: 42.0.0.1\n"
        "ip: ::1\n"
        "antispoof: true\n"
        "bypass filtering: false\n"
        "packet trace: false\n"
        "security group: web\n"
        "type: vhost-user\n"
        "path: /run/butterfly/qemu-vhost-vnic_1\n"
        "mtu: 1450\n"
        "max connections: no cap\n"
        "max new connections per second: 200\n"
    )


def test_nic_details_json_has_every_field() -> None:
    nic = MessageV0.Nic(id="a", mac="m", vni=3, type=MessageV0.Nic.TAP)
    assert json.loads(output.nic_details(nic, as_json=True)) == {
        "id": "a",
        "mac": "m",
        "vni": 3,
        "ip": [],
        "security_group": [],
        "ip_anti_spoof": False,
        "bypass_filtering": False,
        "type": "TAP",
        "path": None,
        "packet_trace": None,
        "packet_trace_path": None,
        "sniff_target_nic_id": None,
        "mtu": None,
        "max_connections": None,
        "max_new_connections": None,
    }


def test_rules_as_the_original_prints_them() -> None:
    tcp = MessageV0.Rule(direction=MessageV0.Rule.INBOUND, protocol=6, port_start=80, port_end=80)
    tcp.cidr.address, tcp.cidr.mask_size = "0.0.0.0", 0
    members = MessageV0.Rule(direction=MessageV0.Rule.OUTBOUND, protocol=-1, security_group="users")
    assert output.rules([tcp, members], as_json=False) == (
        f"{rule_hash(tcp)} | direction: INBOUND - IP protocol: 6 - port start: 80 - "
        "port end: 80 - cidr: 0.0.0.0/0 - members of sg: Ø\n"
        f"{rule_hash(members)} | direction: OUTBOUND - IP protocol: -1 - port start: Ø - "
        "port end: Ø - cidr: Ø - members of sg: users\n"
    )
    assert json.loads(output.rules([members], as_json=True)) == [
        {
            "hash": rule_hash(members),
            "direction": "OUTBOUND",
            "protocol": -1,
            "port_start": None,
            "port_end": None,
            "cidr": None,
            "security_group": "users",
        }
    ]


def test_status() -> None:
    status = MessageV0.AppStatusRes(
        start_date=1, current_date=2, request_counter=3, graph_dot="digraph {}"
    )
    assert output.status(status, as_json=False) == (
        "start date: 1\ncurrent date: 2\nrequest counter: 3\ndot graph: \ndigraph {}\n"
    )
    assert json.loads(output.status(status, as_json=True)) == {
        "start_date": 1,
        "current_date": 2,
        "request_counter": 3,
        "graph_dot": "digraph {}",
    }
    assert output.status(MessageV0.AppStatusRes(), as_json=False) == ""


def test_vni_peers_one_pair_per_line() -> None:
    groups = [
        MessageV0.VniPeers(vni=1, peer=["192.0.2.1", "192.0.2.2"]),
        MessageV0.VniPeers(vni=7, peer=["2001:db8::1"]),
    ]
    assert output.vni_peers(groups, as_json=False) == ("1 192.0.2.1\n1 192.0.2.2\n7 2001:db8::1\n")
    assert json.loads(output.vni_peers(groups, as_json=True)) == [
        {"vni": 1, "peer": ["192.0.2.1", "192.0.2.2"]},
        {"vni": 7, "peer": ["2001:db8::1"]},
    ]


def test_protobuf_text_keeps_non_ascii_readable() -> None:
    assert output.protobuf_text(MessageV0.Sg(id="café")) == 'id: "café"\n'


def test_status_shows_the_start_up_reconcile_when_the_daemon_reports_it() -> None:
    app = MessageV0.AppStatusRes(start_date=1)
    assert "reconcile" not in output.status(app, as_json=False)
    app.reconcile.running = True
    app.reconcile.done = 120
    app.reconcile.total = 600
    app.reconcile.milliseconds = 1500
    assert output.status(app, as_json=False) == (
        "start date: 1\nstart-up reconcile: running, 120/600 objects, 1.5 s\n"
    )
    app.reconcile.running = False
    app.reconcile.problems = "reconcile: nic 'x': gone"
    assert "start-up reconcile: done in 1.5 s (600 objects); reconcile: nic 'x': gone" in (
        output.status(app, as_json=False)
    )
    assert '"running": false' in output.status(app, as_json=True)
