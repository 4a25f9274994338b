"""The EVPN underlay's pure parts: options, FRR's generated configuration, the
neighbour entries a VNI wants, and FRR's JSON read back."""

from pathlib import Path

import pytest

from butterfly.daemon.config import EvpnConfig, parse_args
from butterfly.daemon.frr import frr_config
from butterfly.dataplane.evpn import (
    EvpnStatus,
    FrrReader,
    bridge_mac,
    neighbour_changes,
    parse_status,
    wanted_neighbours,
)
from butterfly.errors import ConfigError
from butterfly.model import Vnic


def _ini(tmp_path: Path, text: str) -> str:
    path = tmp_path / "butterflyd.ini"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("argv", "underlay"),
    [
        ([], "multicast"),
        (["--vxlan-peers", "10.0.0.2"], "static"),
        (["--underlay", "static"], "static"),
        (["--underlay", "evpn"], "evpn"),
        (["--underlay", "multicast", "--vxlan-peers", "10.0.0.2"], "multicast"),
    ],
)
def test_underlay_option(argv: list[str], underlay: str) -> None:
    assert parse_args(argv).underlay == underlay


def test_evpn_section(tmp_path: Path) -> None:
    ini = _ini(
        tmp_path,
        "[general]\nunderlay = evpn\n[evpn]\nasn = 65014\nrouter-id = 10.0.0.1\n"
        "neighbors = 10.0.0.9, 10.0.0.8\nroute-reflector-clients = 10.0.0.0/24\n"
        "frr-instance = host1\n",
    )
    config = parse_args(["-c", ini])
    assert config.underlay == "evpn"
    assert config.evpn == EvpnConfig(
        asn=65014,
        router_id="10.0.0.1",
        neighbors=("10.0.0.9", "10.0.0.8"),
        reflect_for=("10.0.0.0/24",),
        frr_instance="host1",
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[general]\nunderlay = bgp\n", "underlay 'bgp'"),
        ("[general]\nunderlay = evpn\nvxlan-peers = 10.0.0.2\n", "vxlan-peers"),
        ("[evpn]\nasn = 0\n", "evpn.asn 0"),
        ("[evpn]\nasn = x\n", "evpn.asn 'x'"),
        ("[evpn]\nrouter-id = 2001:db8::1\n", "router-id"),
        ("[evpn]\nneighbors = 10.0.0.300\n", "neighbors entry '10.0.0.300'"),
        ("[evpn]\nroute-reflector-clients = ten\n", "route-reflector-clients entry 'ten'"),
        ("[evpn]\nfrr-instance = a/b\n", "frr-instance 'a/b'"),
        ("[evpn]\nmed = 3\n", "unknown option 'med' in [evpn]"),
    ],
)
def test_bad_evpn_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_args(["-c", _ini(tmp_path, text)])


def test_frr_config_of_a_host_and_of_a_route_reflector() -> None:
    host = frr_config(
        EvpnConfig(asn=65014, neighbors=("10.0.0.9",)), underlay_ip="10.0.0.1", source="f.ini"
    )
    assert "router bgp 65014\n bgp router-id 10.0.0.1\n" in host
    assert " neighbor 10.0.0.9 peer-group butterfly\n" in host
    assert "  neighbor butterfly activate\n  advertise-all-vni\n" in host
    assert "route-reflector-client" not in host and "listen range" not in host
    reflector = frr_config(
        EvpnConfig(asn=65014, router_id="10.0.0.9", reflect_for=("10.0.0.0/24",)),
        underlay_ip=None,
        source="f.ini",
    )
    assert " bgp cluster-id 10.0.0.9\n" in reflector
    assert " bgp listen range 10.0.0.0/24 peer-group butterfly-clients\n" in reflector
    assert "  neighbor butterfly-clients route-reflector-client\n" in reflector
    assert "neighbor butterfly activate" not in reflector


