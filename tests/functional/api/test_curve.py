"""CurveZMQ on the API, with real pyzmq clients against a real daemon.

Allowed clients are answered; an unknown client, a client with the wrong
server key and a clear-text client get nothing, and the daemon does no work
for them (its request counter does not move). A captured session replayed
byte for byte does nothing either; the same replay against a clear-text
daemon re-applies the request (the positive control: the attack is real).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from api_helpers import nic

from butterfly.api.client import Client
from butterfly.api.curve import CurveClient, generate, load_key_pair, load_public_key
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.errors import ClientError
from butterfly_lab.daemon import free_port

if TYPE_CHECKING:
    from conftest import Daemon, DaemonFactory


class Keys:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.allowed = folder / "allowed"
        self.allowed.mkdir()
        for name in ("server", "other_server", "alice", "mallory"):
            generate(str(folder), name)
        (self.allowed / "alice.key").write_bytes((folder / "alice.key").read_bytes())

    def client(self, endpoint: str, name: str, server: str = "server") -> Client:
        curve = CurveClient(
            load_public_key(str(self.folder / f"{server}.key")),
            load_key_pair(str(self.folder / f"{name}.key_secret")),
        )
        return Client(endpoint=endpoint, timeout_ms=1500, curve=curve)

    def daemon_args(self) -> list[str]:
        return [
            "--curve-secret-key", str(self.folder / "server.key_secret"),
            "--curve-allowed-clients", str(self.allowed),
        ]  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def curve_daemon(daemon_factory: DaemonFactory, keys: Keys) -> Daemon:
    started = daemon_factory(extra_args=keys.daemon_args())
    # wait_ready's probe is a clear-text client, which this daemon never answers
    started.spawn(port=free_port())
    with keys.client(started.endpoint, "alice") as alice:
        deadline = time.monotonic() + 15
        while True:
            try:
                alice.call(MessageV0.Request(app_status=True))
                break
            except ClientError:
                assert time.monotonic() < deadline, started.log()
    return started


def _answered(client: Client) -> int:
    """How many requests the daemon answered so far (app_status counts itself)."""
    return int(client.call(MessageV0.Request(app_status=True)).response.app_status.request_counter)


def _nic_ids(client: Client) -> list[str]:
    return list(client.call(MessageV0.Request(nic_list=True)).response.nic_list)


def test_an_allowed_client_is_answered(curve_daemon: Daemon, keys: Keys) -> None:
    with keys.client(curve_daemon.endpoint, "alice") as alice:
        response = alice.call(MessageV0.Request(nic_add=nic("vnic-c1"))).response
        assert response.status.status
        assert _nic_ids(alice) == ["vnic-c1"]


@pytest.mark.parametrize("who", ["unknown client key", "wrong server key", "clear text"])
def test_refused_clients_get_nothing_and_cost_no_work(
    curve_daemon: Daemon, keys: Keys, who: str
) -> None:
    with keys.client(curve_daemon.endpoint, "alice") as alice:
        before = _answered(alice)
        if who == "unknown client key":
            intruder = keys.client(curve_daemon.endpoint, "mallory")
        elif who == "wrong server key":
            intruder = keys.client(curve_daemon.endpoint, "alice", server="other_server")
        else:
            intruder = Client(endpoint=curve_daemon.endpoint, timeout_ms=1500)
        with intruder, pytest.raises(ClientError, match="no answer"):
            intruder.call(MessageV0.Request(nic_add=nic("vnic-evil")))
        assert _answered(alice) == before + 1  # only this app_status itself
        assert _nic_ids(alice) == []
    assert curve_daemon.alive()


def test_a_key_added_to_the_folder_is_let_in_after_sighup(curve_daemon: Daemon, keys: Keys) -> None:
    with keys.client(curve_daemon.endpoint, "mallory") as mallory, pytest.raises(ClientError):
        mallory.call(MessageV0.Request(nic_list=True))
    (keys.allowed / "mallory.key").write_bytes((keys.folder / "mallory.key").read_bytes())
    os.kill(curve_daemon.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "log level set to" not in curve_daemon.log():
        assert time.monotonic() < deadline, curve_daemon.log()
        time.sleep(0.05)
    with keys.client(curve_daemon.endpoint, "mallory") as mallory:
        assert mallory.call(MessageV0.Request(nic_list=True)).response.status.status


class Recorder:
    """A TCP relay in front of the daemon that records what the client sends."""

    def __init__(self, upstream_port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._upstream_port = upstream_port
        self.sent = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
        with client, upstream, selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self._stop.is_set():
                for key, _ in selector.select(0.1):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    if key.fileobj is client:
                        self.sent += data
                    key.data.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def _replay(port: int, recorded: bytes) -> None:
    """The captured bytes on a new connection, as an attacker would send them: in
    the steps of ZMTP's greeting (libzmq reads its signature, then the rest of the
    64-byte greeting, before the handshake)."""
    with socket.create_connection(("127.0.0.1", port)) as attacker:
        for start, end in ((0, 10), (10, 64), (64, len(recorded))):
            attacker.sendall(recorded[start:end])
            time.sleep(0.2)
        attacker.settimeout(0.5)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                if not attacker.recv(65536):
                    break
            except TimeoutError:
                continue


@pytest.fixture
def recorder_factory() -> Iterator[list[Recorder]]:
    made: list[Recorder] = []
    yield made
    for recorder in made:
        recorder.close()


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "clear-text-control"])
def test_a_replayed_capture_does_nothing(
    daemon_factory: DaemonFactory, keys: Keys, curve: bool, recorder_factory: list[Recorder]
) -> None:
    port = free_port()
    daemon = daemon_factory(extra_args=keys.daemon_args() if curve else [])
    daemon.spawn(port=port)

    def client(endpoint: str) -> Client:
        if curve:
            return keys.client(endpoint, "alice")
        return Client(endpoint=endpoint, timeout_ms=1500)

    with client(daemon.endpoint) as direct:
        deadline = time.monotonic() + 15
        while True:
            try:
                _answered(direct)
                break
            except ClientError:
                assert time.monotonic() < deadline, daemon.log()
        recorder = Recorder(port)
        recorder_factory.append(recorder)
        with client(f"tcp://127.0.0.1:{recorder.port}") as relayed:
            assert relayed.call(MessageV0.Request(nic_add=nic("vnic-r"))).response.status.status
        captured = bytes(recorder.sent)
        assert (b"vnic-r" in captured) is not curve  # clear text shows it; CurveZMQ hides it
        assert direct.call(MessageV0.Request(nic_del="vnic-r")).response.status.status
        before = _answered(direct)
        _replay(port, captured)
        replayed = _nic_ids(direct)
        if curve:
            assert replayed == []
            assert _answered(direct) == before + 2  # nic_list and this app_status only
        else:  # the positive control: the same bytes re-add the vnic in clear text
            assert replayed == ["vnic-r"]
