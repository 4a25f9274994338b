"""``butterfly-bench dataplane``: the kernel data path against plain kernel baselines.

Issue 3's benchmark, in one run, entirely in network namespaces of a
:class:`~butterfly_lab.lab.Lab` (real butterflyd processes driving the
kernel, VMs as namespaces holding NETNS vnics):

* traffic: qperf ``tcp_lat``/``udp_lat`` and iperf3 TCP (one stream) and
  UDP (``-b 0``, fixed datagram length: Gbit/s received and loss) between
  two vnics of one host (same VNI), and between vnics of two hosts joined
  by VXLAN over veth underlays through the fabric bridge. Each without
  security groups (``bypass_filtering``: butterfly drops all inbound
  traffic of a filtered vnic unless a rule allows it) and with groups of 20
  rules whose *last* one is the only one allowing the traffic, so every new
  flow walks past the other 19;
* the baselines, in the same run and with the vnics' MTU: two namespaces
  on a plain veth pair, two on a plain Linux bridge in a third namespace
  (butterfly's bridge options, no rules), and for the cross-host rows a
  plain VXLAN between two namespace hosts on the same fabric;
* a security-group member change at scale: the API round trip of
  ``sg_member_add``/``sg_member_del`` on a group that the only group of
  1,000 TAP vnics names in a rule, p50 and p99, against the same with 10
  vnics: the change is one set element, so it must not grow with the vnics;
* the cost of the port guards (what keeps filtering closed without the
  tables) on the same-host filtered path: with and without them, in
  alternating rounds;
* last, a diagnosis of the same-host TCP gap: the filtered path against the
  plain bridge again, once the port guards are removed from the host (the
  cost of failing closed), then butterfly's bridge table, then its inet
  table too (what is left is br_netfilter alone).

Noise must not favour one side: paths are measured in rounds, each round
starting one path later, and every figure is the median over the rounds.
Client and server processes are pinned to different CPUs (first and last),
which keeps the scheduler from sometimes co-locating them (qperf latency
differs about threefold between the two cases on this machine kind).

It prints one table (measure, baselines, butterfly, ratio, target, result).
The exit code is 0 when the benchmark ran, whatever the figures; with
``--strict``, 1 when a target is missed; 2 when it could not run.
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages
from butterfly.dataplane.guard import ANCHORS, GuardKind
from butterfly.dataplane.naming import PREFIX, TABLE
from butterfly.dataplane.netlink import Netlink
from butterfly.errors import ClientError
from butterfly_lab.bench.figures import BenchError, busy_elsewhere, percentile, table, verdict
from butterfly_lab.daemon import DaemonError
from butterfly_lab.lab import (
    FABRIC_BRIDGE,
    UNDERLAY_V4,
    Host,
    Lab,
    LabError,
    Netns,
    Vm,
    sh,
    wait_for,
)

__all__ = ["add_arguments", "parse_iperf3", "parse_qperf", "run"]

MIN_TCP_RATIO = 0.90
"""Same-host TCP throughput: at least this fraction of the plain bridge's."""
MAX_LATENCY_RATIO = 1.10
"""Latency overhead under 10% (against the bridge, or the plain VXLAN across hosts)."""
MAX_MEMBER_CHANGE_MS = 50.0

QPERF_PORT = 19765
IPERF3_PORT = 5201
UDP_LENGTH = 1400
"""iperf3 UDP datagram length: fits the vnics' 1450-byte MTU with its headers."""
RULES = 20
BUSY = 0.05
"""CPU use by other processes (the bench idle) above which the table warns."""
SMALL_VNICS = 10
FILL_BATCH = 100
TOOLS = {
    "qperf": "qperf",
    "iperf3": "iperf3",
    "taskset": "util-linux",
    "ss": "iproute2",
    "ping": "iputils-ping",
}
"""The commands the benchmark runs, and the Debian packages holding them."""


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int
    seconds: int
    """Duration of each qperf test and each iperf3 test."""
    vnics: int
    changes: int
    """Timed member adds (and as many deletes) per vnic count."""


