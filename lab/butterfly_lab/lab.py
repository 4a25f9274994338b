"""A switch lab in network namespaces: hypervisor hosts running real butterflyd, VMs, a fabric.

This module owns the lab's kernel objects and processes, and nothing else:

* a *fabric* namespace holds a bridge (``fab``, multicast snooping off) that
  stands for the physical network;
* each :class:`Host` is a namespace with a veth underlay into the fabric,
  holding ``198.51.100.N/24`` and ``2001:db8:ffff::N/64`` (documentation
  ranges, only ever inside the lab), and normally a real ``butterflyd``
  (:class:`~butterfly_lab.daemon.DaemonProcess`) started inside it with
  the kernel data plane, its state and an ``ipc://`` API socket in the
  host's own folder;
* each :class:`Vm` is a namespace handed to a NETNS vnic (``--type netns
  --path NAME``): the daemon moves the vnic's inside end there. A VM runs
  commands (``ping``, ``iperf3``...) and an :class:`Agent` process that
  serves and probes TCP, UDP and ICMP and sends raw frames.

Names: every namespace is ``<prefix><role><n>`` where the prefix is
``bfl<pid>`` (``bfl`` + at most 7 digits, so names stay within 15
characters), and every file lives under ``/tmp/bfl<pid>``. The lab
removes all of it in :meth:`Lab.close`, also after a failure: processes
it started are killed by pid, then the namespaces are deleted (which takes
every link and nftables table in them along). :func:`reap_stale` removes
what a run killed before its clean-up left behind (its pid is gone).

Typical use::

    with Lab() as lab:
        h1, h2 = lab.hosts(2)                     # two butterflyd, started in parallel
        a, b = lab.vm(), lab.vm()
        h1.add_vnic("a", vm=a, mac="52:54:00:00:00:01", vni=42, ips=["10.0.0.1"],
                    bypass_filtering=True)
        h2.add_vnic("b", vm=b, mac="52:54:00:00:00:02", vni=42, ips=["10.0.0.2"],
                    bypass_filtering=True)
        assert a.ping("10.0.0.2").received == 3
        b.listen("tcp", 80); assert a.reaches("tcp", "10.0.0.2", 80)
        h1.cli("sg", "add", "web")                # the butterfly CLI against h1

Nothing here is imported by the daemon; the lab drives butterfly only from
outside (processes, the API client, the CLI) except :meth:`Netns.run`,
which runs a function in a thread inside a namespace for in-process tests.
"""

import glob
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from pyroute2.netns import setns

from butterfly.api.client import Client
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import DYNAMIC_PREFIX, PREFIX, trace_pidfiles
from butterfly_lab import agent as _agent_module
from butterfly_lab.daemon import DaemonError, DaemonProcess, butterflyd_command

__all__ = [
    "FABRIC_BRIDGE",
    "UNDERLAY_V4",
    "UNDERLAY_V6",
    "Agent",
    "Fabric",
    "Host",
    "Lab",
    "LabError",
    "Netns",
    "PingResult",
    "Vm",
    "butterfly_cli",
    "comparable_ruleset",
    "kernel_snapshot",
    "parse_ping",
    "reap_stale",
    "sh",
    "wait_for",
]

T = TypeVar("T")

UNDERLAY_V4 = "198.51.100.{}"
"""Host N's underlay IPv4 address (in a /24); never 192.0.2.0/24, the machine's own."""
UNDERLAY_V6 = "2001:db8:ffff::{}"
"""Host N's underlay IPv6 address (in a /64)."""
FABRIC_BRIDGE = "fab"
PREFIX_BASE = "bfl"
_WORK_ROOT = "/tmp"
_serial = itertools.count()


class LabError(Exception):
    """A lab command failed, or something did not happen in time."""


# --------------------------------------------------------------------------- helpers


def sh(*argv: str, check: bool = True, timeout: float = 30, input: str | None = None) -> str:
    """Run a command, return its stdout; LabError (with stderr) when it fails and ``check``."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, input=input
        )
    except subprocess.TimeoutExpired as error:
        raise LabError(f"{' '.join(argv)}: no exit in {timeout} s") from error
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll ``condition`` until true; LabError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LabError(f"timed out waiting for {what}")
        time.sleep(0.05)


def butterfly_cli() -> list[str]:
    """The installed ``butterfly`` command beside this Python, else ``python -m``."""
    script = os.path.join(os.path.dirname(sys.executable), "butterfly")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "butterfly.cli"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _enter(path: str) -> None:
    """setns(2) the calling thread into the network namespace at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd, flags=0)
    except OSError as exc:
        raise OSError(exc.errno, f"setns {path}: {os.strerror(exc.errno or 0)}") from exc
    finally:
        os.close(fd)


