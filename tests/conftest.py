"""Fixtures shared by every test tree.

``Daemon`` is a real ``butterflyd --no-dataplane`` on a free loopback port,
with its state file and sockets in a temporary folder (no root needed). The
fixtures stop only the daemons they started, by pid, and remove their
folders. ``client`` is an API client connected to a fresh daemon.

Every conftest.py outside a package is imported as the module ``conftest``,
so test modules import ``Daemon`` and ``DaemonFactory`` for annotations only
(``if TYPE_CHECKING:``); at run time they get them through the fixtures, or
use :class:`butterfly_lab.daemon.DaemonProcess` directly.
"""

import base64
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from butterfly.api.client import Client
from butterfly_lab.daemon import DaemonError, DaemonProcess

__all__ = ["Daemon", "DaemonError", "write_key"]


class Daemon(DaemonProcess):
    """A test daemon: a :class:`DaemonProcess` that also hands out clients.

    Clients made by :meth:`client` are closed by :meth:`close`.
    """

    def __init__(self, directory: str, **options: Any) -> None:
        super().__init__(directory, **options)
        self._clients: list[Client] = []

    def client(self, *, key: bytes | None = None, timeout_ms: int = 10_000) -> Client:
        client = Client(endpoint=self.endpoint, key=key, timeout_ms=timeout_ms)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        super().close()


def write_key(path: str, key: bytes) -> str:
    """A key file as ``openssl rand -base64 32`` writes it; returns its path."""
    with open(path, "wb") as file:
        file.write(base64.b64encode(key) + b"\n")
    return path


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def daemon_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonFactory]:
    """Makes daemons (not started) in fresh folders; closes them all at the end.

    Keyword arguments go to :class:`Daemon` (key_path, config_path, ...).
    """
    made: list[Daemon] = []

    def make(**options: Any) -> Daemon:
        directory = tmp_path_factory.mktemp("butterflyd")
        daemon = Daemon(str(directory), **options)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()
        shutil.rmtree(daemon.directory, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> Daemon:
    """A started daemon with an empty state."""
    started = daemon_factory()
    started.start()
    return started


@pytest.fixture
def client(daemon: Daemon) -> Client:
    """A clear-text client of the ``daemon`` fixture."""
    return daemon.client()


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[str, bytes]:
    """A fresh valid key file and its key."""
    key = os.urandom(32)
    return write_key(os.path.join(tmp_path, "api.key"), key), key