FULL = Settings(rounds=7, seconds=1, vnics=1000, changes=1000)
QUICK = Settings(rounds=1, seconds=1, vnics=100, changes=20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run for CI: {QUICK.rounds} round of {QUICK.seconds} s tests,"
        f" {QUICK.vnics} vnics, {QUICK.changes} member changes",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"traffic rounds, the median is kept (default {FULL.rounds})",
    )
    parser.add_argument(
        "--seconds",
        type=int,
        metavar="S",
        help=f"duration of each qperf and iperf3 test (default {FULL.seconds})",
    )
    parser.add_argument(
        "--vnics",
        type=int,
        metavar="N",
        help=f"TAP vnics for the member change (default {FULL.vnics}, more than {SMALL_VNICS})",
    )
    parser.add_argument(
        "--changes",
        type=int,
        metavar="N",
        help=f"timed member adds, and deletes, per size (default {FULL.changes})",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


# ---------------------------------------------------------------- measuring one path


@dataclass(frozen=True, slots=True)
class Path:
    """Where one measurement runs: the client's namespace sends to ``address`` in the server's."""

    name: str
    client: Vm
    server: Vm
    address: str


@dataclass(frozen=True, slots=True)
class Sample:
    """One round's figures on one path."""

    tcp_lat_us: float
    udp_lat_us: float
    tcp_gbps: float
    udp_gbps: float
    """UDP received by the server."""
    udp_loss_pct: float


def median(samples: Sequence[Sample]) -> Sample:
    """Each figure's median over the rounds (figures of one round are not kept together)."""
    return Sample(
        *(
            statistics.median(getattr(sample, field.name) for sample in samples)
            for field in fields(Sample)
        )
    )


_QPERF = re.compile(r"^(\w+):\s+latency\s*=\s*([0-9.]+)\s*(ns|us|ms|sec)\b", re.M)
_MICROSECONDS = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "sec": 1e6}


def parse_qperf(output: str) -> dict[str, float]:
    """qperf's latencies in microseconds, by test name (qperf picks a unit per figure)."""
    return {
        test: float(value) * _MICROSECONDS[unit] for test, value, unit in _QPERF.findall(output)
    }


def parse_iperf3(output: str) -> tuple[float, float]:
    """Gbit/s received and % lost from ``iperf3 -J``'s report (loss is 0 for TCP)."""
    try:
        report = json.loads(output)
    except json.JSONDecodeError as error:
        raise BenchError(f"iperf3 printed no JSON report: {output[-500:]!r}") from error
    if "error" in report:
        raise BenchError(f"iperf3: {report['error']}")
    received = report["end"]["sum_received"]
    return received["bits_per_second"] / 1e9, float(received.get("lost_percent", 0.0))


@dataclass(frozen=True, slots=True)
class Cpus:
    """Where clients and servers run (None: anywhere, on a one-CPU machine)."""

    client: int | None
    server: int | None

    @classmethod
    def pick(cls) -> "Cpus":
        count = os.cpu_count() or 1
        return cls(0, count - 1) if count > 1 else cls(None, None)

    def describe(self) -> str:
        if self.client is None:
            return "client and server unpinned (one CPU)"
        return f"client on CPU {self.client}, server on CPU {self.server}"


def _pinned(cpu: int | None, *argv: str) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)


def _listening(netns: Netns) -> set[int]:
    ports = set()
    for line in netns.exec("ss", "-Hltn").splitlines():
        local = line.split()[3]
        ports.add(int(local.rsplit(":", 1)[1]))
    return ports


def start_servers(server: Vm, cpus: Cpus) -> None:
    """qperf and iperf3 servers in ``server``, until the lab closes it (they are its
    processes, killed by pid); returns once both listen."""
    server.popen(*_pinned(cpus.server, "qperf"), stdout=subprocess.DEVNULL)
    server.popen(*_pinned(cpus.server, "iperf3", "-s"), stdout=subprocess.DEVNULL)
    wait_for(
        lambda: {QPERF_PORT, IPERF3_PORT} <= _listening(server),
        f"qperf and iperf3 to listen in {server.name}",
    )


def check_path(path: Path) -> None:
    """Traffic goes through (which also resolves ARP and lets bridges learn)."""
    if path.client.ping(path.address, count=1, deadline=5).received == 0:
        raise BenchError(f"{path.name}: {path.client.name} cannot reach {path.address}")


