"""The ``butterfly`` command against a real ``butterflyd --no-dataplane``.

Every test runs the installed console script in a subprocess, as an
operator would, and checks its stdout, its one stderr line and its exit
status. Most tests share one daemon started for this module (each uses its
own names); the tests that need an empty daemon, a stopped one or a key
start their own through ``daemon_factory``.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from butterfly_lab.daemon import DaemonProcess, free_port

if TYPE_CHECKING:
    from conftest import DaemonFactory

BUTTERFLY = os.path.join(os.path.dirname(sys.executable), "butterfly")

_GUARD_S = 60
"""Only a guard against a hung test, never an assertion on speed."""


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str


class Cli:
    """The ``butterfly`` command aimed at one endpoint, with more global options."""

    def __init__(self, *, endpoint: str, options: str = "") -> None:
        self.endpoint = endpoint
        self.options = options

    def run(self, line: str, *, env: Mapping[str, str] | None = None) -> Result:
        """``line`` is split as a shell would (quote '' for an empty word)."""
        argv = [BUTTERFLY, "-e", self.endpoint, *shlex.split(self.options), *shlex.split(line)]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=_GUARD_S,
            env=None if env is None else dict(env),
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, line: str) -> str:
        """Stdout of a command that must succeed with nothing on stderr."""
        result = self.run(line)
        assert (result.status, result.err) == (0, ""), result
        return result.out

    def fails(self, line: str) -> str:
        """The one stderr line of a command that must fail with status 1 and no output."""
        result = self.run(line)
        assert (result.status, result.out) == (1, ""), result
        assert result.err.startswith("butterfly: "), result
        assert result.err.count("\n") == 1, result
        assert result.err.endswith("\n"), result
        return result.err[:-1]


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    directory = tmp_path_factory.mktemp("cli-daemon")
    daemon = DaemonProcess(str(directory))
    daemon.start()
    yield daemon
    daemon.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def cli(shared_daemon: DaemonProcess) -> Cli:
    return Cli(endpoint=shared_daemon.endpoint)


def write_key(path: str, key: bytes) -> str:
    with open(path, "wb") as file:
        file.write(base64.b64encode(key) + b"\n")
    return path


# nics


def test_nic_add_prints_the_socket_and_nic_list_shows_it(
    cli: Cli, shared_daemon: DaemonProcess
) -> None:
    out = cli.ok("nic add --id cli-a --mac 52:54:00:12:34:01 --vni 1337 --ip 42.0.0.1")
    assert out == os.path.join(shared_daemon.socket_dir, "qemu-vhost-cli-a") + "\n"
    assert "cli-a\n" in cli.ok("nic list")
    assert "cli-a" in json.loads(cli.ok("nic list --json"))


def test_nic_details_as_the_original_prints_them(cli: Cli, shared_daemon: DaemonProcess) -> None:
    cli.ok(
        "nic add --id cli-details --mac 52:54:00:12:34:02 --vni 7 --ip 2001:0db8::1"
        " --ip 10.0.0.2 --enable-antispoof"
    )
    socket = os.path.join(shared_daemon.socket_dir, "qemu-vhost-cli-details")
    lines = cli.ok("nic details cli-details").splitlines()
    assert lines[:6] == [
        "id: cli-details",
        "mac: 52:54:00:12:34:02",
        "vni: 7",
        "ip: 2001:db8::1",
        "ip: 10.0.0.2",
        "antispoof: true",
    ]
    assert "type: vhost-user" in lines
    assert f"path: {socket}" in lines
    details = json.loads(cli.ok("nic details cli-details --json"))
    assert details["ip"] == ["2001:db8::1", "10.0.0.2"]
    assert details["type"] == "VHOST_USER_SERVER"
    assert details["path"] == socket


def test_nic_add_of_each_type(cli: Cli) -> None:
    assert cli.ok("nic add --id cli-tap --mac 52:54:00:00:00:03 --vni 1 --type tap") != ""
    cli.ok("nic add --id cli-ns --mac 52:54:00:00:00:04 --vni 1 --type netns --path ns-cli")
    assert json.loads(cli.ok("nic details cli-tap --json"))["type"] == "TAP"
    netns = json.loads(cli.ok("nic details cli-ns --json"))
    assert (netns["type"], netns["path"]) == ("NETNS", "ns-cli")


def test_nic_stats(cli: Cli) -> None:
    cli.ok("nic add --id cli-stats --mac 52:54:00:00:00:05 --vni 1")
    assert cli.ok("nic stats cli-stats") == "in: 0\nout: 0\n"
    assert json.loads(cli.ok("nic stats cli-stats --json")) == {"in": 0, "out": 0}


def test_nic_errors_carry_the_daemons_description(cli: Cli) -> None:
    assert cli.fails("nic add --id cli-bad --mac 52:54:00:zz:00:01 --vni 1").startswith(
        "butterfly: nic add: Bad NIC format: "
    )
    assert cli.fails("nic add --id cli-bad --mac 52:54:00:00:00:01 --vni 1 --ip 1.2.3").startswith(
        "butterfly: nic add: Bad IP format: "
    )
    assert cli.fails("nic details cli-nothing") == (
        "butterfly: nic details: NIC does not exist with id cli-nothing"
    )
    assert cli.fails("nic stats cli-nothing").startswith(
        "butterfly: nic stats: NIC does not exist with id cli-nothing"
    )


def test_nic_usage_errors_are_caught_before_sending(cli: Cli) -> None:
    assert cli.fails("nic add --id x --vni 1") == "butterfly: nic add: --mac is mandatory"
    assert cli.fails("nic add --id x --mac m --vni one") == (
        "butterfly: nic add: --vni 'one' is not a number"
    )
    assert cli.fails("nic stats") == "butterfly: nic stats: missing NIC"
    assert cli.fails("nic frobnicate") == "butterfly: invalid nic subcommand 'frobnicate'"


def test_nic_update_replaces_and_clears_ips(cli: Cli) -> None:
    cli.ok("nic add --id cli-upd --mac 52:54:00:00:00:06 --vni 1 --ip 10.0.0.1")
    cli.ok("nic update --id cli-upd --ip 10.0.0.2 --ip 10.0.0.3 --enable-antispoof true")
    details = json.loads(cli.ok("nic details cli-upd --json"))
    assert details["ip"] == ["10.0.0.2", "10.0.0.3"]
    assert details["ip_anti_spoof"] is True
    cli.ok("nic update --id cli-upd --ip ''")
    assert json.loads(cli.ok("nic details cli-upd --json"))["ip"] == []
    assert cli.fails("nic update --id cli-none --ip 10.0.0.1") == (
        "butterfly: nic update: NIC does not exist with id cli-none"
    )


def test_nic_del_of_several_and_of_missing_ones(cli: Cli) -> None:
    cli.ok("nic add --id cli-del1 --mac 52:54:00:00:00:07 --vni 1")
    cli.ok("nic add --id cli-del2 --mac 52:54:00:00:00:08 --vni 1")
    assert cli.ok("nic del cli-del1 cli-del2 cli-never") == ""
    listed = cli.ok("nic list").splitlines()
    assert "cli-del1" not in listed
    assert "cli-del2" not in listed


def test_nic_sg_add_del_set_list(cli: Cli) -> None:
    cli.ok("nic add --id cli-sg --mac 52:54:00:00:00:09 --vni 1 --sg first")
    cli.ok("nic sg add cli-sg second third second")
    assert cli.ok("nic sg list cli-sg") == "first\nsecond\nthird\n"
    cli.ok("nic sg del cli-sg second")
    assert json.loads(cli.ok("nic sg list cli-sg --json")) == ["first", "third"]
    cli.ok("nic sg set cli-sg only")
    assert cli.ok("nic sg list cli-sg") == "only\n"
    cli.ok("nic sg set cli-sg")
    assert cli.ok("nic sg list cli-sg") == ""


def test_nic_sg_del_of_the_last_sg_really_removes_it(cli: Cli) -> None:
    cli.ok("nic add --id cli-last --mac 52:54:00:00:00:0a --vni 1 --sg lonely")
    cli.ok("nic sg del cli-last lonely")
    assert cli.ok("nic sg list cli-last") == ""
    assert json.loads(cli.ok("nic details cli-last --json"))["security_group"] == []


def test_nic_sg_of_a_missing_nic(cli: Cli) -> None:
    assert cli.fails("nic sg add cli-ghost web") == (
        "butterfly: nic sg add: NIC does not exist with id cli-ghost"
    )


# security groups


def test_sg_add_list_del(cli: Cli) -> None:
    cli.ok("sg add cli-sg1 cli-sg2")
    listed = cli.ok("sg list").splitlines()
    assert {"cli-sg1", "cli-sg2"} <= set(listed)
    assert listed == sorted(listed)
    cli.ok("sg del cli-sg1 cli-sg2")
    assert "cli-sg1" not in json.loads(cli.ok("sg list --json"))


def test_sg_rule_add_list_and_del_by_hash(cli: Cli) -> None:
    cli.ok("sg add cli-web")
    cli.ok("sg rule add cli-web --ip-proto tcp --port 80 --cidr 0.0.0.0/0")
    cli.ok("sg rule add cli-web --dir out --ip-proto all --sg-members users")
    cli.ok("sg rule add cli-web --ip-proto udp --port-start 1000 --port-end 2000 --cidr ::/0")
    lines = cli.ok("sg rule list cli-web").splitlines()
    assert [line.split(" | ", 1)[1] for line in lines] == [
        "direction: INBOUND - IP protocol: 6 - port start: 80 - port end: 80 - "
        "cidr: 0.0.0.0/0 - members of sg: Ø",
        "direction: OUTBOUND - IP protocol: -1 - port start: Ø - port end: Ø - "
        "cidr: Ø - members of sg: users",
        "direction: INBOUND - IP protocol: 17 - port start: 1000 - port end: 2000 - "
        "cidr: ::/0 - members of sg: Ø",
    ]
    rules = json.loads(cli.ok("sg rule list cli-web --json"))
    assert [rule["hash"] for rule in rules] == [line.split(" | ")[0] for line in lines]
    cli.ok(f"sg rule del cli-web {rules[1]['hash']}")
    remaining = json.loads(cli.ok("sg rule list cli-web --json"))
    assert [rule["hash"] for rule in remaining] == [rules[0]["hash"], rules[2]["hash"]]
    assert cli.fails("sg rule del cli-web 0123456789abcdef") == (
        "butterfly: sg rule del: no rule found with hash 0123456789abcdef in security group cli-web"
    )


def test_sg_rule_del_by_the_same_options(cli: Cli) -> None:
    cli.ok("sg rule add cli-opts --ip-proto tcp --port 22 --cidr 2001:0db8::8001/8")
    assert "cidr: 2001:db8::8001/8" in cli.ok("sg rule list cli-opts")
    cli.ok("sg rule del cli-opts --ip-proto tcp --port 22 --cidr 2001:0db8::8001/8")
    assert cli.ok("sg rule list cli-opts") == ""


def test_sg_rule_errors(cli: Cli) -> None:
    assert cli.fails("sg rule add cli-err --ip-proto tcp --cidr 0.0.0.0/0") == (
        "butterfly: sg rule add: wrong port configuration: tcp and udp need --port,"
        " or --port-start and --port-end"
    )
    assert cli.fails("sg rule add cli-err --ip-proto tcp --port 1").endswith(
        "you must set --cidr or --sg-members"
    )
    assert cli.fails("sg rule add cli-err --ip-proto all --cidr 10.0.0.300/8").startswith(
        "butterfly: sg rule add: Bad Security Group rule format: "
    )
    assert cli.fails("sg rule list cli-never").startswith(
        "butterfly: sg rule list: Security Group not found"
    )


def test_sg_member_add_list_del_need_no_extra_argument(cli: Cli) -> None:
    cli.ok("sg member add cli-mem 10.0.0.1 2001:0db8::1")
    cli.ok("sg member add cli-mem 10.0.0.2")
    assert cli.ok("sg member list cli-mem") == "10.0.0.1\n2001:db8::1\n10.0.0.2\n"
    cli.ok("sg member del cli-mem 10.0.0.1")
    assert json.loads(cli.ok("sg member list cli-mem --json")) == ["2001:db8::1", "10.0.0.2"]
    assert cli.fails("sg member add cli-mem 10.0.0.256").startswith(
        "butterfly: sg member add: Bad IP format"
    )


# vni peers (our extension)


def test_vni_peer_add_list_del(cli: Cli) -> None:
    cli.ok("vni peer add 4242 192.0.2.1")
    cli.ok("vni peer add 4242 192.0.2.2")
    assert "4242 192.0.2.1\n4242 192.0.2.2\n" in cli.ok("vni peer list")
    assert {"vni": 4242, "peer": ["192.0.2.1", "192.0.2.2"]} in json.loads(
        cli.ok("vni peer list --json")
    )
    cli.ok("vni peer del 4242 192.0.2.1")
    assert "4242 192.0.2.1" not in cli.ok("vni peer list")
    assert cli.fails("vni peer add 16777216 192.0.2.1") == (
        "butterfly: vni peer add: VNI 16777216 is out of range 0-16777215"
    )


# status, help, verbose, chaining


def test_status_prints_the_dot_graph(cli: Cli) -> None:
    lines = cli.ok("status").splitlines()
    assert lines[0].startswith("start date: ")
    assert lines[1].startswith("current date: ")
    assert lines[2].startswith("request counter: ")
    assert lines[3].startswith("start-up reconcile: done in ")
    assert lines[4] == "dot graph: "
    assert lines[5].startswith("digraph")
    status = json.loads(cli.ok("status --json"))
    assert status["graph_dot"].startswith("digraph")
    assert status["reconcile"]["running"] is False
    assert status["request_counter"] > 0


@pytest.mark.needs("dot")
def test_status_svg_renders_with_graphviz(cli: Cli, tmp_path: os.PathLike[str]) -> None:
    svg = os.path.join(tmp_path, "graph.svg")
    cli.ok(f"status --svg {svg}")
    with open(svg, encoding="utf-8") as file:
        assert "<svg" in file.read()


def test_status_svg_without_graphviz_is_a_clear_error(cli: Cli, tmp_path: os.PathLike[str]) -> None:
    svg = os.path.join(tmp_path, "graph.svg")
    result = cli.run(f"status --svg {svg}", env={"PATH": str(tmp_path)})
    assert result.status == 1
    assert result.out.startswith("start date: ")
    assert result.err == (
        f"butterfly: status: --svg {svg}: Graphviz's dot is not installed"
        " (install graphviz to render SVG)\n"
    )
    assert not os.path.exists(svg)


def test_help_word_after_any_subcommand_needs_no_daemon() -> None:
    nowhere = Cli(endpoint=f"tcp://127.0.0.1:{free_port()}", options="-t 100")
    assert nowhere.ok("sg rule add help").startswith("usage: butterfly sg rule add SG ")
    assert nowhere.ok("nic help").startswith("butterfly nic subcommands:\n")
    assert nowhere.ok("help").startswith("usage: butterfly ")
    assert nowhere.ok("nic sg del -h").startswith("usage: butterfly nic sg del NIC SG [SG...]")
    assert nowhere.ok("-V") == "butterfly 0.1.0\n"


def test_verbose_shows_the_messages_on_stderr(cli: Cli) -> None:
    result = cli.run("-v sg list")
    assert result.status == 0
    assert "# Message to be sent:\n" in result.err
    assert "sg_list: true" in result.err
    assert "# Received message:\n" in result.err
    assert "#" not in result.out


def test_plus_chains_commands(cli: Cli) -> None:
    cli.ok(
        "sg add cli-chain + sg rule add cli-chain --ip-proto tcp --port 443 --cidr 0.0.0.0/0"
        " + nic add --id cli-chained --mac 52:54:00:00:00:0b --vni 9 + nic sg add cli-chained"
        " cli-chain"
    )
    assert cli.ok("nic sg list cli-chained") == "cli-chain\n"
    assert cli.ok(
        "nic sg list cli-chained + sg member add cli-chain 10.7.7.7 + sg member list cli-chain"
    ) == ("cli-chain\n10.7.7.7\n")


def test_a_chain_stops_at_the_first_failure(cli: Cli) -> None:
    result = cli.run("sg add cli-stop + nic details cli-missing + sg member add cli-stop 10.9.9.9")
    assert (result.status, result.out) == (1, "")
    assert result.err == "butterfly: nic details: NIC does not exist with id cli-missing\n"
    assert "cli-stop\n" in cli.ok("sg list")
    assert cli.ok("sg member list cli-stop") == ""


def test_a_chain_with_a_syntax_error_sends_nothing(cli: Cli) -> None:
    assert cli.fails("sg add cli-nothing + sg rule add cli-nothing --ip-proto") == (
        "butterfly: sg rule add: --ip-proto needs a value"
    )
    assert "cli-nothing" not in cli.ok("sg list").splitlines()


def test_python_dash_m_runs_the_cli(cli: Cli) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "butterfly", "-e", cli.endpoint, "status", "--json"],
        capture_output=True,
        text=True,
        timeout=_GUARD_S,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert "graph_dot" in json.loads(done.stdout)


# request files


def test_request_sends_a_text_format_file(cli: Cli, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "requests.txt")
    with open(path, "w", encoding="utf-8") as file:
        file.write(
            "messages { revision: 6 message_0 { request { sg_add { id: 'cli-file' } } } }\n"
            "messages { revision: 6 message_0 { request { sg_member_add {"
            " sg_id: 'cli-file' member: '10.1.1.1' } } } }\n"
        )
    assert cli.ok(f"request {path}") == ""
    assert cli.ok("sg member list cli-file") == "10.1.1.1\n"
    reply = cli.ok(f"request {path} --stdout")
    assert reply.count("status: true") == 2


def test_request_fails_when_the_daemon_refuses_one(cli: Cli, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "requests.txt")
    with open(path, "w", encoding="utf-8") as file:
        file.write(
            "messages { revision: 6 message_0 { request { sg_add { id: 'cli-half' } } } }\n"
            "messages { revision: 6 message_0 { request { nic_details: 'cli-ghost' } } }\n"
        )
    assert cli.fails(f"request {path}") == (
        "butterfly: request: message 2 (nic_details): NIC does not exist with id cli-ghost"
    )


def test_request_of_a_bad_file(cli: Cli, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "bad.txt")
    with open(path, "w", encoding="utf-8") as file:
        file.write("messages { nonsense: 1 }\n")
    assert cli.fails(f"request {path}").startswith(f"butterfly: request: {path}: 1:12 : ")
    missing = os.path.join(tmp_path, "missing.txt")
    assert cli.fails(f"request {missing}") == (
        f"butterfly: request: failed to open {missing}: No such file or directory"
    )


# dump and replay, shutdown, unreachable daemons and keys: each needs its own daemon


def test_dump_replays_into_a_fresh_daemon(
    daemon_factory: DaemonFactory, tmp_path: os.PathLike[str]
) -> None:
    source = daemon_factory()
    source.start()
    first = Cli(endpoint=source.endpoint)
    first.ok(
        "sg add web + sg rule add web --ip-proto tcp --port 80 --cidr 0.0.0.0/0"
        " + sg rule add web --dir out --ip-proto all --sg-members users"
        " + sg member add web 10.0.0.1 2001:0db8::1 + sg member add users 10.0.0.9"
        " + nic add --id vnic_1 --mac 52:54:00:12:34:01 --vni 1337 --ip 42.0.0.1 --sg web"
        " --enable-antispoof"
        " + nic add --id vnic_2 --mac 52:54:00:12:34:02 --vni 1337 --type tap --bypass-filtering"
        " + nic add --id vnic_3 --mac 52:54:00:12:34:03 --vni 51 --type netns --path ns3"
        " --packet-trace true --trace-path /tmp/vnic_3.pcap"
        " + vni peer add 1337 192.0.2.7"
    )
    dump = first.ok("dump")
    assert dump.index("sg_add") < dump.index("nic_add") < dump.index("vni_peer_add")
    path = os.path.join(tmp_path, "butterfly.dump")
    with open(path, "w", encoding="utf-8") as file:
        file.write(dump)

    target = daemon_factory()
    target.start()
    second = Cli(endpoint=target.endpoint)
    assert second.ok("dump") == ""
    assert second.ok(f"request {path}") == ""
    assert second.ok("dump") == dump
    assert second.ok("nic sg list vnic_1") == "web\n"


def test_shutdown_stops_the_daemon(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    daemon.start()
    assert Cli(endpoint=daemon.endpoint).ok("shutdown") == ""
    assert daemon.wait_exit() == 0


def test_a_missing_daemon_is_reported_after_the_timeout() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    assert Cli(endpoint=endpoint, options="-t 300").fails("nic list") == (
        f"butterfly: nic list: cannot reach butterflyd at {endpoint} (no answer within 300 ms)"
    )


def test_a_key_file_that_does_not_load_is_an_error(tmp_path: os.PathLike[str]) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    missing = os.path.join(tmp_path, "missing.key")
    assert Cli(endpoint=endpoint, options=f"-k {missing}").fails("nic list") == (
        f"butterfly: nic list: key file {missing}: cannot be read: No such file or directory"
    )
    short = write_key(os.path.join(tmp_path, "short.key"), b"0123456789")
    assert Cli(endpoint=endpoint, options=f"--key {short}").fails("status") == (
        f"butterfly: status: key file {short}: decodes to 10 bytes, an AES-256 key needs 32"
    )


def test_encrypted_daemon_with_and_without_the_key(
    daemon_factory: DaemonFactory, tmp_path: os.PathLike[str]
) -> None:
    key = write_key(os.path.join(tmp_path, "api.key"), os.urandom(32))
    daemon = daemon_factory(key_path=key)
    daemon.start()
    with_key = Cli(endpoint=daemon.endpoint, options=f"-k {key}")
    with_key.ok("sg add secret")
    assert with_key.ok("sg list") == "secret\n"
    assert Cli(endpoint=daemon.endpoint).fails("sg list") == (
        "butterfly: sg list: the daemon refused the request: REJECTED"
        " (the daemon requires a key: give -k/--key)"
    )
    other = write_key(os.path.join(tmp_path, "other.key"), os.urandom(32))
    assert (
        Cli(endpoint=daemon.endpoint, options=f"-k {other}")
        .fails("sg list")
        .startswith("butterfly: sg list: the daemon refused the request: encryption REJECTED")
    )


def test_a_key_for_a_clear_daemon_is_refused(cli: Cli, tmp_path: os.PathLike[str]) -> None:
    key = write_key(os.path.join(tmp_path, "api.key"), os.urandom(32))
    assert Cli(endpoint=cli.endpoint, options=f"-k {key}").fails("sg list") == (
        "butterfly: sg list: the daemon refused the request: REJECTED"
        " (the daemon has no key: drop -k/--key)"
    )
