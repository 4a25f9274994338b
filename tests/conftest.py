"""Fixtures shared by every test tree.

``Daemon`` is a real ``butterflyd --no-dataplane`` on a free loopback port,
with its state file and sockets in a temporary folder (no root needed). The
fixtures stop only the daemons they started, by pid, and remove their
folders. ``client`` is an API client connected to a fresh daemon.

Every conftest.py outside a package is imported as the module ``conftest``,
so test modules import ``Daemon`` and ``DaemonFactory`` for annotations only
(``if TYPE_CHECKING:``); at run time they get them through the fixtures, or
use :class:`butterfly_lab.daemon.DaemonProcess` directly.

What a test needs from the machine it declares with markers: ``root``,
``qemu`` (qemu-system-x86_64) and ``needs("tool", ...)``, the tools named in
:data:`REQUIREMENTS`. :func:`pytest_runtest_setup` is the one place that
checks them: a missing one skips the test, visibly and with how to install it,
except under CI (the ``CI`` environment variable, which .ci/run sets), where it
fails the test, since a skip there would hide a missing install step.
"""

import base64
import functools
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from butterfly.api.client import Client
from butterfly.dataplane import fastpath
from butterfly_lab.bench.frr import frr_available
from butterfly_lab.daemon import DaemonError, DaemonProcess

__all__ = ["Daemon", "DaemonError", "write_key"]


def _tool(name: str) -> Callable[[], bool]:
    return lambda: shutil.which(name) is not None


_SETUP = "or run tools/setup --dev"
REQUIREMENTS: dict[str, tuple[Callable[[], bool], str]] = {
    # name: (whether this machine has it, how to get it)
    "root": (lambda: os.geteuid() == 0, "run the tests as root (namespaces, the real kernel)"),
    "qemu-system-x86_64": (
        _tool("qemu-system-x86_64"),
        f"apt-get install qemu-system-x86, {_SETUP}",
    ),
    "dpdk-testpmd": (_tool("dpdk-testpmd"), f"apt-get install dpdk-dev, {_SETUP}"),
    "iperf3": (_tool("iperf3"), f"apt-get install iperf3, {_SETUP}"),
    "qperf": (_tool("qperf"), f"apt-get install qperf, {_SETUP}"),
    "dot": (_tool("dot"), f"apt-get install graphviz, {_SETUP}"),
    "busybox": (_tool("busybox"), f"apt-get install busybox-static, {_SETUP}"),
    "frr": (frr_available, f"apt-get install frr, {_SETUP}"),
    "ebpf-fast-path": (
        fastpath.OBJECT.exists,
        "tools/build-bpf (tools/setup runs it: clang, bpftool, a kernel with BTF)",
    ),
    "gcc": (_tool("gcc"), f"apt-get install gcc libc6-dev, {_SETUP}"),
}
# A guest's image holds busybox and iperf3 (lab/butterfly_lab/guest.py).
_MARKERS = {"root": ("root",), "qemu": ("qemu-system-x86_64", "busybox", "iperf3")}


@functools.cache
def _missing(name: str) -> str | None:
    """Why this machine lacks ``name``, or None; asked once per run."""
    present, hint = REQUIREMENTS[name]
    return None if present() else f"needs {name}: {hint}"


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, under CI, fail) a test whose declared requirements are missing."""
    names = [name for marker, needed in _MARKERS.items() if item.get_closest_marker(marker)
             for name in needed]  # fmt: skip
    for marker in item.iter_markers("needs"):
        names.extend(marker.args)
    unknown = sorted(set(names) - REQUIREMENTS.keys())
    if unknown:
        pytest.fail(f"unknown requirements {unknown}: add them to REQUIREMENTS", pytrace=False)
    missing = [why for why in map(_missing, dict.fromkeys(names)) if why is not None]
    if not missing:
        return
    if _under_ci():
        pytest.fail("; ".join(missing) + " (CI is set: a missing requirement fails)", pytrace=False)
    pytest.skip("; ".join(missing))


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