def measure(path: Path, seconds: int, cpus: Cpus) -> Sample:
    """One round on one path: qperf's two latencies, iperf3 TCP, iperf3 UDP."""
    client = path.client
    qperf = client.exec(
        *_pinned(cpus.client, "qperf", "-t", str(seconds), "-to", "5", path.address,
                 "tcp_lat", "udp_lat"),
        check=False, timeout=2 * seconds + 30,
    )  # fmt: skip
    latencies = parse_qperf(qperf)
    if not {"tcp_lat", "udp_lat"} <= latencies.keys():
        raise BenchError(f"{path.name}: qperf gave no latency: {qperf.strip()!r}")
    tcp, _ = iperf3(path, seconds, cpus)
    udp, loss = iperf3(path, seconds, cpus, "-u", "-b", "0", "-l", str(UDP_LENGTH))
    return Sample(latencies["tcp_lat"], latencies["udp_lat"], tcp, udp, loss)


def iperf3(path: Path, seconds: int, cpus: Cpus, *options: str) -> tuple[float, float]:
    """One iperf3 client run on ``path``: Gbit/s received, and the loss percentage."""
    argv = ("iperf3", "-c", path.address, "-t", str(seconds), "-J", *options)
    output = path.client.exec(*_pinned(cpus.client, *argv), check=False, timeout=seconds + 30)
    return parse_iperf3(output)


def measure_rounds(paths: Sequence[Path], settings: Settings, cpus: Cpus) -> dict[str, Sample]:
    """Every path once per round, each round starting one path later; the medians."""
    samples: dict[str, list[Sample]] = {path.name: [] for path in paths}
    for round_ in range(settings.rounds):
        start = round_ % len(paths)
        for path in [*paths[start:], *paths[:start]]:
            samples[path.name].append(measure(path, settings.seconds, cpus))
        print(f"round {round_ + 1}/{settings.rounds} done", flush=True)
    return {name: median(taken) for name, taken in samples.items()}


def _guarded(host: Host) -> dict[str, GuardKind]:
    """The host's guarded ports: name -> the guard whose blocks they are bound to."""
    kinds = {kind.blocks.egress: kind for kind in GuardKind}

    def read() -> dict[str, GuardKind]:
        with Netlink() as netlink:
            return {
                link.name: kinds[block]
                for link in netlink.links()
                if link.name.startswith(PREFIX)
                and link.name not in ANCHORS
                and (block := netlink.guard_block(link.index)) in kinds
            }

    return host.run(read)


def _set_guards(host: Host, guards: dict[str, GuardKind] | None) -> None:
    """Bind ``guards`` back to their blocks (None: unbind every port), as tc,
    outside the daemon; the blocks and their programs stay (the anchors)."""
    if guards is None:
        for link in json.loads(host.ip("-j", "link", "show")):
            if link["ifname"].startswith(PREFIX) and link["ifname"] not in ANCHORS:
                host.exec("tc", "qdisc", "del", "dev", link["ifname"], "clsact", check=False)
        return

    def put() -> None:
        with Netlink() as netlink:
            for name, kind in guards.items():
                link = netlink.link(name)
                if link is not None:
                    netlink.bind_blocks(link.index, kind.blocks)

    host.run(put)


def guard_cost(host: Host, filtered: Path, settings: Settings, cpus: Cpus) -> tuple[Sample, Sample]:
    """The filtered same-host path with its port guards, and without, in
    alternating rounds (the guards taken off and put back each round): what
    failing closed costs the common path. The host's daemon only reports
    drift, or it would put the guards back itself."""
    guards = _guarded(host)
    if not guards:
        raise BenchError(f"host {host.name} has no port guard to measure")
    on: list[Sample] = []
    off: list[Sample] = []
    try:
        for round_ in range(settings.rounds):
            for state in (True, False) if round_ % 2 == 0 else (False, True):
                _set_guards(host, guards if state else None)
                (on if state else off).append(measure(filtered, settings.seconds, cpus))
    finally:
        _set_guards(host, guards)
    return median(on), median(off)


ABLATIONS = (
    (None, "without the port guards"),
    ("bridge", "without the guards and the bridge table"),
    ("inet", "without the guards and either table"),
)
"""What :func:`ablation` removes, one after the other: the port guards (tc
egress programs), then each nftables table (None: no table)."""


@dataclass(frozen=True, slots=True)
class Ablation:
    label: str
    bridge_gbps: float
    butterfly_gbps: float


