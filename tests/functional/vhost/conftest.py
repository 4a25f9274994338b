"""Fixtures for the vhost-user backend's functional tests (root, real taps).

Every tap, netns and socket is named from a run-unique prefix ``bfv<pid>``
and removed in teardown; processes started here are stopped by pid.
"""

import itertools
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from butterfly.vhost import VhostSupervisor, VhostUserServer

from .frontend import Frontend

_SO_RCVBUFFORCE = 33  # linux/asm-generic/socket.h; not in Python's socket module
RUN = f"bfv{os.getpid() % 1000000}"
_names = itertools.count()


def unique(kind: str) -> str:
    """A run-unique kernel name of at most 15 characters."""
    name = f"{RUN}{kind}{next(_names)}"
    assert len(name) <= 15, name
    return name


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def make_tap(name: str, mtu: int = 1500) -> None:
    ip("tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr")
    with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
        f.write("1")
    ip("link", "set", name, "mtu", str(mtu), "up")


def wait_for(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` until true; the timeout only bounds a hung test."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Taps:
    """Taps made by a test, deleted at teardown whatever happened."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, mtu: int = 1500) -> str:
        name = unique("t")
        make_tap(name, mtu)
        self.names.append(name)
        return name

    def close(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


@pytest.fixture
def taps() -> Iterator[Taps]:
    made = Taps()
    yield made
    made.close()


@pytest.fixture(params=["c", "python"])
def vhost_loop(request: pytest.FixtureRequest) -> str:
    """Every test of the backend runs with both loops: the C extension and its
    Python fallback (the C one must be built: no skip when it is missing)."""
    loop: str = request.param
    return loop


@pytest.fixture
def supervisor(vhost_loop: str) -> Iterator[VhostSupervisor]:
    """One worker, so that misbehaving and well-behaved frontends share a process."""
    started = VhostSupervisor(workers=1, loop=vhost_loop)
    assert started.loop == vhost_loop
    started.start()
    yield started
    started.stop()


ServerFactory = Callable[..., VhostUserServer]


@pytest.fixture
def server_factory(
    supervisor: VhostSupervisor, taps: Taps, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    servers: list[VhostUserServer] = []
    directory = tmp_path_factory.mktemp("vhost")

    def make(mtu: int = 1500) -> VhostUserServer:
        vnic = unique("v")
        server = VhostUserServer(
            supervisor=supervisor,
            vnic=vnic,
            socket_path=str(directory / f"qemu-vhost-{vnic}"),
            tap_name=taps(mtu),
        )
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class TapSocket:
    """An AF_PACKET socket on a tap: what the kernel receives from, and sends to, the guest."""

    def __init__(self, tap: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        # Frames come back faster than a test reads them: room for thousands.
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 16 << 20)
        self.sock.bind((tap, 0))
        self.sock.settimeout(10.0)

    def inject(self, frame: bytes) -> None:
        """Transmit on the tap: the frame goes to the guest."""
        self.sock.send(frame)

    def incoming(self) -> bytes:
        """The next frame the guest sent into the kernel."""
        while True:
            data, address = self.sock.recvfrom(65536)
            if address[2] != socket.PACKET_OUTGOING:
                return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tap_socket() -> Iterator[Callable[[str], TapSocket]]:
    made: list[TapSocket] = []

    def make(tap: str) -> TapSocket:
        made.append(TapSocket(tap))
        return made[-1]

    yield make
    for sock in made:
        sock.close()


class PmdProcess:
    """dpdk-testpmd with a virtio-user port on one socket (a frontend nobody here wrote)."""

    def __init__(self, socket_path: str, mode: str, log_path: str, *extra: str) -> None:
        self.log_path = log_path
        self.prefix = unique("p")
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    "dpdk-testpmd",
                    "--no-pci",
                    "--no-huge",
                    "-m",
                    "512",
                    "--file-prefix",
                    self.prefix,
                    "--vdev",
                    f"net_virtio_user0,path={socket_path}",
                    "--",
                    "--total-num-mbufs=8192",
                    f"--forward-mode={mode}",
                    *extra,
                ],
                # testpmd exits at end of input: keep its stdin open until stop().
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Stop it (SIGINT: it prints its statistics first) and return its output."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        subprocess.run(["rm", "-rf", f"/var/run/dpdk/{self.prefix}"], check=False)
        return self.output()


@pytest.fixture
def testpmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., PmdProcess]]:
    started: list[PmdProcess] = []
    directory = tmp_path_factory.mktemp("testpmd")

    def start(socket_path: str, mode: str, *extra: str) -> PmdProcess:
        log_path = str(directory / f"testpmd{len(started)}.log")
        started.append(PmdProcess(socket_path, mode, log_path, *extra))
        return started[-1]

    yield start
    for process in started:
        process.stop(signal.SIGKILL)


def vhost_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "butterfly.vhost" and r.levelno >= logging.WARNING
    ]


@pytest.fixture
def frontend() -> Iterator[Callable[[str], Frontend]]:
    """Connects hand-written frontends; all are closed at teardown."""
    made: list[Frontend] = []

    def connect(path: str) -> Frontend:
        made.append(Frontend(path))
        return made[-1]

    yield connect
    for fe in made:
        fe.close()