def reap_stale(prefix_base: str = PREFIX_BASE, work_root: str = _WORK_ROOT) -> list[str]:
    """Remove what labs of dead runs left: their daemons, namespaces and folders.

    A leftover is stale only when the pid in its name is gone. A daemon is
    killed only if its pid file's process still names that run's folder on
    its command line (pids get recycled). Returns what was removed.
    """
    removed: list[str] = []
    pattern = re.compile(rf"{re.escape(prefix_base)}(\d+)")
    for entry in sorted(os.listdir(work_root)):
        match = pattern.fullmatch(entry)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        folder = os.path.join(work_root, entry)
        for pidfile in _pidfiles(folder):
            try:
                with open(pidfile, encoding="ascii") as file:
                    pid = int(file.read().strip())
                with open(f"/proc/{pid}/cmdline", "rb") as file:
                    cmdline = file.read()
            except (OSError, ValueError):
                continue
            if folder.encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
                removed.append(f"pid {pid}")
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    names = re.compile(rf"{re.escape(prefix_base)}(\d+)[a-z]")
    for line in sh("ip", "netns", "list", check=False).splitlines():
        name = line.split(" ", 1)[0]
        match = names.match(name)
        if match is not None and not _pid_alive(int(match.group(1))):
            sh("ip", "netns", "del", name, check=False)
            removed.append(f"netns {name}")
    return removed


def _pidfiles(folder: str) -> list[str]:
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, name) for name in files if name.endswith(".pid")]
    return found


def kernel_snapshot(netns: "Netns") -> dict[str, Any]:
    """butterfly's kernel objects in ``netns``, comparable across a restart.

    ``links``: every ``bf*`` link with its ifindex, kind, master, MTU, MAC,
    alias, flags and ``ip -d`` details; ``fdb``: the all-zero-MAC entries
    (static VXLAN peers); ``nft``: the whole ``nft list ruleset``. Equal
    snapshots mean nothing was recreated or changed. Left out: what the
    kernel changes by itself, on its own schedule (timers, which tick;
    carrier and operational state, which the link watcher settles up to a
    second after a link appears; what the packets put in the dyn_ sets and
    count in the named drop counters).
    """
    links = {}
    for shown in json.loads(netns.ip("-d", "-j", "link", "show")):
        if not shown["ifname"].startswith(PREFIX):
            continue
        link = _without_timers(shown)
        link.pop("operstate", None)
        link["flags"] = [flag for flag in link["flags"] if flag not in _CARRIER_FLAGS]
        links[link["ifname"]] = link
    fdb = sorted(
        line
        for line in netns.exec("bridge", "fdb", "show").splitlines()
        if line.startswith("00:00:00:00:00:00")
    )
    nft = comparable_ruleset(netns.exec("nft", "list", "ruleset"))
    return {"links": links, "fdb": fdb, "nft": nft}


def comparable_ruleset(listing: str) -> str:
    """``nft list ruleset`` without what packets change (the elements of
    butterfly's dyn_ sets, what the named drop counters counted) and with
    each table's sets, maps, counters and chains in name order: the listing
    follows creation order, so a chain deleted and made again by a rollback
    is listed last although the tables mean the same (a chain's rules keep
    their order: that one is meaningful)."""
    counted = _COUNTED.sub("packets - bytes -", _without_dynamic_elements(listing))
    return _objects_sorted(counted)


def _objects_sorted(listing: str) -> str:
    """Each table's top-level objects (a block from a line at one tab's
    depth to its closing ``\t}``) sorted; the rest of the text as it is."""
    out: list[str] = []
    blocks: list[list[str]] = []
    block: list[str] | None = None
    for line in listing.splitlines():
        if block is not None:
            block.append(line)
            if line == "\t}":
                blocks.append(block)
                block = None
        elif line.startswith("\t") and not line.startswith("\t\t") and line.endswith("{"):
            block = [line]
        elif line == "}" and blocks:
            out.extend("\n".join(b) for b in sorted(blocks))
            blocks = []
            out.append(line)
        elif line or not blocks:
            out.append(line)
    return "\n".join(out) + "\n"