def ablation(
    host: Host, filtered: Path, bridge: Path, settings: Settings, cpus: Cpus
) -> list[Ablation]:
    """Where the same-host TCP gap goes: the filtered path again, against the plain
    bridge in the same rounds, once the port guards are gone (what failing
    closed costs), then butterfly's bridge table (anti-spoofing, the marks),
    then its inet table too (conntrack, the rules): what is left is
    br_netfilter alone. Last of all, since it ends the host's filtering (its
    daemon only reports drift, or it would put all of it back)."""
    found = []
    for family, label in ABLATIONS:
        if family is None:
            for link in json.loads(host.ip("-j", "link", "show")):
                if link["ifname"].startswith(PREFIX):
                    host.exec("tc", "qdisc", "del", "dev", link["ifname"], "clsact", check=False)
        else:
            host.exec("nft", "delete", "table", family, TABLE)
        ours, plain = [], []
        for _ in range(settings.rounds):
            ours.append(iperf3(filtered, settings.seconds, cpus)[0])
            plain.append(iperf3(bridge, settings.seconds, cpus)[0])
        found.append(Ablation(label, statistics.median(plain), statistics.median(ours)))
    return found


# ---------------------------------------------------------------- the paths


def _address(vm: Vm, ifname: str, address: str, mtu: int) -> None:
    vm.ip("addr", "add", f"{address}/24", "dev", ifname)
    vm.ip("link", "set", ifname, "mtu", str(mtu), "up")


def _veth(one: Netns, one_name: str, other: Netns, other_name: str) -> None:
    """A veth pair born with its ends in two namespaces (no name ever in ours)."""
    sh("ip", "link", "add", one_name, "netns", one.name, "type", "veth",
       "peer", "name", other_name, "netns", other.name)  # fmt: skip


def _bridge(netns: Netns, mtu: int) -> None:
    """``br0`` with the options butterfly gives its bridges, and no filtering rules."""
    netns.ip("link", "add", "br0", "mtu", str(mtu), "type", "bridge", "stp_state", "0",
             "forward_delay", "0", "mcast_snooping", "0")  # fmt: skip
    netns.ip("link", "set", "br0", "up")


def _bridge_port(host: Netns, vm: Vm, port: str, address: str, mtu: int) -> None:
    _veth(vm, "eth0", host, port)
    host.ip("link", "set", port, "master", "br0", "mtu", str(mtu), "up")
    _address(vm, "eth0", address, mtu)


def veth_path(lab: Lab, mtu: int) -> Path:
    client, server = lab.vm(), lab.vm()
    _veth(client, "eth0", server, "eth0")
    _address(client, "eth0", "10.1.0.1", mtu)
    _address(server, "eth0", "10.1.0.2", mtu)
    return Path("veth", client, server, "10.1.0.2")


STATEFUL_FLOOR = """
table inet bffloor {
    chain zone {
        type filter hook prerouting priority raw; policy accept;
        udp dport 4789 notrack accept
        iifname "br0" ct zone set 1
    }
    chain raw_out {
        type filter hook output priority raw; policy accept;
        udp dport 4789 notrack
    }
    chain filter {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state new accept
    }
}
"""
"""The least a stateful filter of bridged traffic does on this kernel (no
``nf_conntrack_bridge``): br_netfilter's trip into the inet family, a conntrack
zone per bridge, established flows accepted first, the underlay's VXLAN packets
untracked; butterfly's tables have that shape, with the security groups' rules
behind the first accept. A plain bridge with it is the floor of butterfly's
bridge path."""


def _stateful(netns: Netns) -> None:
    netns.exec("nft", "-f", "-", input=STATEFUL_FLOOR)


def bridge_path(lab: Lab, mtu: int, *, stateful: bool = False) -> Path:
    """Two VMs on a plain bridge; ``stateful``: with :data:`STATEFUL_FLOOR`."""
    host, client, server = lab.netns("b"), lab.vm(), lab.vm()
    _bridge(host, mtu)
    subnet = 5 if stateful else 2
    _bridge_port(host, client, "p1", f"10.{subnet}.0.1", mtu)
    _bridge_port(host, server, "p2", f"10.{subnet}.0.2", mtu)
    if stateful:
        _stateful(host)
    name = "bridge + conntrack" if stateful else "bridge"
    return Path(name, client, server, f"10.{subnet}.0.2")


