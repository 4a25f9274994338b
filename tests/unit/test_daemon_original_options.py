"""The original daemon's options and ini keys: parsed, with the meaning they have here."""

import os
from pathlib import Path
from typing import Any

import pytest

from butterfly.daemon.config import Config, parse_args
from butterfly.daemon.original import DpdkArgs, parse_cpu_list, parse_dpdk_args
from butterfly.dataplane.netlink import Address, Link, Route
from butterfly.dataplane.underlay import find_underlay
from butterfly.errors import ConfigError
from butterfly.vhost import VhostSupervisor

README_ARGS = "-c1 -n1 --socket-mem 64 --vdev=eth_pcap0,iface=eth0"
"""--dpdk-args of the original README's command line."""


def test_the_original_readme_command_line() -> None:
    config = parse_args(["-i", "192.168.0.1", "-s", "/tmp", "--dpdk-args", README_ARGS])
    assert (config.ip, config.socket_dir) == ("192.168.0.1", "/tmp")
    assert config.underlay_interface == "eth0"
    assert config.not_applicable == ("dpdk-args '-c1 -n1 --socket-mem 64'",)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-m", "9000"], {"nic_mtu": 9000}),
        (["--nic-mtu", "9000"], {"nic_mtu": 9000}),
        (["-m9000"], {"nic_mtu": 9000}),
        (["--nic-mtu", "max"], {"nic_mtu": None}),
        (["--nic-mtu=MAX"], {"nic_mtu": None}),
        (["-u", "0"], {"graph_cpus": (0,)}),
        (["--graph-cpu-core", "3,0-1"], {"graph_cpus": (0, 1, 3)}),
        (["--no-offload"], {"offload": False}),
        (["--dpdk-port", "0"], {"not_applicable": ("dpdk-port 0",)}),
        (["--dpdk-args", "-c0xF -n1"], {"not_applicable": ("dpdk-args '-c0xF -n1'",)}),
        (["--dpdk-args=--vdev net_af_packet0,iface=ul0"], {"underlay_interface": "ul0"}),
        (["-t", "--no-syslog", "-l", "debug"], {"packet_trace": True, "syslog": False}),
    ],
)
def test_each_original_option(argv: list[str], expected: dict[str, Any]) -> None:
    config = parse_args(argv)
    for name, value in expected.items():
        assert getattr(config, name) == value, name


def test_a_value_that_looks_like_options_is_the_value() -> None:
    """As GLib did: the argument after --dpdk-args is its value, even "-c1 ..."
    (argparse alone would read -c, the config file option, in it)."""
    config = parse_args(["--dpdk-args", "-c /etc/x.ini", "-e", "tcp://127.0.0.1:1"])
    assert config.endpoint == "tcp://127.0.0.1:1"
    assert config.not_applicable == ("dpdk-args '-c /etc/x.ini'",)


def test_the_original_sample_ini_with_every_key(tmp_path: Path) -> None:
    ini = tmp_path / "butterflyd.ini"
    ini.write_text(
        "; Note: all parameters given through the configuration file to butterfly\n"
        ";       will overwrite thoses given by command-line\n"
        "[general]\n"
        "log-level=debug\n"
        "ip=42.0.0.1\n"
        "endpoint=tcp://0.0.0.0:9999\n"
        "socket-dir=/tmp\n"
        "graph-cpu-core=1\n"
        "dpdk-args=-c1 -n1 --socket-mem 128\n"
        "nic-mtu=max\n"
        "dpdk-port=0\n"
        "[security]\n"
        "encryption_key_path=/etc/butterfly/key\n"
    )
    config = parse_args(["-c", str(ini), "-m", "9000", "-u", "0"])
    assert config == Config(
        ip="42.0.0.1",
        socket_dir="/tmp",
        log_level="debug",
        key_path="/etc/butterfly/key",
        graph_cpus=(1,),
        nic_mtu=None,
        not_applicable=("dpdk-args '-c1 -n1 --socket-mem 128'", "dpdk-port 0"),
    )


def test_the_ini_key_the_original_code_read_and_no_offload(tmp_path: Path) -> None:
    """The original's code read graph-core-id (its sample says graph-cpu-core)."""
    ini = tmp_path / "butterflyd.ini"
    ini.write_text("[general]\ngraph-core-id=2\nno-offload=true\nnic-mtu=9000\n")
    config = parse_args(["-c", str(ini)])
    assert (config.graph_cpus, config.offload, config.nic_mtu) == ((2,), False, 9000)


def test_the_file_can_give_offloads_back(tmp_path: Path) -> None:
    ini = tmp_path / "butterflyd.ini"
    ini.write_text("[general]\nno-offload=no\n")
    assert parse_args(["--no-offload", "-c", str(ini)]).offload


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-u", "x"], "command line: graph-cpu-core 'x' is not a CPU number or list"),
        (["-u", "3-1"], "command line: graph-cpu-core '3-1': '3-1' is no CPU range"),
        (["-u", "0-99999"], "command line: graph-cpu-core '0-99999': '0-99999' is no CPU range"),
        (["--dpdk-port", "one"], "command line: dpdk-port 'one' is not a number"),
        (["-m", "big"], "command line: nic-mtu 'big' is not a number"),
        (["--dpdk-args", "'-c1"], 'command line: dpdk-args "\'-c1": No closing quotation'),
        (
            ["--dpdk-args", "--vdev=eth_pcap0,iface=a-very-long-name0"],
            "command line: dpdk-args --vdev 'eth_pcap0,iface=a-very-long-name0': iface",
        ),
    ],
)
def test_bad_values_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_args(argv)
    assert str(error.value).startswith(message)