def _without_dynamic_elements(ruleset: str) -> str:
    """``nft list ruleset`` without the elements of butterfly's dyn_ sets: the
    packets fill those (connection meters, drop counters), not butterfly."""
    kept: list[str] = []
    in_dynamic_set = skipping = False
    for line in ruleset.splitlines():
        stripped = line.strip()
        if stripped.startswith("set "):
            in_dynamic_set = stripped.startswith(f"set {DYNAMIC_PREFIX}")
        if in_dynamic_set and stripped.startswith("elements = {"):
            skipping = True
        if not skipping:
            kept.append(line)
        elif stripped.endswith("}"):
            skipping = False
    return "\n".join(kept) + "\n"


_COUNTED = re.compile(r"packets \d+ bytes \d+")
"""What a counter has counted: the packets', not butterfly's."""
_CARRIER_FLAGS = frozenset({"LOWER_UP", "NO-CARRIER", "DORMANT", "M-DOWN"})


def _without_timers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timers(v) for k, v in value.items() if "timer" not in k}
    if isinstance(value, list):
        return [_without_timers(v) for v in value]
    return value


# --------------------------------------------------------------------------- namespaces


class Netns:
    """A named network namespace: runs commands, and functions in a thread inside it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        self._pool: ThreadPoolExecutor | None = None
        self._processes: list[subprocess.Popen[Any]] = []
        # A namespace is made only once the kernel has finished dismantling the
        # ones deleted before: minutes after a lab host of 10,000 vnics.
        sh("ip", "netns", "add", name, timeout=900)
        self._set_up(lambda: self.ip("link", "set", "lo", "up"))

    def _set_up(self, steps: Callable[[], object]) -> None:
        """Run a constructor's ``steps``; on failure delete the namespace (no owner has it
        yet) and re-raise."""
        try:
            steps()
        except BaseException:
            sh("ip", "netns", "del", self.name, check=False)
            raise

    def ip(self, *argv: str, check: bool = True) -> str:
        """``ip -n NAME ...``: stdout."""
        return sh("ip", "-n", self.name, *argv, check=check)

    def exec(
        self, *argv: str, check: bool = True, timeout: float = 30, input: str | None = None
    ) -> str:
        """A command inside the namespace: stdout (LabError on failure when ``check``)."""
        return sh(
            "ip", "netns", "exec", self.name, *argv, check=check, timeout=timeout, input=input
        )

    def popen(
        self, *argv: str, stdout: int | IO[Any] | None = subprocess.PIPE, text: bool = True
    ) -> "subprocess.Popen[Any]":
        """A background command inside (``ip netns exec`` execs it: the pid is its own).

        It is killed by pid when the namespace closes, if it still runs.
        """
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is subprocess.PIPE else subprocess.DEVNULL,
            text=text,
        )
        self._processes.append(process)
        return process

    def run(self, work: Callable[[], T], timeout: float = 120) -> T:
        """``work()`` in this namespace, always on the same thread (made on first use).

        For in-process tests: a KernelDataplane or a whole Switch built
        there stays there, as if it were a daemon in this host.
        """
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, initializer=_enter, initargs=(self.path,))
        return self._pool.submit(work).result(timeout=timeout)

    def close(self) -> None:
        """Kill what :meth:`popen` started (by pid), stop the thread, delete the namespace."""
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self._processes.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        sh("ip", "netns", "del", self.name, check=False)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Agent:
    """The agent process of a namespace (:mod:`butterfly_lab.agent`), killed by pid.

    Each :meth:`call` sends one JSON command and returns its JSON answer;
    the agent bounds every wait by the command's ``timeout``.
    """

    def __init__(self, netns: Netns) -> None:
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, sys.executable, _agent_module.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read(20)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        if not ready:
            raise LabError("the agent did not answer in time")
        line = self._process.stdout.readline()
        if not line:
            raise LabError(f"the agent exited ({self._process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        """One command (listen, connect, hold, echo, icmp, send_frames, sniff_*)."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self._process.stdin.flush()
        return self._read(float(arguments.get("timeout", 5)) + 10)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()


@dataclass(frozen=True)
class PingResult:
    """What iputils ``ping`` reported."""

    transmitted: int
    received: int
    output: str

    @property
    def lost(self) -> int:
        return self.transmitted - self.received