def vxlan_path(lab: Lab, mtu: int, *, stateful: bool = False) -> Path:
    """Two namespace hosts on the lab's fabric (underlay .101 and .102, or .103 and
    .104 when ``stateful``: with :data:`STATEFUL_FLOOR` on both), each with a
    bridge holding a VXLAN device (VNI 1, unicast to the other host) and a VM."""
    first = 103 if stateful else 101
    addresses = [UNDERLAY_V4.format(first), UNDERLAY_V4.format(first + 1)]
    subnet = 6 if stateful else 3
    vms = []
    for index, local in enumerate(addresses):
        host, vm = lab.netns("x"), lab.vm()
        fabric_port = f"px{first + index}"
        _veth(host, "ul0", lab.fabric, fabric_port)
        lab.fabric.ip("link", "set", fabric_port, "master", FABRIC_BRIDGE, "up")
        host.ip("addr", "add", f"{local}/24", "dev", "ul0")
        host.ip("link", "set", "ul0", "up")
        _bridge(host, mtu)
        host.ip("link", "add", "vx0", "mtu", str(mtu), "type", "vxlan", "id", "1",
                "local", local, "remote", addresses[1 - index], "dev", "ul0",
                "dstport", "4789")  # fmt: skip
        host.ip("link", "set", "vx0", "master", "br0", "up")
        _bridge_port(host, vm, "p1", f"10.{subnet}.0.{index + 1}", mtu)
        if stateful:
            _stateful(host)
        vms.append(vm)
    return Path("vxlan + conntrack" if stateful else "vxlan", vms[0], vms[1], f"10.{subnet}.0.2")


def _rule(
    protocol: int, *, port: int | None = None, cidr: str | None = None, sg: str | None = None
) -> MessageV0.Rule:
    rule = MessageV0.Rule(direction=MessageV0.Rule.INBOUND, protocol=protocol)
    if port is not None:
        rule.port_start = rule.port_end = port
    if cidr is not None:
        rule.cidr.address, mask = cidr.split("/")
        rule.cidr.mask_size = int(mask)
    if sg is not None:
        rule.security_group = sg
    return rule