@pytest.mark.parametrize(
    ("evpn", "underlay_ip", "named"),
    [
        (EvpnConfig(neighbors=("10.0.0.9",)), "10.0.0.1", "asn"),
        (EvpnConfig(asn=1, neighbors=("10.0.0.9",)), None, "router-id"),
        (EvpnConfig(asn=1, neighbors=("2001:db8::9",)), "2001:db8::1", "router-id"),
        (EvpnConfig(asn=1), "10.0.0.1", "neighbors"),
    ],
)
def test_frr_config_names_what_is_missing(
    evpn: EvpnConfig, underlay_ip: str | None, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        frr_config(evpn, underlay_ip=underlay_ip, source="f.ini")


def _vnic(vnic_id: str, mac: str, *ips: str) -> Vnic:
    return Vnic(id=vnic_id, mac=mac, vni=7, ips=ips)


def test_neighbour_entries_follow_the_vnics() -> None:
    vnics = [
        _vnic("a", "52:54:00:00:00:0A", "10.0.0.1", "2001:db8::0001"),
        _vnic("b", "52:54:00:00:00:0b", "10.0.0.2"),
    ]
    wanted = wanted_neighbours(vnics)
    assert wanted == {
        "10.0.0.1": "52:54:00:00:00:0a",
        "2001:db8::1": "52:54:00:00:00:0a",
        "10.0.0.2": "52:54:00:00:00:0b",
    }
    present = {"10.0.0.1": "52:54:00:00:00:0a", "10.0.0.2": "52:54:00:00:00:ff", "10.0.0.3": "x"}
    assert neighbour_changes(present, wanted) == (
        [("10.0.0.2", "52:54:00:00:00:0b"), ("2001:db8::1", "52:54:00:00:00:0a")],
        ["10.0.0.3"],
    )
    assert neighbour_changes(wanted, wanted) == ([], [])


def test_frr_json_read_back() -> None:
    status = parse_status(
        {"peers": {"10.0.0.9": {"state": "Established"}, "10.0.0.8": {"state": "Active"}}},
        {
            "7": {
                "macs": {
                    "52:54:00:00:00:01": {"type": "local"},
                    "52:54:00:00:00:02": {"type": "remote", "remoteVtep": "10.0.0.2"},
                    "52:54:00:00:00:03": {"type": "remote", "remoteVtep": "10.0.0.3"},
                }
            }
        },
        {"7": {"vni": 7, "remoteVteps": ["10.0.0.3", "10.0.0.2"]}, "8": {"vni": 8}},
    )
    assert status.sessions_line() == "BGP EVPN: 10.0.0.8 Active, 10.0.0.9 Established"
    assert status.describe(7) == "EVPN: remote VTEPs 10.0.0.2, 10.0.0.3; 2 remote MACs"
    assert status.describe(8) == "EVPN: remote VTEPs none; 0 remote MACs"
    assert status.describe(9) == "EVPN (FRR does not carry this VNI)"
    assert status.vnis[7].local_macs == 1
    assert status.remote_vteps(7) == (("10.0.0.2", 1), ("10.0.0.3", 1))
    assert status.remote_vteps(9) == ()


def test_frr_down_or_absent_is_a_state_not_an_error(tmp_path: Path) -> None:
    assert FrrReader(vtysh=str(tmp_path / "no-vtysh")).status().error == "vtysh is not installed"
    failing = tmp_path / "vtysh"
    failing.write_text("#!/bin/sh\necho 'Exiting: failed to connect to any daemons.' >&2\nexit 1\n")
    failing.chmod(0o755)
    status = FrrReader(vtysh=str(failing)).status()
    assert status.error == "not running (Exiting: failed to connect to any daemons.)"
    assert status.describe(7).startswith("EVPN (FRR: not running")
    assert EvpnStatus().sessions_line() == "BGP EVPN: no session configured"


def test_bridge_mac_is_fixed_unicast_and_local() -> None:
    mac = bridge_mac("198.51.100.1", 14)
    assert mac == bridge_mac("198.51.100.1", 14) != bridge_mac("198.51.100.1", 15)
    assert mac != bridge_mac("198.51.100.2", 14)
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01, "locally administered unicast"


def _fake_vtysh(tmp_path: Path, body: str) -> str:
    script = tmp_path / "vtysh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return str(script)


def test_one_vtysh_run_answers_the_three_questions(tmp_path: Path) -> None:
    documents = (
        '{"peers": {"10.0.0.9": {"state": "Established"}}}\n'
        '{"7": {"macs": {"52:54:00:00:00:02": {"type": "remote", "remoteVtep": "10.0.0.2"}}}}\n'
        '{"7": {"vni": 7, "remoteVteps": ["10.0.0.2"]}}\n'
    )
    vtysh = _fake_vtysh(tmp_path, f"cat <<'EOF'\n{documents}EOF\n")
    status = FrrReader(vtysh=vtysh).status()
    assert status.error is None
    assert status.remote_vteps(7) == (("10.0.0.2", 1),)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("echo '% bgpd is not running'\n", "not the JSON asked for"),
        ("echo '{}'\n", "not the JSON asked for"),
        ("sleep 5\n", "did not answer in 2 s"),
    ],
)
def test_a_vtysh_that_does_not_answer_is_a_state(tmp_path: Path, body: str, error: str) -> None:
    assert error in (FrrReader(vtysh=_fake_vtysh(tmp_path, body)).status().error or "")