def parse_ping(output: str) -> PingResult:
    """The counts of ping's summary line (0/0 when it printed none)."""
    match = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", output)
    if match is None:
        return PingResult(0, 0, output)
    return PingResult(int(match.group(1)), int(match.group(2)), output)


class Vm(Netns):
    """A VM: a namespace for a NETNS vnic, with its agent started on first use."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._agent: Agent | None = None

    @property
    def agent(self) -> Agent:
        if self._agent is None:
            self._agent = Agent(self)
        return self._agent

    def ping(
        self, address: str, *, count: int = 3, interval: float = 0.2, deadline: float = 5
    ) -> PingResult:
        """``ping -c COUNT -i INTERVAL -w DEADLINE`` (IPv4 or IPv6 by the address)."""
        output = self.exec(
            "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-w", str(deadline),
            address, check=False, timeout=deadline + 10,
        )  # fmt: skip
        return parse_ping(output)

    def listen(self, proto: str, port: int, family: int = 4) -> None:
        """A TCP or UDP echo server of the agent on ``port`` (family 4 or 6)."""
        answer = self.agent.call("listen", proto=proto, port=port, family=family)
        if not answer["ok"]:
            raise LabError(f"{self.name}: listen {proto} {port}: {answer.get('error')}")

    def probe(self, proto: str, host: str, port: int = 0, *, timeout: float = 0.5) -> bool:
        """One probe: TCP connect + echo, UDP echo, or ICMP echo (``proto="icmp"``)."""
        return bool(self._probe(proto, host, port, timeout)["ok"])

    def reaches(self, proto: str, host: str, port: int = 0, *, tries: int = 5) -> bool:
        """True once a probe gets through (ARP/ND may need a first try)."""
        return any(self.probe(proto, host, port, timeout=1.0) for _ in range(tries))

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
            self._agent = None
        super().close()


class Fabric(Netns):
    """The physical network: a bridge every host's underlay is a port of."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

        def bridge() -> None:
            self.ip("link", "add", FABRIC_BRIDGE, "type", "bridge", "mcast_snooping", "0")
            self.ip("link", "set", FABRIC_BRIDGE, "up")

        self._set_up(bridge)

    def block_multicast(self) -> None:
        """Make the fabric an underlay without multicast (as many clouds are): drop
        IPv4 multicast and site-local IPv6 multicast (ff05::/16, butterfly's VXLAN
        groups), keeping the link-local IPv6 multicast that neighbour discovery needs."""
        self.exec("nft", "-f", "-", input=(
            "table bridge lab {\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            "    ip daddr 224.0.0.0/4 drop\n"
            "    ip6 daddr ff05::/16 drop\n"
            "  }\n"
            "}\n"
        ))  # fmt: skip