def twenty_rules(allowed: str) -> list[MessageV0.Sg]:
    """Two groups of ten rules; only the last (every protocol from ``allowed``)
    matches the bench's traffic: TCP and UDP ports from elsewhere, and rules
    naming the first group's members (a set lookup), come first."""
    first = MessageV0.Sg(id="bench-a", member=["203.0.113.7"])
    second = MessageV0.Sg(id="bench-b")
    for index in range(RULES - 1):
        group = first if index < RULES // 2 else second
        port = 2000 + index
        kind = index % 3
        if kind == 0:
            group.rule.append(_rule(6, port=port, cidr="203.0.113.0/24"))
        elif kind == 1:
            group.rule.append(_rule(17, port=port, cidr="203.0.113.0/24"))
        else:
            group.rule.append(_rule(6, port=port, sg=first.id))
    second.rule.append(_rule(-1, cidr=allowed))
    return [first, second]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One butterfly row group and the baselines it is judged against."""

    scope: str
    """"same host" or "across hosts"."""
    filtered: bool
    butterfly: Path
    baselines: tuple[str, ...]
    """Names of the baseline paths; the last one is the reference for ratios."""

    @property
    def title(self) -> str:
        return f"{self.scope}, {f'{RULES} SG rules' if self.filtered else 'no SG'}"


def _mac(vni: int, end: int) -> str:
    return f"52:54:00:bd:{vni & 0xFF:02x}:{end:02x}"


def butterfly_scenarios(lab: Lab, one: Host, two: Host) -> list[Scenario]:
    """Pairs of NETNS vnics: on ``one`` alone (VNIs 101, 102), and from ``one`` to
    ``two`` (201, 202); the even VNIs filtered by :func:`twenty_rules`."""
    groups = twenty_rules("10.0.0.0/8")
    for host in (one, two):
        for sg in groups:
            host.call(MessageV0.Request(sg_add=sg))
    scenarios = []
    for vni, scope, server_host in (
        (101, "same host", one), (102, "same host", one),
        (201, "across hosts", two), (202, "across hosts", two),
    ):  # fmt: skip
        filtered = vni % 2 == 0
        client, server = lab.vm(), lab.vm()
        for end, (host, vm) in enumerate(((one, client), (server_host, server)), start=1):
            host.add_vnic(
                f"{vni}-{end}",
                vm=vm,
                mac=_mac(vni, end),
                vni=vni,
                ips=[f"10.{vni}.0.{end}"],
                security_groups=[sg.id for sg in groups] if filtered else [],
                bypass_filtering=not filtered,
            )
        path = Path(f"butterfly {vni}", client, server, f"10.{vni}.0.2")
        baselines = ("veth", "bridge") if scope == "same host" else ("vxlan",)
        scenarios.append(Scenario(scope, filtered, path, baselines))
    return scenarios


def vnic_mtu(host: Host, vnic_id: str) -> int:
    """The MTU butterflyd gave a vnic (the baselines use the same)."""
    return host.call(MessageV0.Request(nic_details=vnic_id, with_additions=True)).nic_details[0].mtu


# ---------------------------------------------------------------- member changes


@dataclass(frozen=True, slots=True)
class Changes:
    """Round trips of sg_member_add and sg_member_del with ``vnics`` vnics in the group."""

    vnics: int
    add_ms: list[float]
    del_ms: list[float]


def _tap_vnic(index: int) -> MessageV0.Request:
    request = MessageV0.Request()
    nic = request.nic_add
    nic.id = f"t{index:05}"
    nic.mac = f"52:54:01:{index >> 16 & 0xFF:02x}:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}"
    nic.vni = 3000 + index % 10
    nic.ip.append(f"10.{40 + (index >> 16)}.{index >> 8 & 0xFF}.{index & 0xFF}")
    nic.security_group.append("bench-web")
    nic.type = MessageV0.Nic.TAP
    return request


def add_tap_vnics(host: Host, indexes: range) -> None:
    """Many nic_add per frame (filling is not what is measured), every answer checked."""
    for start in range(indexes.start, indexes.stop, FILL_BATCH):
        envelope = Messages()
        for index in range(start, min(start + FILL_BATCH, indexes.stop)):
            envelope.messages.add(revision=REVISION).message_0.request.CopyFrom(_tap_vnic(index))
        for message in host.client.send(envelope).messages:
            status = message.message_0.response.status
            if not status.status:
                raise BenchError(f"creating TAP vnics failed: {status.error.description}")


def time_changes(host: Host, vnics: int, count: int) -> Changes:
    """``count`` members added to ``bench-src``, one request each, then deleted."""
    timings: dict[str, list[float]] = {"add": [], "del": []}
    for kind in ("add", "del"):
        for index in range(count):
            request = MessageV0.Request()
            change = request.sg_member_add if kind == "add" else request.sg_member_del
            change.sg_id = "bench-src"
            change.member = f"10.250.{index >> 8}.{index & 0xFF}"
            before = time.perf_counter()
            host.call(request)
            timings[kind].append((time.perf_counter() - before) * 1e3)
    return Changes(vnics, timings["add"], timings["del"])


def member_changes(host: Host, settings: Settings) -> tuple[Changes, Changes, float]:
    """With 10 TAP vnics, then with ``settings.vnics``, all in ``bench-web``, whose
    rule names ``bench-src``; and the seconds it took to add the extra vnics."""
    host.call(MessageV0.Request(sg_add=MessageV0.Sg(id="bench-src")))
    web = MessageV0.Sg(id="bench-web")
    web.rule.append(_rule(6, port=22, sg="bench-src"))
    host.call(MessageV0.Request(sg_add=web))
    add_tap_vnics(host, range(SMALL_VNICS))
    small = time_changes(host, SMALL_VNICS, settings.changes)
    started = time.monotonic()
    add_tap_vnics(host, range(SMALL_VNICS, settings.vnics))
    fill_seconds = time.monotonic() - started
    present = len(host.call(MessageV0.Request(nic_list=True)).nic_list)
    if present != settings.vnics:
        raise BenchError(f"the daemon holds {present} vnics, not {settings.vnics}")
    return small, time_changes(host, settings.vnics, settings.changes), fill_seconds


# ---------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Row:
    measure: str
    baselines: str
    butterfly: str
    ratio: str
    target: str
    result: str


@dataclass(frozen=True, slots=True)
class Metric:
    label: str
    value: Callable[[Sample], float]
    digits: int
    target: Callable[[Scenario], tuple[str, Callable[[float], bool]] | None]
    """The target's text and its test of the ratio, or None when it has none."""
    loss: bool = False


def _latency_target(scenario: Scenario) -> tuple[str, Callable[[float], bool]]:
    return f"< {MAX_LATENCY_RATIO:.2f} x {scenario.baselines[-1]}", (
        lambda ratio: ratio < MAX_LATENCY_RATIO
    )