def test_dpdk_help_says_there_is_no_dpdk(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as end:
        parse_args(["--dpdk-help"])
    assert end.value.code == 0
    assert capsys.readouterr().out.startswith("butterflyd has no DPDK")


def test_an_option_the_original_did_not_know_is_refused_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as end:
        parse_args(["-i", "192.168.0.1", "--tso-on"])
    assert end.value.code == 2
    err = capsys.readouterr().err
    assert err.count("unrecognized arguments: --tso-on") == 1


def test_an_unknown_ini_key_names_the_known_ones(tmp_path: Path) -> None:
    ini = tmp_path / "butterflyd.ini"
    ini.write_text("[general]\npid=/run/butterfly.pid\n")
    with pytest.raises(ConfigError) as error:
        parse_args(["-c", str(ini)])
    assert str(error.value).startswith(f"config file {ini}: unknown option 'pid' in [general]")
    assert "graph-cpu-core" in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (README_ARGS, DpdkArgs("eth0", ("-c1", "-n1", "--socket-mem", "64"))),
        ("--vdev eth_af_packet0,iface=ul0 -c1", DpdkArgs("ul0", ("-c1",))),
        ("--vdev=net_null0 -c1", DpdkArgs(None, ("--vdev=net_null0", "-c1"))),
        (
            "--vdev=eth_pcap0,iface=a --vdev=eth_pcap1,iface=b",
            DpdkArgs("a", ("--vdev=eth_pcap1,iface=b",)),
        ),
        ("'--vdev=eth_pcap0,iface=eth1'", DpdkArgs("eth1", ())),
        ("", DpdkArgs(None, ())),
    ],
)
def test_dpdk_args(text: str, expected: DpdkArgs) -> None:
    assert parse_dpdk_args(text, "here") == expected


def test_cpu_lists() -> None:
    assert parse_cpu_list("0", "here") == (0,)
    assert parse_cpu_list("0-2, 6,1", "here") == (0, 1, 2, 6)


def test_a_cpu_this_process_may_not_use_is_refused() -> None:
    unusable = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(ConfigError) as error:
        VhostSupervisor(cpus=(0, unusable))
    assert str(error.value).startswith(f"graph-cpu-core: CPU {unusable} is not one")


class _Kernel:
    """What find_underlay reads of netlink: two interfaces, eth0 and eth1."""

    def __init__(self, addresses: list[Address]) -> None:
        self._addresses = addresses

    _LINKS = (
        Link(2, "eth0", "", None, None, 1500, True, "02:00:00:00:00:01", None),
        Link(3, "eth1", "", None, None, 1500, True, "02:00:00:00:00:01", None),
    )

    def link(self, name: str) -> Link | None:
        return next((link for link in self._LINKS if link.name == name), None)

    def link_by_index(self, index: int) -> Link | None:
        return next((link for link in self._LINKS if link.index == index), None)

    def addresses(self) -> list[Address]:
        return self._addresses

    def default_route(self, _family: int) -> Route | None:
        return None


V4_ON_BOTH = [
    Address("fe80::1", 64, 2, 6),
    Address("2001:db8::1", 64, 2, 6),
    Address("192.168.0.1", 24, 2, 4),
    Address("192.168.0.1", 24, 3, 4),
]


@pytest.mark.parametrize(
    ("ip", "interface", "expected"),
    [
        ("192.168.0.1", None, ("eth0", "192.168.0.1")),
        ("192.168.0.1", "eth1", ("eth1", "192.168.0.1")),  # both hold it: iface picks
        ("2001:db8::1", "eth1", ("eth0", "2001:db8::1")),  # --ip decides
        (None, "eth0", ("eth0", "192.168.0.1")),  # IPv4 first, never link-local
        (None, "eth1", ("eth1", "192.168.0.1")),
    ],
)
def test_the_underlay(ip: str | None, interface: str | None, expected: tuple[str, str]) -> None:
    underlay = find_underlay(_Kernel(V4_ON_BOTH), ip, interface)  # type: ignore[arg-type]
    assert (underlay.ifname, underlay.address) == expected


@pytest.mark.parametrize(
    ("interface", "message"),
    [
        ("eth9", "dpdk-args: iface eth9: no such interface"),
        ("eth1", "dpdk-args: iface eth1 has no address; give one with --ip"),
        (None, "ip: no --ip given and no default route to find the underlay by"),
    ],
)
def test_no_underlay(interface: str | None, message: str) -> None:
    kernel = _Kernel([Address("fe80::1", 64, 3, 6)])
    with pytest.raises(ConfigError) as error:
        find_underlay(kernel, None, interface)  # type: ignore[arg-type]
    assert str(error.value) == message