class Host(Netns):
    """A hypervisor: an underlay into the fabric and, when started, its own butterflyd.

    ``index`` N gives the underlay addresses (both families always);
    ``v6`` makes the IPv6 one the daemon's ``-i``. ``folder`` holds the
    daemon's state, log and ``api.sock``. ``extra_args`` go to butterflyd
    (e.g. ``["--vxlan-peers", "198.51.100.2"]``).
    """

    UNDERLAY = "ul0"

    def __init__(
        self,
        name: str,
        fabric: Fabric,
        index: int,
        folder: str,
        *,
        v6: bool = False,
        extra_args: Sequence[str] = (),
        log_level: str = "info",
    ) -> None:
        super().__init__(name)
        self.index = index
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.address4 = UNDERLAY_V4.format(index)
        self.address6 = UNDERLAY_V6.format(index)
        self.v6 = v6
        self.underlay = self.UNDERLAY
        fabric_port = f"ul{index}"

        def underlay() -> None:
            sh(
                "ip", "link", "add", self.UNDERLAY, "netns", self.name, "type", "veth",
                "peer", "name", fabric_port, "netns", fabric.name,
            )  # fmt: skip
            fabric.ip("link", "set", fabric_port, "master", FABRIC_BRIDGE, "up")
            self.ip("addr", "add", f"{self.address4}/24", "dev", self.UNDERLAY)
            self.ip("addr", "add", f"{self.address6}/64", "dev", self.UNDERLAY, "nodad")
            self.ip("link", "set", self.UNDERLAY, "up")

        self._set_up(underlay)
        self.daemon = DaemonProcess(
            folder,
            netns=self.name,
            dataplane=True,
            endpoint=f"ipc://{folder}/api.sock",
            extra_args=["--ip", self.address, *extra_args],
            log_level=log_level,
        )
        self._client: Client | None = None

    @property
    def address(self) -> str:
        """The underlay address the daemon uses (``-i``)."""
        return self.address6 if self.v6 else self.address4

    @property
    def endpoint(self) -> str:
        return self.daemon.endpoint

    # -- the daemon

    def start(self, timeout: float = 30, *, settled: bool = True) -> None:
        """Start butterflyd (on the same state file as before, if any) and wait for it:
        until it answers, and (``settled``) until its start-up reconcile has made
        the kernel match its state, which it does between requests after answering."""
        self.spawn()
        self.wait_ready(timeout)
        if settled:
            wait_for(self._settled, f"host {self.name}: the start-up reconcile", timeout)

    def _settled(self) -> bool:
        request = MessageV0.Request(
            app_status=True, app_status_reconcile=True, app_status_graph=False
        )
        return not self.call(request).app_status.reconcile.running

    def spawn(self) -> None:
        """Start butterflyd without waiting (see :meth:`wait_ready`); records its pid."""
        self.daemon.spawn()
        with open(os.path.join(self.folder, "butterflyd.pid"), "w", encoding="ascii") as file:
            file.write(f"{self.daemon.pid}\n")

    def wait_ready(self, timeout: float = 30) -> None:
        try:
            self.daemon.wait_ready(timeout=timeout)
        except DaemonError as error:
            raise LabError(f"host {self.name}: {error}") from error

    def kill(self) -> None:
        """SIGKILL the daemon (a crash, as far as it can tell): the data path stays."""
        self._drop_client()
        self.daemon.kill()

    def stop(self) -> None:
        """SIGTERM the daemon and wait: the data path stays."""
        self._drop_client()
        if self.daemon.alive():
            self.daemon.stop()

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self.start(timeout)

    # -- talking to it

    @property
    def client(self) -> Client:
        """An API client of this host's daemon (re-made after a restart)."""
        if self._client is None:
            self._client = Client(endpoint=self.endpoint, timeout_ms=20_000)
        return self._client

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def call(self, request: MessageV0.Request, *, check: bool = True) -> MessageV0.Response:
        """One API request; LabError with the daemon's description when it fails."""
        response = self.client.call(request).response
        if check and not response.status.status:
            raise LabError(
                f"host {self.name}: {request.WhichOneof('request')} failed: "
                f"{response.status.error.description}"
            )
        return response

    def cli(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        """``butterfly -e ENDPOINT ARGV...`` (the CLI, from outside the namespace): stdout."""
        return sh(*butterfly_cli(), "-e", self.endpoint, *argv, check=check, timeout=timeout)

    def add_vnic(
        self,
        vnic_id: str,
        *,
        mac: str,
        vni: int,
        ips: Iterable[str] = (),
        vm: Netns | None = None,
        security_groups: Iterable[str] = (),
        bypass_filtering: bool = False,
        ip_anti_spoof: bool = False,
    ) -> MessageV0.Response:
        """nic_add: a NETNS vnic into ``vm``, or a TAP vnic when ``vm`` is None."""
        request = MessageV0.Request()
        nic = request.nic_add
        nic.id = vnic_id
        nic.mac = mac
        nic.vni = vni
        nic.ip.extend(ips)
        nic.security_group.extend(security_groups)
        nic.bypass_filtering = bypass_filtering
        nic.ip_anti_spoof = ip_anti_spoof
        if vm is None:
            nic.type = MessageV0.Nic.TAP
        else:
            nic.type = MessageV0.Nic.NETNS
            nic.path = vm.name
        return self.call(request)

    def delete_vnic(self, vnic_id: str) -> None:
        self.call(MessageV0.Request(nic_del=vnic_id))

    def snapshot(self) -> dict[str, Any]:
        """The daemon's view (``nic_details ""``, ``sg_details ""``) and the kernel's."""
        nics = self.call(MessageV0.Request(nic_details="", with_additions=True))
        sgs = self.call(MessageV0.Request(sg_details=""))
        return {
            "nic_details": [nic.SerializeToString(deterministic=True) for nic in nics.nic_details],
            "sg_details": [sg.SerializeToString(deterministic=True) for sg in sgs.sg_details],
            **kernel_snapshot(self),
        }

    def close(self) -> None:
        """Stop the daemon (kill it if it will not stop), end its packet traces,
        delete the namespace and the host's folder."""
        self._drop_client()
        try:
            self.daemon.close()
            if glob.glob(trace_pidfiles(self.folder)):
                # Tracers outlive the daemon by design; --cleanup ends them.
                self.exec(
                    *butterflyd_command(), "--cleanup", "--no-syslog",
                    "--socket-dir", self.folder, check=False,
                )  # fmt: skip
        finally:
            super().close()
            shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- the lab


class Lab:
    """Everything one test (or benchmark) made; :meth:`close` removes it all, in reverse.

    ``prefix``: namespace names start with it (default ``bfl<pid>``, which
    :func:`reap_stale` recognises). The first lab of a process reaps stale
    leftovers of dead runs.
    """

    _reaped = False
    host_class: type[Host] = Host
    """What :meth:`host` makes (a subclass may run in-process data planes instead)."""

    def __init__(self, *, prefix: str | None = None) -> None:
        if not Lab._reaped:
            Lab._reaped = True
            reap_stale()
        self.prefix = prefix or f"{PREFIX_BASE}{os.getpid()}"
        self.folder = os.path.join(_WORK_ROOT, f"{PREFIX_BASE}{os.getpid()}")
        os.makedirs(self.folder, exist_ok=True)
        self._fabric: Fabric | None = None
        self._made: list[Netns] = []
        self._hosts = 0

    def name(self, role: str) -> str:
        """A fresh namespace name: prefix + role letter(s) + a process-wide serial."""
        name = f"{self.prefix}{role}{next(_serial)}"
        if len(name) > 15:
            raise LabError(f"namespace name {name!r} is longer than 15 characters")
        return name

    @property
    def fabric(self) -> Fabric:
        """The fabric, made with the first host."""
        if self._fabric is None:
            self._fabric = Fabric(self.name("f"))
            self._made.append(self._fabric)
        return self._fabric

    def host(
        self,
        *,
        v6: bool = False,
        start: bool = True,
        extra_args: Sequence[str] = (),
        log_level: str = "info",
    ) -> Host:
        """A new host (index 1, 2, ...); its butterflyd is started unless ``start=False``."""
        fabric = self.fabric
        self._hosts += 1
        name = self.name("h")
        host = self.host_class(
            name,
            fabric,
            self._hosts,
            os.path.join(self.folder, name),
            v6=v6,
            extra_args=extra_args,
            log_level=log_level,
        )
        self._made.append(host)
        if start:
            host.start()
        return host

    def hosts(
        self,
        count: int,
        *,
        v6: bool = False,
        extra_args: Callable[[int], Sequence[str]] | Sequence[str] = (),
        log_level: str = "info",
    ) -> list[Host]:
        """``count`` hosts whose daemons start in parallel.

        ``extra_args`` may be a function of the host's position (0, 1...):
        ``lambda i: ["--vxlan-peers", UNDERLAY_V4.format(2 - i)]``.
        """
        made = []
        for position in range(count):
            args = extra_args(position) if callable(extra_args) else extra_args
            made.append(self.host(v6=v6, start=False, extra_args=args, log_level=log_level))
        for host in made:
            host.spawn()
        for host in made:
            host.wait_ready()
        return made

    def vm(self) -> Vm:
        """A new VM namespace, for a NETNS vnic (``vm=`` of :meth:`Host.add_vnic`)."""
        vm = Vm(self.name("v"))
        self._made.append(vm)
        return vm

    def netns(self, role: str = "n") -> Netns:
        """A plain namespace, removed with the lab."""
        netns = Netns(self.name(role))
        self._made.append(netns)
        return netns

    def close(self) -> None:
        """Stop every daemon first (so none reacts to the rest), then delete in reverse."""
        errors: list[BaseException] = []
        for made in reversed(self._made):
            if isinstance(made, Host):
                try:
                    made.stop()
                except Exception as error:  # keep closing the others
                    errors.append(error)
        for made in reversed(self._made):
            try:
                made.close()
            except Exception as error:  # keep closing the others
                errors.append(error)
        self._made.clear()
        self._fabric = None
        if os.path.isdir(self.folder) and not _others_use(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
        if errors:
            raise LabError(f"lab clean-up: {errors[0]}") from errors[0]

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _others_use(folder: str) -> bool:
    """True while another lab of this process still has a host folder in ``folder``."""
    return any(os.path.isdir(os.path.join(folder, entry)) for entry in os.listdir(folder))
