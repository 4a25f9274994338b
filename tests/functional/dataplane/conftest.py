"""Test hypervisors, guests and fabrics in network namespaces, for the kernel data plane.

Everything here is made per test with a run-unique prefix (``bft<pid>``) and
removed in teardown, also on failure: a *fabric* namespace holds a bridge
standing for the physical network; each *host* namespace is a hypervisor
with an underlay veth into the fabric, and runs a :class:`KernelDataplane`
in a thread that entered it (so the test never touches the root
namespace's links or nftables); each *guest* namespace is a NETNS vnic's
container, with an :class:`Agent` process that serves and probes traffic.
Addresses are documentation ranges, only ever inside these namespaces.
"""

import ctypes
import itertools
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from butterfly.dataplane.kernel import KernelDataplane
from butterfly.dataplane.naming import tap_name
from butterfly.model import State, Vnic, VnicType, make_vnic

T = TypeVar("T")

RUN = f"bft{os.getpid() % 100000}"
AGENT = os.path.join(os.path.dirname(__file__), "agent.py")
_serial = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without root these tests cannot run: skip them (this folder's only)."""
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (real kernel, network namespaces)")
        here = os.path.dirname(__file__)
        for item in items:
            if "root" in item.keywords and str(item.path).startswith(here):
                item.add_marker(skip)


def sh(*argv: str, check: bool = True, timeout: float = 30) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


class Netns:
    def __init__(self, role: str) -> None:
        self.name = f"{RUN}{role}{next(_serial)}"
        sh("ip", "netns", "add", self.name)
        self.path = f"/run/netns/{self.name}"
        self.ip("link", "set", "lo", "up")

    def ip(self, *argv: str, check: bool = True) -> str:
        return sh("ip", "-n", self.name, *argv, check=check)

    def exec(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        return sh("ip", "netns", "exec", self.name, *argv, check=check, timeout=timeout)

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


class Agent:
    """The agent process of a guest namespace (killed by pid in teardown)."""

    def __init__(self, netns: Netns) -> None:
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, sys.executable, AGENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read(10)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        if not ready:
            raise AssertionError("the agent did not answer in time")
        answer: dict[str, Any] = json.loads(self._process.stdout.readline())
        return answer

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self._process.stdin.flush()
        return self._read(float(arguments.get("timeout", 5)) + 10)

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()


class Guest(Netns):
    """A NETNS vnic's namespace, with its agent started on first use."""

    def __init__(self) -> None:
        super().__init__("g")
        self._agent: Agent | None = None

    @property
    def agent(self) -> Agent:
        if self._agent is None:
            self._agent = Agent(self)
        return self._agent

    def listen(self, proto: str, port: int, family: int = 4) -> None:
        assert self.agent.call("listen", proto=proto, port=port, family=family)["ok"]

    def reaches(self, proto: str, host: str, port: int = 0, *, tries: int = 5) -> bool:
        """True once a probe gets through (ARP/ND may need a first try)."""
        return any(self.probe(proto, host, port, timeout=1.0) for _ in range(tries))

    def probe(self, proto: str, host: str, port: int = 0, *, timeout: float = 0.5) -> bool:
        """One probe: TCP connect + echo, UDP echo, or ICMP echo ("icmp")."""
        return bool(self._probe(proto, host, port, timeout)["ok"])

    def blocked(self, proto: str, host: str, port: int = 0, *, timeout: float = 0.5) -> bool:
        """True when a probe gets no answer at all (a refusal is an answer)."""
        answer = self._probe(proto, host, port, timeout)
        return not answer["ok"] and any(
            word in answer["error"] for word in ("timed out", "no echo reply")
        )

    def _probe(self, proto: str, host: str, port: int, timeout: float) -> dict[str, Any]:
        if proto == "icmp":
            return self.agent.call("icmp", host=host, timeout=timeout)
        return self.agent.call("connect", proto=proto, host=host, port=port, timeout=timeout)

    def close(self) -> None:
        if self._agent is not None:
            self._agent.close()
        self.delete()


def _enter(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


class Dataplane:
    """A KernelDataplane living in a host's thread: every call runs there."""

    def __init__(self, host: "Host", **options: Any) -> None:
        self.host = host
        self._impl: KernelDataplane = host.run(
            lambda: KernelDataplane(socket_dir=host.socket_dir, **options)
        )

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._impl, name)
        return lambda *args, **kwargs: self.host.run(lambda: method(*args, **kwargs))


class Host(Netns):
    """A hypervisor namespace with an underlay into the fabric."""

    def __init__(self, fabric: Netns, index: int, *, v6: bool) -> None:
        super().__init__("h")
        self.underlay = f"tu{next(_serial)}"
        bridge_port = f"{self.underlay}f"
        self.address = f"2001:db8:ff::{index}" if v6 else f"198.51.100.{index}"
        sh(
            "ip",
            "link",
            "add",
            self.underlay,
            "netns",
            self.name,
            "type",
            "veth",
            "peer",
            "name",
            bridge_port,
            "netns",
            fabric.name,
        )
        fabric.ip("link", "set", bridge_port, "master", "fab", "up")
        prefix = 64 if v6 else 24
        self.ip(
            "addr",
            "add",
            f"{self.address}/{prefix}",
            "dev",
            self.underlay,
            *(["nodad"] if v6 else []),
        )
        self.ip("link", "set", self.underlay, "up")
        self.socket_dir = tempfile.mkdtemp(prefix=f"{RUN}-")
        self._pool = ThreadPoolExecutor(1, initializer=_enter, initargs=(self.path,))
        self.dataplanes: list[Dataplane] = []

    def run(self, work: Callable[[], T]) -> T:
        return self._pool.submit(work).result(timeout=120)

    def dataplane(self, **options: Any) -> Dataplane:
        options.setdefault("underlay_ip", self.address)
        dataplane = Dataplane(self, **options)
        self.dataplanes.append(dataplane)
        return dataplane

    def close(self) -> None:
        for dataplane in self.dataplanes:
            try:
                dataplane.cleanup()
            finally:
                dataplane.close()
        self._pool.shutdown()
        self.delete()
        sh("rm", "-rf", self.socket_dir)


class Lab:
    """What one test made: closed in reverse order, also when the test fails."""

    def __init__(self) -> None:
        self._fabric: Netns | None = None
        self._made: list[Host | Guest | Netns] = []

    def host(self, *, v6: bool = False) -> Host:
        if self._fabric is None:
            self._fabric = Netns("f")
            self._made.append(self._fabric)
            self._fabric.ip("link", "add", "fab", "type", "bridge", "mcast_snooping", "0")
            self._fabric.ip("link", "set", "fab", "up")
        hosts = sum(isinstance(made, Host) for made in self._made)
        host = Host(self._fabric, hosts + 1, v6=v6)
        self._made.append(host)
        return host

    def guest(self) -> Guest:
        guest = Guest()
        self._made.append(guest)
        return guest

    def close(self) -> None:
        for made in reversed(self._made):
            if isinstance(made, Host | Guest):
                made.close()
            else:
                made.delete()


@pytest.fixture
def lab() -> Iterator[Lab]:
    made = Lab()
    try:
        yield made
    finally:
        made.close()


def netns_vnic(
    vnic_id: str, guest: Guest, mac: str, ips: tuple[str, ...], vni: int = 42, **fields: Any
) -> Vnic:
    return make_vnic(
        Vnic(id=vnic_id, mac=mac, vni=vni, ips=ips, type=VnicType.NETNS, netns=guest.name, **fields)
    )


def plug(dataplane: Dataplane, state: State, vnic: Vnic) -> None:
    """A nic_add as the service does it: state first, then the data plane."""
    replaced = state.put_vnic(vnic)
    dataplane.plug(vnic, replaced, state)


def link_index(netns: Netns, vnic_id: str) -> int:
    shown = json.loads(netns.ip("-j", "link", "show", tap_name(vnic_id)))
    return int(shown[0]["ifindex"])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
