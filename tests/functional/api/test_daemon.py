"""The daemon's life: persistence across a crash, bad state files, signals, config."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
from typing import TYPE_CHECKING

import pytest
from api_helpers import Sg, dump, nic, ok, rule

from butterfly.api.client import Client
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.errors import ClientError
from butterfly_lab.daemon import free_port

if TYPE_CHECKING:
    from conftest import Daemon, DaemonFactory


def _build_state(client: Client) -> None:
    for index in range(20):
        ok(
            client,
            nic_add=nic(
                f"vnic-{index:02}",
                mac=f"52:54:00:00:01:{index:02x}",
                vni=index % 3,
                ips=(f"10.0.{index}.1", f"2001:db8::{index:x}"),
                sgs=(f"sg-{index % 4}",),
                ip_anti_spoof=index % 2 == 0,
                type=MessageV0.Nic.TAP if index % 5 == 0 else MessageV0.Nic.VHOST_USER_SERVER,
            ),
        )
    for index in range(4):
        ok(
            client,
            sg_add=Sg(
                id=f"sg-{index}",
                member=[f"10.{index}.0.{m}" for m in (5, 3, 9)],
                rule=[rule(protocol=6, ports=(22, 22 + index), cidr=("2001:0db8::8001", 8))],
            ),
        )
    for member in ("10.9.9.9", "10.1.1.1", "2001:db8::99"):
        ok(client, sg_member_add=MessageV0.SgMemberAddReq(sg_id="sg-1", member=member))
    ok(client, sg_rule_add=MessageV0.SgRuleAddReq(sg_id="sg-1", rule=rule(sg="sg-2")))
    ok(client, sg_member_del=MessageV0.SgMemberDelReq(sg_id="sg-0", member="10.0.0.3"))
    ok(client, nic_del="vnic-07")
    ok(client, nic_update=MessageV0.NicUpdateReq(id="vnic-08", ip=[""], packet_trace=True))
    ok(client, vni_peer_add=MessageV0.VniPeerReq(vni=1, peer="192.0.2.7"))
    ok(client, vni_peer_add=MessageV0.VniPeerReq(vni=1, peer="192.0.2.3"))


def test_state_survives_kill_9(daemon: Daemon, client: Client) -> None:
    _build_state(client)
    before = dump(client)
    daemon.kill()
    daemon.restart()
    assert dump(client) == before
    # and it keeps working on the restored state
    ok(client, sg_member_add=MessageV0.SgMemberAddReq(sg_id="sg-1", member="10.7.7.7"))
    members = ok(client, sg_member_list="sg-1").sg_member_list
    assert list(members)[-1] == "10.7.7.7"
    after = dump(client)
    daemon.kill()
    daemon.restart()
    assert dump(client) == after


def test_state_survives_sigterm_which_exits_0(daemon: Daemon, client: Client) -> None:
    _build_state(client)
    before = dump(client)
    assert daemon.stop() == 0
    assert "stopped" in daemon.log()
    daemon.restart()
    assert dump(client) == before


def test_sigint_stops_cleanly_too(daemon: Daemon) -> None:
    os.kill(daemon.pid, signal.SIGINT)
    assert daemon.wait_exit(timeout=10) == 0


def _sha256(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def _start_fails(daemon: Daemon) -> str:
    daemon.spawn()
    code = daemon.wait_exit(timeout=15)
    log = daemon.log()
    assert code != 0, log
    assert "Traceback" not in log, log
    return log


def test_corrupt_state_file_stops_the_daemon_and_is_kept(daemon: Daemon, client: Client) -> None:
    _build_state(client)
    assert daemon.stop() == 0
    with open(daemon.state_path, "rb") as file:
        data = bytearray(file.read())
    assert len(data) > 3 * 4096
    for page in range(1, len(data) // 4096):  # every b-tree page header
        data[page * 4096 : page * 4096 + 8] = b"\xff" * 8
    with open(daemon.state_path, "wb") as file:
        file.write(data)
    digest = _sha256(daemon.state_path)
    log = _start_fails(daemon)
    assert f"state file {daemon.state_path}" in log, log
    assert "malformed" in log or "corrupt" in log, log
    assert _sha256(daemon.state_path) == digest


def test_non_sqlite_state_file_stops_the_daemon_and_is_kept(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    with open(daemon.state_path, "w", encoding="utf-8") as file:
        file.write("these are somebody's notes, not a database\n" * 100)
    digest = _sha256(daemon.state_path)
    log = _start_fails(daemon)
    assert f"state file {daemon.state_path}" in log and "not a database" in log, log
    assert _sha256(daemon.state_path) == digest


def test_foreign_sqlite_state_file_stops_the_daemon_and_is_kept(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory()
    db = sqlite3.connect(daemon.state_path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO invoices VALUES (1, 9.5)")
    db.commit()
    db.close()
    digest = _sha256(daemon.state_path)
    log = _start_fails(daemon)
    assert "not butterfly's state" in log, log
    assert _sha256(daemon.state_path) == digest
    assert sorted(os.listdir(daemon.directory)) == ["butterflyd.log", "state.db"]


def test_truncated_state_file_stops_the_daemon(daemon: Daemon, client: Client) -> None:
    _build_state(client)
    assert daemon.stop() == 0
    size = os.path.getsize(daemon.state_path)
    with open(daemon.state_path, "r+b") as file:
        file.truncate(size // 2)
    digest = _sha256(daemon.state_path)
    log = _start_fails(daemon)
    assert f"state file {daemon.state_path}" in log, log
    assert _sha256(daemon.state_path) == digest


def _write(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    return path


def test_config_file_overrides_the_command_line(
    daemon_factory: DaemonFactory, tmp_path: os.PathLike[str]
) -> None:
    config_port = free_port()
    config_state = os.path.join(tmp_path, "from-config.db")
    config = _write(
        os.path.join(tmp_path, "butterfly.ini"),
        "[general]\n"
        f"endpoint = tcp://127.0.0.1:{config_port}\n"
        f"state = {config_state}\n"
        "log-level = debug\n",
    )
    daemon = daemon_factory(config_path=config, log_level="error")
    daemon.spawn()
    command_line_port = daemon.port
    daemon.port = config_port
    daemon.wait_ready()
    client = daemon.client()
    ok(client, nic_add=nic("n"))
    assert os.path.exists(config_state)
    assert not os.path.exists(daemon.state_path)  # the command line's --state
    assert " INFO " in daemon.log()  # log-level debug won over -l error
    daemon.port = command_line_port
    with pytest.raises(ClientError):
        daemon.client(timeout_ms=300).call(MessageV0.Request(nic_list=True))
    daemon.port = config_port
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[general]\nlog-level = loud\n", "log-level 'loud'"),
        ("[general]\ncolour = blue\n", "unknown option 'colour'"),
        ("[elsewhere]\n", "unknown section [elsewhere]"),
        ("not an ini file\n", "config file"),
        ("[general]\nnic-mtu = big\n", "nic-mtu 'big'"),
    ],
    ids=["level", "option", "section", "syntax", "mtu"],
)
def test_bad_config_file_stops_the_daemon(
    daemon_factory: DaemonFactory, tmp_path: os.PathLike[str], text: str, message: str
) -> None:
    config = _write(os.path.join(tmp_path, "bad.ini"), text)
    daemon = daemon_factory(config_path=config)
    daemon.spawn()
    assert daemon.wait_exit(timeout=15) == 1
    log = daemon.log()
    assert message in log and config in log, log


def test_missing_config_file_stops_the_daemon(
    daemon_factory: DaemonFactory, tmp_path: os.PathLike[str]
) -> None:
    missing = os.path.join(tmp_path, "missing.ini")
    daemon = daemon_factory(config_path=missing)
    daemon.spawn()
    assert daemon.wait_exit(timeout=15) == 1
    assert f"config file {missing}: cannot be read" in daemon.log()


def test_endpoint_in_use_stops_the_second_daemon(
    daemon: Daemon, daemon_factory: DaemonFactory
) -> None:
    second = daemon_factory()
    second.spawn(port=daemon.port)
    assert second.wait_exit(timeout=15) == 1
    assert "cannot listen on endpoint" in second.log()
    ok(daemon.client(), nic_list=True)  # the first one is untouched


def _niceness(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


def test_every_thread_of_the_daemon_runs_at_its_niceness(daemon_factory: DaemonFactory) -> None:
    """Set before the first thread starts: a Linux thread's niceness is its own."""
    daemon = daemon_factory(extra_args=["--nice", "7"])
    daemon.start()
    ok(daemon.client(), nic_list=True)
    threads = [int(tid) for tid in os.listdir(f"/proc/{daemon.pid}/task")]
    assert len(threads) > 1
    assert {tid: _niceness(daemon.pid, tid) for tid in threads} == dict.fromkeys(threads, 7)


def test_sigusr2_logs_the_largest_allocation_sites_with_debug_memory(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory(extra_args=["--debug-memory"])
    daemon.start()
    client = daemon.client()
    _build_state(client)
    os.kill(daemon.pid, signal.SIGUSR2)
    # The report is written before the next request is answered: same thread.
    assert ok(client, app_status=True).status.status
    log = daemon.log()
    assert "memory debugging on" in log, log
    sites = log.split("largest allocation sites:", 2)[-1]
    assert re.search(r"KB in \d+ blocks at butterfly/\S+\.py:\d+", sites), log
    assert "grew most since the last report" in log, log
    assert daemon.alive()


def test_sigusr2_without_debug_memory_says_how_and_does_not_stop(daemon: Daemon) -> None:
    os.kill(daemon.pid, signal.SIGUSR2)
    assert ok(daemon.client(), app_status=True).status.status
    assert "memory debugging is off (start butterflyd with --debug-memory)" in daemon.log()
    assert daemon.alive()