def _tcp_target(scenario: Scenario) -> tuple[str, Callable[[float], bool]] | None:
    if scenario.scope != "same host":
        return None
    return f">= {MIN_TCP_RATIO:.2f} x {scenario.baselines[-1]}", (
        lambda ratio: ratio >= MIN_TCP_RATIO
    )


METRICS = (
    Metric("tcp_lat us", lambda s: s.tcp_lat_us, 1, _latency_target),
    Metric("udp_lat us", lambda s: s.udp_lat_us, 1, _latency_target),
    Metric("TCP Gbit/s", lambda s: s.tcp_gbps, 2, _tcp_target),
    Metric("UDP Gbit/s (lost)", lambda s: s.udp_gbps, 2, lambda _: None, loss=True),
)


def _cell(sample: Sample, metric: Metric) -> str:
    text = f"{metric.value(sample):.{metric.digits}f}"
    return f"{text} ({sample.udp_loss_pct:.0f}%)" if metric.loss else text


def traffic_rows(scenarios: Sequence[Scenario], results: dict[str, Sample]) -> list[Row]:
    rows = []
    for scenario in scenarios:
        ours = results[scenario.butterfly.name]
        reference = results[scenario.baselines[-1]]
        for metric in METRICS:
            baseline = metric.value(reference)
            ratio = metric.value(ours) / baseline if baseline else math.inf
            target = metric.target(scenario)
            rows.append(
                Row(
                    measure=f"{scenario.title}: {metric.label}",
                    baselines=", ".join(
                        f"{name} {_cell(results[name], metric)}" for name in scenario.baselines
                    ),
                    butterfly=_cell(ours, metric),
                    ratio=f"{ratio:.2f}",
                    target=target[0] if target else "-",
                    result=("PASS" if target[1](ratio) else "FAIL") if target else "-",
                )
            )
    return rows


def member_rows(small: Changes, large: Changes) -> list[Row]:
    rows = []
    for kind in ("add", "del"):
        for label, fraction in (("p50", 0.50), ("p99", 0.99)):
            few = percentile(getattr(small, f"{kind}_ms"), fraction)
            many = percentile(getattr(large, f"{kind}_ms"), fraction)
            rows.append(
                Row(
                    measure=f"sg_member_{kind} {label} ms, {large.vnics:,} vnics",
                    baselines=f"{small.vnics} vnics {few:.2f}",
                    butterfly=f"{many:.2f}",
                    ratio=f"{many / few:.2f}" if few else "-",
                    target=f"< {MAX_MEMBER_CHANGE_MS:g} ms",
                    result="PASS" if many < MAX_MEMBER_CHANGE_MS else "FAIL",
                )
            )
    return rows


def ablation_rows(found: Sequence[Ablation]) -> list[Row]:
    return [
        Row(
            measure=f"diagnosis: same host, {RULES} SG rules, {one.label}: TCP Gbit/s",
            baselines=f"bridge {one.bridge_gbps:.2f}",
            butterfly=f"{one.butterfly_gbps:.2f}",
            ratio=f"{one.butterfly_gbps / one.bridge_gbps:.2f}" if one.bridge_gbps else "-",
            target="-",
            result="-",
        )
        for one in found
    ]


def guard_rows(on: Sample, off: Sample) -> list[Row]:
    return [
        Row(
            measure=f"port guards: same host, {RULES} SG rules: {metric.label}",
            baselines=f"without guards {_cell(off, metric)}",
            butterfly=_cell(on, metric),
            ratio=f"{metric.value(on) / metric.value(off):.2f}" if metric.value(off) else "-",
            target="-",
            result="-",
        )
        for metric in METRICS
    ]


def render(rows: Sequence[Row]) -> str:
    """The header is Row's field names; the figures (butterfly, ratio) right-aligned."""
    names = [field.name for field in fields(Row)]
    return table(names, ([getattr(row, name) for name in names] for row in rows), {2, 3})


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for entry in cpuinfo:
                if entry.startswith("model name"):
                    return entry.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _version(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0]


