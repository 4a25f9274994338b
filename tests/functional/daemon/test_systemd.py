"""butterflyd as a systemd notify service: the unit, readiness, status, watchdog, reload.

A real ``NOTIFY_SOCKET`` listener (what systemd binds) records what a real
daemon sends; the unit file goes through ``systemd-analyze verify``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import zmq

from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages
from butterfly.api.server import ApiServer
from butterfly.daemon.systemd import Notifier

if TYPE_CHECKING:
    from conftest import Daemon, DaemonFactory


class Listener:
    """What systemd does with NOTIFY_SOCKET: bind it, read datagrams (with their time)."""

    def __init__(self, address: str) -> None:
        self.name = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self._socket.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def wait(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 15, since: float = 0
    ) -> float:
        """When the first message matching ``predicate`` arrived (from ``since`` on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, fields in list(self.messages):
                if when >= since and predicate(fields):
                    return when
            time.sleep(0.01)
        raise AssertionError(f"no such message in {timeout} s: {self.messages}")

    def kicks(self) -> list[float]:
        return [when for when, fields in self.messages if fields.get("WATCHDOG") == "1"]

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self._socket.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    name = str(tmp_path / "notify") if request.param == "path" else f"@bftest-{uuid.uuid4()}"
    made = Listener(name)
    yield made
    made.close()


def _unit_text() -> str:
    return resources.files("butterfly.daemon").joinpath("data/butterflyd.service").read_text()


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """As shipped, but for ExecStart's /usr/bin/butterflyd (the package's path),
    pointed at this environment's (verify checks that the program exists)."""
    unit = _unit_text()
    assert "ExecStart=/usr/bin/butterflyd " in unit
    here = shutil.which("butterflyd", path=os.path.dirname(sys.executable))
    assert here is not None
    (tmp_path / "butterflyd.service").write_text(
        unit.replace("ExecStart=/usr/bin/butterflyd ", f"ExecStart={here} ")
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "butterflyd.service")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_a_bad_unit_is_caught_by_the_same_check(tmp_path: Path) -> None:
    """The positive control: verify does complain about a broken line."""
    (tmp_path / "butterflyd.service").write_text(
        _unit_text().replace("WatchdogSec=30", "WatchdogSec=thirty")
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "butterflyd.service")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert "WatchdogSec" in done.stderr or "sec value" in done.stderr


def test_unit_hardening_keeps_only_the_capabilities_it_needs() -> None:
    lines = dict(
        line.split("=", 1) for line in _unit_text().splitlines() if "=" in line and line[0] != "#"
    )
    wanted = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"}
    assert set(lines["CapabilityBoundingSet"].split()) == wanted
    assert set(lines["AmbientCapabilities"].split()) == wanted
    assert lines["Type"] == "notify"
    assert lines["Restart"] == "on-failure"
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"


def _ping(endpoint: str) -> bool:
    """Whether the daemon answers a frame within a second."""
    context = zmq.Context.instance()
    with context.socket(zmq.REQ) as probe:
        probe.setsockopt(zmq.LINGER, 0)
        probe.connect(endpoint)
        probe.send(b"")
        return bool(probe.poll(1000))


def test_ready_comes_once_the_api_answers_with_status_on_the_way(
    listener: Listener, daemon_factory: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    daemon = daemon_factory()
    daemon.spawn()
    listener.wait(lambda fields: fields.get("READY") == "1")
    assert _ping(daemon.endpoint)
    statuses = [fields.get("STATUS", "") for _, fields in listener.messages]
    assert statuses[0] == "loading the state"
    assert statuses[1] == "reconciling the kernel with 0 vnics"
    assert statuses[2].startswith(f"serving on {daemon.endpoint}: 0 vnics")
    assert listener.messages[2][1]["READY"] == "1"
    assert not listener.kicks()  # no watchdog asked for, none sent
    assert daemon.stop() == 0
    listener.wait(lambda fields: fields.get("STOPPING") == "1")


def test_the_watchdog_is_kicked_every_half_period_while_the_loop_turns(
    listener: Listener, daemon_factory: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    daemon = daemon_factory()
    daemon.start()
    started = listener.wait(lambda fields: fields.get("READY") == "1")
    time.sleep(2.5)
    kicks = [when for when in listener.kicks() if when > started]
    assert len(kicks) >= 6
    gaps = [later - earlier for earlier, later in zip([started, *kicks], kicks, strict=False)]
    assert max(gaps) < 0.6, gaps  # never a missed period
    # A stopped process (SIGSTOP) kicks no more: systemd would kill it.
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        time.sleep(0.3)
        count = len(listener.kicks())
        time.sleep(1.5)
        assert len(listener.kicks()) == count
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    listener.wait(lambda fields: len(listener.kicks()) > count)


def test_a_hung_main_loop_misses_the_watchdog(listener: Listener, tmp_path: Path) -> None:
    """The kick comes from the API's loop itself: while a request hangs in the
    daemon's main thread, no kick goes out, though the process runs on."""
    environ = {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "400000"}
    notifier = Notifier(environ)
    assert environ == {}  # removed once read
    assert notifier.watchdog_interval == pytest.approx(0.2)
    release = threading.Event()
    endpoint = f"ipc://{tmp_path}/api.sock"

    def answer(message: MessageV0) -> MessageV0:
        if message.request.WhichOneof("request") == "app_quit":
            server.stop_after_reply()
        else:
            release.wait(10)  # the hung request
        return MessageV0()

    server = ApiServer(endpoint=endpoint, key=None, answer=answer)
    notifier.ready("test")
    loop = threading.Thread(
        target=server.serve,
        kwargs={"tick": notifier.tick, "tick_every": notifier.watchdog_interval},
    )
    loop.start()
    client = zmq.Context.instance().socket(zmq.REQ)
    try:
        time.sleep(1)
        assert len(listener.kicks()) >= 4  # turning: kicked
        client.connect(endpoint)
        client.send(_frame(MessageV0.Request(nic_list=True)))
        time.sleep(0.3)
        hung_at = len(listener.kicks())
        time.sleep(1.5)  # more than three watchdog periods
        assert len(listener.kicks()) == hung_at, "kicked while the main loop hung"
        assert loop.is_alive()
        release.set()
        client.recv()
        listener.wait(lambda fields: len(listener.kicks()) > hung_at, timeout=2)
        client.send(_frame(MessageV0.Request(app_quit=True)))
        client.recv()
    finally:
        release.set()
        loop.join(10)
        client.close(linger=0)
        server.close()
        notifier.close()


def _frame(request: MessageV0.Request) -> bytes:
    envelope = Messages()
    envelope.messages.add(revision=REVISION).message_0.request.CopyFrom(request)
    return envelope.SerializeToString()


def test_sighup_reads_the_log_level_again_and_serving_goes_on(
    listener: Listener,
    daemon_factory: DaemonFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    ini = tmp_path / "butterflyd.ini"
    ini.write_text("[general]\nlog-level = info\n")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    daemon = daemon_factory(config_path=str(ini))
    daemon.start()
    request = MessageV0.Request()
    request.nic_add.id, request.nic_add.mac, request.nic_add.vni = "v", "52:54:00:00:00:01", 1
    assert daemon.client().call(request).response.status.status
    ini.write_text("[general]\nlog-level = debug\n")
    os.kill(daemon.pid, signal.SIGHUP)
    reloading = listener.wait(lambda fields: fields.get("RELOADING") == "1")
    listener.wait(lambda fields: fields.get("READY") == "1", since=reloading)
    status = [f["STATUS"] for when, f in listener.messages if when >= reloading and "STATUS" in f]
    assert status[-1].startswith(f"serving on {daemon.endpoint}: 1 vnics")  # as it is now
    assert _ping(daemon.endpoint)
    _wait_log(daemon, "log level set to debug")
    # A file that no longer reads leaves the level as it was, and the daemon up.
    ini.write_text("[general]\nlog-level = chatty\n")
    os.kill(daemon.pid, signal.SIGHUP)
    _wait_log(daemon, "reload: ")
    assert "log-level 'chatty'" in daemon.log()
    assert _ping(daemon.endpoint)
    assert daemon.alive()
    assert daemon.stop() == 0


def _wait_log(daemon: Daemon, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