def header(settings: Settings, cpus: Cpus, mtu: int, busy: tuple[float, float]) -> str:
    return "\n".join(
        [
            f"butterfly-bench dataplane: {os.cpu_count()} CPUs ({_cpu_model()}),"
            f" Linux {os.uname().release}, vnic MTU {mtu}; CPU time used by others:"
            f" {busy[0]:.0%} before the traffic, {busy[1]:.0%} after"
            + (" (a busy machine: the figures are skewed)" if max(busy) > BUSY else ""),
            f"traffic: {settings.rounds} round(s), median kept; {settings.seconds} s per test;"
            f" {cpus.describe()}; {_version('qperf', '--version')} tcp_lat/udp_lat;"
            f" {_version('iperf3', '--version').split(' (')[0]} TCP 1 stream,"
            f" UDP -b 0 -l {UDP_LENGTH}",
            f"member changes: {settings.changes} sg_member_add then {settings.changes}"
            f" sg_member_del, one request each, TAP vnics in one SG whose rule names the"
            f" changed SG: {SMALL_VNICS} vnics, then {settings.vnics:,}",
        ]
    )


# ---------------------------------------------------------------- the run


def _settings(args: argparse.Namespace) -> Settings:
    chosen = replace(
        QUICK if args.quick else FULL,
        **{
            name: value
            for name in ("rounds", "seconds", "vnics", "changes")
            if (value := getattr(args, name)) is not None
        },
    )
    if chosen.rounds < 1 or chosen.seconds < 1 or chosen.changes < 1:
        raise BenchError("--rounds, --seconds and --changes must be at least 1")
    if chosen.vnics <= SMALL_VNICS:
        raise BenchError(f"--vnics must be more than {SMALL_VNICS}")
    return chosen


def _bench(lab: Lab, settings: Settings, cpus: Cpus) -> tuple[str, list[Row], str]:
    one, two, scale = lab.hosts(
        3,
        log_level="warning",
        extra_args=lambda index: ["--report-drift-only"] if index == 0 else [],
    )
    try:
        scenarios = butterfly_scenarios(lab, one, two)
        mtu = vnic_mtu(one, "101-1")
        veth, bridge, vxlan = veth_path(lab, mtu), bridge_path(lab, mtu), vxlan_path(lab, mtu)
        same_host = [s.butterfly for s in scenarios if s.scope == "same host"]
        across = [s.butterfly for s in scenarios if s.scope != "same host"]
        paths = [veth, bridge, *same_host, vxlan, *across]  # each next to its baselines
        for path in paths:
            start_servers(path.server, cpus)
        for path in paths:
            check_path(path)
        busy_before = busy_elsewhere()
        print(f"{len(paths)} paths ready; measuring", flush=True)
        results = measure_rounds(paths, settings, cpus)
        busy = (busy_before, busy_elsewhere())
        small, large, fill = member_changes(scale, settings)
        filtered = next(s for s in scenarios if s.scope == "same host" and s.filtered)
        guards = guard_cost(one, filtered.butterfly, settings, cpus)
        found = ablation(one, filtered.butterfly, bridge, settings, cpus)
    except (BenchError, LabError, ClientError, DaemonError):
        for host in (one, two, scale):
            log = host.daemon.log()
            if log:
                print(f"{host.name}'s butterflyd log:\n{log[-3000:]}", file=sys.stderr)
        raise
    note = (
        f"{settings.vnics - SMALL_VNICS:,} TAP vnics added in {fill:.1f} s"
        f" ({fill * 1e3 / (settings.vnics - SMALL_VNICS):.1f} ms each, {FILL_BATCH} per frame)"
    )
    return (
        header(settings, cpus, mtu, busy),
        [
            *traffic_rows(scenarios, results),
            *member_rows(small, large),
            *guard_rows(*guards),
            *ablation_rows(found),
        ],
        note,
    )


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        settings = _settings(args)
        if os.geteuid() != 0:
            raise BenchError("needs root (network namespaces, a kernel data plane)")
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise BenchError(
                f"missing {', '.join(missing)}: apt-get install "
                + " ".join(sorted({TOOLS[tool] for tool in missing}))
            )
        cpus = Cpus.pick()
        with Lab() as lab:
            print(f"lab {lab.prefix}: namespaces {lab.prefix}*, files in {lab.folder}", flush=True)
            title, rows, note = _bench(lab, settings, cpus)
            print(title)
            print(render(rows))
            print(note)
    except (BenchError, LabError, ClientError, DaemonError) as error:
        print(f"butterfly-bench dataplane: {error}", file=sys.stderr)
        return 2
    print(f"the run took {time.monotonic() - started:.0f} s, clean-up included")
    return verdict(all(row.result != "FAIL" for row in rows), strict=args.strict)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="butterfly-bench dataplane")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
