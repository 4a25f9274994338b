"""``butterfly-bench frames``: what each frame costs, path by path, in one sitting.

Issue 12's table. Every figure comes from a C program (:mod:`butterfly_lab.bench.cbuild`,
``c/bfframes.c``), never from Python: one ``write()`` per frame into a tap, the
way QEMU hands a guest's frame to the kernel, pinned to one CPU, while a C reader
on the other CPU drains the destination tap; what counts is what reaches that
tap, never what was sent. Paths, each built in namespaces of a
:class:`~butterfly_lab.lab.Lab`:

* ``tc redirect``: two taps, a u32 match-all filter with ``mirred egress
  redirect`` on each one's ingress to the other (the cheapest a kernel switch
  can be);
* ``bridge``: the taps on a Linux bridge, ``bridge-nf-call-iptables=0`` (and
  ip6tables, arptables) in its namespace; ``bridge+br_netfilter``: the same with
  them at 1 and no rule anywhere (the reference of every frame ratio). The
  sysctls are per network namespace on this kernel: only the lab's are set;
* ``butterfly``: two TAP vnics of a real butterflyd (data plane on), both in two
  security groups of 20 rules whose last one alone allows the bench's UDP port,
  so each new flow walks past 19 others; the sender has no connection caps, and
  a row shows that the daemon's default caps leave the same one-way stream
  alone (see :func:`frame_vnics`). When ``butterflyd --help`` offers
  ``--fast-path``, one daemon per data path (``off``: bridge + nftables;
  ``ebpf``) and a row for each; when it offers ``--vhost-loop``, those daemons
  run the C loop and one more (on the first data path) the Python loop, for
  vhost-user rows of each.

Measured on each: one-way 64-byte UDP (a flow that is never answered: for
conntrack every frame is *new*), the same on an *established* flow (the
receiver answers the first frame), and request/response (ping-pong of one frame
each way, one outstanding; its latency p50/p99 from every transaction). Then,
between NETNS vnics of the same daemons, TCP (iperf3, one stream) and
tcp_lat/udp_lat (qperf) against a plain bridge, on one host and across two over
VXLAN against a plain VXLAN, each beside the same plain path with the least a
stateful filter adds there (conntrack in a zone, two rules: the floor of the
bridge path, no target), and on two more daemons with
``nf_conntrack_tcp_be_liberal`` set, which puts TCP on the ``ebpf`` fast path
(:func:`liberal_pairs`); and butterfly's vhost-user vnic at 64 bytes both
ways against the filtered path's C-writer figure on the same kind of flow: guest
to switch, testpmd ``txonly`` into the vnic's socket and the C reader on the TAP
vnic (a new flow, and an established one: the reader answers its first frame);
switch to guest, the C writer on the TAP vnic and testpmd ``rxonly`` counting.

Per core: frames that reach the receiving tap (the tap's own counts: read by
its reader, or dropped because the reader fell behind, which is the reader's
lack of CPU and no cost of the path) per second of the *writer's* CPU time: a
tap write carries the frame through the whole kernel path in the writer's
system call, and a machine busy with other work then takes cycles from the
run, not frames. The vhost workers stand in for the writer guest to switch.
Host CPU: the CPU time of every process moving the frames (C writer and
reader from getrusage, the vhost workers, iperf3's two ends) per Mpps or
Gbit/s. The kernel here accounts CPU by ticks, softirq work included in the
process it interrupts; testpmd, the stand-in guest, polls a CPU whatever the
load and is left out.

Paths are measured in rounds, each round in the reverse order of the one before
(A B C, C B A, ...), so drift does not favour one; each figure is the median
over the rounds, its spread (max - min) / median beside it. The exit code is
0 when the benchmark ran, whatever the figures; with ``--strict``, 1 when a
target is missed; 2 when it could not run.
"""

import argparse
import functools
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import tap_name
from butterfly.errors import ClientError
from butterfly_lab.bench import vhost
from butterfly_lab.bench.cbuild import program
from butterfly_lab.bench.dataplane import (
    Path,
    bridge_path,
    check_path,
    parse_qperf,
    twenty_rules,
    vnic_mtu,
    vxlan_path,
)
from butterfly_lab.bench.figures import BenchError, busy_elsewhere, table, verdict
from butterfly_lab.daemon import DaemonError, butterflyd_command
from butterfly_lab.lab import Host, Lab, LabError, Netns, Vm, sh, wait_for

__all__ = ["add_arguments", "fast_paths", "parse_fields", "run", "vhost_loops"]

PORT = 9999
"""The UDP port the frames go to: the one the 20th rule allows."""
SPORT_NEW, SPORT_ESTABLISHED, SPORT_PING = 40001, 40002, 40003
SPORT_VHOST, SPORT_VHOST_ESTABLISHED = 40004, 40005
"""One flow per kind of measure: a flow answered once stays established in
conntrack, so the one-way measure must never share one with the others."""
CIDR = "10.0.0.0/8"
MAC_A, MAC_B, MAC_V, MAC_C = (f"52:54:00:f2:00:0{n}" for n in range(1, 5))
TOOLS = {
    "qperf": "qperf",
    "iperf3": "iperf3",
    "taskset": "util-linux",
    "tc": "iproute2",
    "dpdk-testpmd": "dpdk-dev",
}
"""The commands the benchmark runs, and the Debian packages holding them."""
BUSY = 0.05
"""CPU use by other processes (the bench idle) above which the header warns."""

MIN_FRAME_RATIO = 0.90
MIN_ESTABLISHED_RATIO = 0.95
MIN_TCP_RATIO = 0.97
MAX_LATENCY_RATIO = 1.05
MIN_VHOST_RATIO = 0.90


@dataclass(frozen=True, slots=True)
class Settings:
    rounds: int
    seconds: float
    """Each frame measure (one-way, established, request/response)."""
    tcp_seconds: int
    """Each iperf3 and qperf test."""
    vhost_seconds: int
    """testpmd samples (one per second) kept per vhost-user measure."""
    size: int
    """Frame length in bytes, without the FCS (testpmd's ``--txpkts`` likewise)."""
    fast_paths: tuple[str, ...] = ()
    """``--fast-path`` values, one daemon each; () when butterflyd has no such option."""
    vhost_loops: tuple[str, ...] = ()
    """``--vhost-loop`` values: the last one runs in every daemon above, each other
    in a daemon of its own (on the first data path) for its vhost-user rows only;
    () when butterflyd has no such option."""


FULL = Settings(rounds=3, seconds=1.5, tcp_seconds=1, vhost_seconds=3, size=64)
QUICK = Settings(rounds=1, seconds=0.3, tcp_seconds=1, vhost_seconds=1, size=64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run for CI: {QUICK.rounds} round, {QUICK.seconds} s per frame measure",
    )
    parser.add_argument(
        "--rounds", type=int, metavar="N", help=f"rounds, median kept (default {FULL.rounds})"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        metavar="S",
        help=f"each frame measure (default {FULL.seconds:g})",
    )
    parser.add_argument(
        "--tcp-seconds",
        type=int,
        metavar="S",
        help=f"each iperf3 and qperf test (default {FULL.tcp_seconds})",
    )
    parser.add_argument(
        "--vhost-seconds",
        type=int,
        metavar="S",
        help=f"testpmd samples kept per vhost-user measure (default {FULL.vhost_seconds})",
    )
    parser.add_argument(
        "--size",
        type=int,
        metavar="BYTES",
        help=f"frame length without FCS, 60 to 1450 (default {FULL.size})",
    )
    parser.add_argument(
        "--fast-path",
        metavar="PATH,...",
        help="butterflyd --fast-path values to measure, one daemon each (default: off and"
        " ebpf when butterflyd offers the option, else the only path it has)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


def fast_paths(help_text: str) -> tuple[str, ...]:
    """The data paths to compare, from ``butterflyd --help``: () when it has one only."""
    return ("off", "ebpf") if "--fast-path" in help_text else ()


def vhost_loops(help_text: str) -> tuple[str, ...]:
    """The vhost-user loops to compare (the Python one, then the C one), from
    ``butterflyd --help``: () when it has one only."""
    return ("python", "c") if "--vhost-loop" in help_text else ()


def parse_fields(line: str) -> dict[str, int]:
    """bfframes' report: ``key=value`` integers on one line."""
    try:
        found = {key: int(value) for key, value in (item.split("=", 1) for item in line.split())}
    except ValueError:
        found = {}
    if not found:
        raise BenchError(f"bfframes printed {line!r}, not key=value figures")
    return found


# ---------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class Cpus:
    sender: int
    receiver: int


@dataclass(frozen=True, slots=True)
class Taps:
    """Two taps a frame path joins: the C writer on ``a``, the reader on ``b``."""

    label: str
    netns: Netns
    a: str
    b: str
    ip_a: str
    ip_b: str
    mac_a: str = MAC_A
    mac_b: str = MAC_B

    def addresses(self) -> list[str]:
        return ["--src-mac", self.mac_a, "--dst-mac", self.mac_b, "--src-ip", self.ip_a,
                "--dst-ip", self.ip_b, "--port", str(PORT)]  # fmt: skip


def _pinned(cpu: int, *argv: str) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv]


def _plain_taps(netns: Netns) -> None:
    for tap in ("t1", "t2"):
        netns.ip("tuntap", "add", tap, "mode", "tap")
        netns.ip("link", "set", tap, "up")


def tc_taps(lab: Lab) -> Taps:
    """Each tap's ingress redirected to the other by tc: no bridge, no netfilter."""
    netns = lab.netns("t")
    _plain_taps(netns)
    for one, other in (("t1", "t2"), ("t2", "t1")):
        netns.exec("tc", "qdisc", "add", "dev", one, "ingress")
        netns.exec("tc", "filter", "add", "dev", one, "parent", "ffff:", "protocol", "all",
                   "u32", "match", "u32", "0", "0",
                   "action", "mirred", "egress", "redirect", "dev", other)  # fmt: skip
    return Taps("tc redirect (u32 + mirred)", netns, "t1", "t2", "10.61.0.1", "10.61.0.2")


def bridge_taps(lab: Lab, *, br_netfilter: bool) -> Taps:
    """The taps on a bridge with butterfly's bridge options and the MACs pinned
    (nothing to learn); br_netfilter's sysctls set in this namespace only."""
    netns = lab.netns("b")
    value = "1" if br_netfilter else "0"
    for table_ in ("iptables", "ip6tables", "arptables"):
        netns.exec("sysctl", "-qw", f"net.bridge.bridge-nf-call-{table_}={value}")
    netns.ip("link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0",
             "mcast_snooping", "0")  # fmt: skip
    netns.ip("link", "set", "br0", "up")
    _plain_taps(netns)
    for tap, mac in (("t1", MAC_A), ("t2", MAC_B)):
        netns.ip("link", "set", tap, "master", "br0")
        netns.exec("bridge", "fdb", "add", mac, "dev", tap, "master", "static")
    label = "bridge + br_netfilter (no rules)" if br_netfilter else "bridge, bridge-nf-call-*=0"
    subnet = 63 if br_netfilter else 62
    return Taps(label, netns, "t1", "t2", f"10.{subnet}.0.1", f"10.{subnet}.0.2")


def frame_groups() -> list[MessageV0.Sg]:
    """:func:`~butterfly_lab.bench.dataplane.twenty_rules`' two groups, renamed, with the
    20th rule allowing UDP to :data:`PORT` only (from :data:`CIDR`)."""
    groups = twenty_rules(CIDR)
    renamed = {group.id: group.id.replace("bench-", "frames-") for group in groups}
    for group in groups:
        group.id = renamed[group.id]
        for rule in group.rule:
            if rule.security_group:
                rule.security_group = renamed[rule.security_group]
    last = groups[-1].rule[-1]
    last.protocol, last.port_start, last.port_end = 17, PORT, PORT
    return groups


@dataclass(frozen=True, slots=True)
class VhostEnd:
    """A daemon's vhost-user vnic v and the TAP vnic b its frames go to and come from."""

    label: str
    taps: Taps
    """b is the C reader's and writer's end."""
    host: Host
    socket: str
    ip: str
    reference: str
    """The label of the butterfly whose C-writer figures this end is judged against."""


@dataclass(frozen=True, slots=True)
class Butterfly:
    """One data path of butterfly: its daemons, vnics and the paths through them."""

    label: str
    taps: Taps
    """a to b, the sender without connection caps."""
    capped: Taps
    """c to b, the sender with the daemon's default caps."""
    vhost: VhostEnd
    same_host: Path
    across: Path


def frame_vnics(host: Host, label: str, index: int, ends: str) -> tuple[Taps, Taps, VhostEnd]:
    """TAP vnics a, b, c and vhost-user vnic v (those of ``ends``) in the frame groups
    (VNI 1x00); the a to b and c to b pairs and v's end.

    Every frame of a flow never answered is *new* to conntrack, but only its
    first counts against a sender's cap on new connections per second (the
    daemon's default, 1,000): a, v and b (the senders of the frame measures) have
    no caps, c keeps the default, for a row that shows a one-way stream passes."""
    for sg in [*frame_groups(), *twenty_rules(CIDR)]:
        host.call(MessageV0.Request(sg_add=sg))
    subnet = 70 + index
    ips = {end: f"10.{subnet}.0.{n}" for n, end in enumerate("abvc", start=1)}
    frames_sgs = [sg.id for sg in frame_groups()]
    macs = {"a": MAC_A, "b": MAC_B, "c": MAC_C, "v": MAC_V}
    socket_path = ""
    for end in ends:
        kind = MessageV0.Nic.VHOST_USER_SERVER if end == "v" else MessageV0.Nic.TAP
        nic = MessageV0.Nic(
            id=f"f{end}", mac=macs[end], vni=1000 + 100 * index, ip=[ips[end]],
            security_group=frames_sgs, type=kind,
        )  # fmt: skip
        if end != "c":
            nic.max_connections = nic.max_new_connections = 0
        added = host.call(MessageV0.Request(nic_add=nic))
        if end == "v":
            socket_path = added.nic_add.path
    taps = Taps(label, host, tap_name("fa"), tap_name("fb"), ips["a"], ips["b"])
    capped = replace(taps, a=tap_name("fc"), ip_a=ips["c"], mac_a=MAC_C)
    return taps, capped, VhostEnd(label, taps, host, socket_path, ips["v"], label)


def butterfly_setup(lab: Lab, label: str, index: int, one: Host, two: Host) -> Butterfly:
    """On ``one``: :func:`frame_vnics` and a NETNS pair in the 20-rule groups (VNI
    1x01); ``two`` holds the far end of a NETNS pair across hosts (1x02)."""
    taps, capped, end = frame_vnics(one, label, index, "abcv")
    for sg in twenty_rules(CIDR):
        two.call(MessageV0.Request(sg_add=sg))
    same_vni, across_vni = 1000 + 100 * index + 1, 1000 + 100 * index + 2
    same_host = netns_pair(lab, label, index, same_vni, one=one, far=one)
    across = netns_pair(lab, label, index, across_vni, one=one, far=two)
    return Butterfly(label, taps, capped, end, same_host, across)


def netns_pair(lab: Lab, label: str, index: int, vni: int, *, one: Host, far: Host) -> Path:
    """A client VM on ``one`` and a server VM on ``far`` (``one`` again for a
    same-host pair), NETNS vnics of VNI ``vni`` in the 20-rule groups (added to
    both daemons beforehand)."""
    subnet = 70 + index
    rules = [sg.id for sg in twenty_rules(CIDR)]
    client, server = lab.vm(), lab.vm()
    for number, (host, vm) in enumerate(((one, client), (far, server)), start=1):
        host.add_vnic(
            f"n{vni}-{number}",
            vm=vm,
            mac=f"52:54:00:f3:{vni % 256:02x}:{number:02x}",
            vni=vni,
            ips=[f"10.{subnet}.{vni % 100}.{number}"],
            security_groups=rules,
        )
    return Path(f"{label} {vni}", client, server, f"10.{subnet}.{vni % 100}.2")


LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"
"""With it at 1 in its namespace, butterflyd's ``ebpf`` fast path carries
established TCP too (conntrack then checks no TCP window, so it need not see
every segment); at 0, the kernel's default, TCP stays on the bridge path."""


def liberal_pairs(lab: Lab, label: str, index: int, options: Sequence[str]) -> tuple[Path, Path]:
    """NETNS pairs on two daemons of their own, started with :data:`LIBERAL` at 1,
    one on the same host and one across them: the TCP rows with TCP on the
    ``ebpf`` fast path."""
    hosts = [lab.host(start=False, log_level="warning", extra_args=options) for _ in range(2)]
    for host in hosts:
        host.exec("sysctl", "-qw", f"{LIBERAL}=1")
        host.start()
        if "TCP (conntrack is liberal)" not in host.cli("status"):
            raise BenchError(f"{host.name}: with {LIBERAL}=1 the fast path does not take TCP")
        for sg in twenty_rules(CIDR):
            host.call(MessageV0.Request(sg_add=sg))
    one, two = hosts
    same_vni, across_vni = 1000 + 100 * index + 1, 1000 + 100 * index + 2
    same_host = netns_pair(lab, label, index, same_vni, one=one, far=one)
    return same_host, netns_pair(lab, label, index, across_vni, one=one, far=two)


# ---------------------------------------------------------------- measures


@dataclass(frozen=True, slots=True)
class Figure:
    """One measure in one round: its value, the CPU seconds it took per unit of
    value and second (None: not measured), and a note."""

    value: float
    cpu: float | None
    note: str = ""


def _cpu(report: dict[str, int]) -> float:
    """Seconds of CPU in a bfframes report."""
    return (report["user_ns"] + report["sys_ns"]) / 1e9


def per_core(count: float, cpu_seconds: Sequence[float]) -> float:
    """``count`` per second of the busiest process's CPU time: what one core carries,
    however many cycles others on a shared machine took from the run."""
    busiest = max(cpu_seconds)
    return count / busiest if busiest else 0.0


class Frames:
    """The C programs, run against :class:`Taps`."""

    def __init__(self, tool: str, cpus: Cpus, settings: Settings) -> None:
        self.tool = tool
        self.cpus = cpus
        self.settings = settings

    def reader(
        self, taps: Taps, mode: str, *options: str, cpu: int | None = None
    ) -> "subprocess.Popen[str]":
        """A sink or echo on ``b`` (on the receiver's CPU unless told), once it is
        attached (it prints ``ready``)."""
        cpu = self.cpus.receiver if cpu is None else cpu
        process = taps.netns.popen(*_pinned(cpu, self.tool, mode, "--dev", taps.b,
                                            "--port", str(PORT), *options))  # fmt: skip
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 10)
        line = process.stdout.readline().strip() if ready else "(nothing in 10 s)"
        if line != "ready":
            process.kill()
            raise BenchError(f"{taps.label}: bfframes {mode} on {taps.b}: {line}")
        return process

    @staticmethod
    def stop(process: "subprocess.Popen[str]", what: str) -> dict[str, int]:
        time.sleep(0.1)  # what is still queued in the tap is read meanwhile
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired as error:
            process.kill()
            raise BenchError(f"bfframes {what} did not stop on SIGTERM") from error
        return parse_fields(output.strip().splitlines()[-1] if output.strip() else "")

    def blast(self, taps: Taps, sport: int, *, established: bool = False) -> Figure:
        """Mpps that reach ``b`` per second of the writer's CPU (the write carries
        each frame through the whole path) while it writes into ``a``.

        Reaching ``b`` is the tap's own count: frames its reader took, and those
        dropped because the reader had fallen behind (its queue full: a reader
        starved of CPU by other work, which is no cost of the path)."""
        before = _tap_counters(taps.netns, taps.b)
        sink = self.reader(taps, "sink", *(["--answer-first"] if established else []))
        try:
            sent = parse_fields(taps.netns.exec(
                *_pinned(self.cpus.sender, self.tool, "blast", "--dev", taps.a,
                         *taps.addresses(), "--sport", str(sport), "--size",
                         str(self.settings.size), "--seconds", str(self.settings.seconds),
                         *(["--prime"] if established else [])),
                timeout=self.settings.seconds + 30,
            ))  # fmt: skip
        finally:
            received = self.stop(sink, "sink")
        read, behind = (
            a - b for a, b in zip(_tap_counters(taps.netns, taps.b), before, strict=True)
        )
        arrived = (read + behind) / 1e6
        wall = arrived / (sent["elapsed_ns"] / 1e9)
        lost = 1 - (read + behind) / sent["sent"] if sent["sent"] else 0.0
        note = ", ".join(
            [f"{wall:.3f} Mpps wall"]
            + ([f"{lost:.0%} dropped on the way"] if lost >= 0.005 else [])
            + ([f"{behind / (read + behind):.0%} unread"] if behind > 0.005 * read else [])
        )
        return Figure(
            per_core(arrived, (_cpu(sent),)),
            (_cpu(sent) + _cpu(received)) / arrived if arrived else None,
            note,
        )

    def ping_pong(self, taps: Taps) -> Figure:
        """Thousand transactions per second, one frame each way, one outstanding, both
        ends on the sender's CPU."""
        # both ends on one CPU: a wake-up on the other costs more than the path here
        echo = self.reader(taps, "echo", cpu=self.cpus.sender)
        try:
            pinged = parse_fields(taps.netns.exec(
                *_pinned(self.cpus.sender, self.tool, "ping", "--dev", taps.a, *taps.addresses(),
                         "--sport", str(SPORT_PING), "--size", str(self.settings.size),
                         "--seconds", str(self.settings.seconds)),
                timeout=self.settings.seconds + 30,
            ))  # fmt: skip
        finally:
            echoed = self.stop(echo, "echo")
        done = pinged["transactions"] / 1e3
        cpu = _cpu(pinged) + _cpu(echoed)  # one CPU: their sum is that core's busy time
        note = (
            f"p50 {pinged['p50_ns'] / 1e3:.0f} us, p99 {pinged['p99_ns'] / 1e3:.0f} us"
            f" of {pinged['samples']:,}" + (f", {pinged['lost']} lost" if pinged["lost"] else "")
        )
        return Figure(per_core(done, (cpu,)), cpu / done if done else None, note)


def iperf3_tcp(path: Path, seconds: int, cpus: Cpus) -> Figure:
    """Gbit/s of one TCP stream, and the cores its two ends used (iperf3's own count)."""
    argv = ("iperf3", "-c", path.address, "-t", str(seconds), "-J")
    output = path.client.exec(*_pinned(cpus.sender, *argv), check=False, timeout=seconds + 30)
    try:
        report = json.loads(output)
    except json.JSONDecodeError as error:
        raise BenchError(
            f"{path.name}: iperf3 printed no JSON report: {output[-300:]!r}"
        ) from error
    if "error" in report:
        raise BenchError(f"{path.name}: iperf3: {report['error']}")
    used = report["end"]["cpu_utilization_percent"]
    gbps = report["end"]["sum_received"]["bits_per_second"] / 1e9
    cores = (used["host_total"] + used["remote_total"]) / 100
    return Figure(gbps, cores / gbps if gbps else None)


def qperf(path: Path, test: str, seconds: int, cpus: Cpus) -> Figure:
    """qperf's ``tcp_lat`` or ``udp_lat``, in microseconds (its mean)."""
    output = path.client.exec(
        *_pinned(cpus.sender, "qperf", "-t", str(seconds), "-to", "5", path.address, test),
        check=False,
        timeout=seconds + 30,
    )
    found = parse_qperf(output)
    if test not in found:
        raise BenchError(f"{path.name}: qperf gave no {test}: {output.strip()!r}")
    return Figure(found[test], None)


def start_servers(vm: Vm, cpus: Cpus) -> None:
    """qperf and iperf3 servers on the receiver's CPU (killed by pid with the lab)."""
    vm.popen(*_pinned(cpus.receiver, "qperf"), stdout=subprocess.DEVNULL)
    vm.popen(*_pinned(cpus.receiver, "iperf3", "-s"), stdout=subprocess.DEVNULL)

    def listening() -> bool:
        ports = {line.split()[3].rsplit(":", 1)[1] for line in vm.exec("ss", "-Hltn").splitlines()}
        return {"19765", "5201"} <= ports

    wait_for(listening, f"qperf and iperf3 to listen in {vm.name}")


# ---------------------------------------------------------------- vhost-user


def _tap_counters(netns: Netns, tap: str) -> tuple[int, int]:
    """A tap's frames read by its reader, and dropped for its full queue (tun counts
    a frame sent to the tap when the reader reads it)."""
    folder = f"/sys/class/net/{tap}/statistics"
    read, dropped = netns.exec("cat", f"{folder}/tx_packets", f"{folder}/tx_dropped").split()
    return int(read), int(dropped)


def _cpu_of(pids: Sequence[int]) -> float:
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            parts = stat.read().rsplit(")", 1)[1].split()
        ticks += int(parts[11]) + int(parts[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class Vhost:
    """butterfly's vhost-user vnic ``fv``, testpmd's virtio-user as its guest.

    testpmd polls: its forwarding core is the reader's CPU, its main thread the
    sender's, the vhost workers are pinned to the sender's CPU (where the C
    writer runs in the frame measures)."""

    def __init__(self, frames: Frames, folder: str) -> None:
        self.frames = frames
        self.folder = folder
        self.cpus = frames.cpus
        self.pmd_settings = vhost.Settings(
            seconds=frames.settings.vhost_seconds,
            warmup=1,
            rounds=1,
            iperf_seconds=1,
            requests=1,
            idle_seconds=1,
        )

    def _pmd(self, started: list[vhost.Pmd], socket_path: str, mode: str, *extra: str) -> vhost.Pmd:
        pmd = vhost.Pmd(
            self.folder,
            vdevs=[f"net_virtio_user0,path={socket_path},mac={MAC_V}"],
            mode=mode,
            core=self.cpus.receiver,
            main_core=self.cpus.sender,
            extra=extra,
        )
        started.append(pmd)
        return pmd

    def _workers(self, end: VhostEnd) -> list[int]:
        workers = vhost.worker_pids(end.host.daemon.pid)
        for pid in workers:
            os.sched_setaffinity(pid, {self.cpus.sender})
        return workers

    def to_switch(self, end: VhostEnd, *, established: bool) -> Figure:
        """Guest to switch: testpmd ``txonly`` to b (UDP to :data:`PORT`), what reaches b
        (its own counts, as in :meth:`Frames.blast`) per second of the vhost workers'
        CPU (they write the frames into the kernel, in the C writer's place).
        ``established``: b answers the first frame (testpmd ignores the answer)."""
        taps = end.taps
        workers = self._workers(end)
        sink = self.frames.reader(taps, "sink", *(["--answer-first"] if established else []))
        sport = SPORT_VHOST_ESTABLISHED if established else SPORT_VHOST
        with vhost.pmds() as started:
            try:
                self._pmd(
                    started, end.socket, "txonly",
                    f"--txpkts={self.frames.settings.size}", f"--eth-peer=0,{MAC_B}",
                    f"--tx-ip={end.ip},{taps.ip_b}",
                    f"--tx-udp={sport},{PORT}",
                )  # fmt: skip

                def delivered() -> int:
                    return sum(_tap_counters(taps.netns, taps.b))

                first = delivered()
                wait_for(lambda: delivered() > first, "frames from testpmd to reach b", 60)
                time.sleep(self.pmd_settings.warmup)
                count, worked, read = delivered(), _cpu_of(workers), _cpu_of([sink.pid])
                time.sleep(self.pmd_settings.seconds)
                count = delivered() - count
                worked, read = _cpu_of(workers) - worked, _cpu_of([sink.pid]) - read
            finally:
                self.frames.stop(sink, "sink")
        arrived = count / 1e6
        return Figure(
            per_core(arrived, (worked,)),
            (worked + read) / arrived if arrived else None,
            f"{arrived / self.pmd_settings.seconds:.3f} Mpps wall",
        )

    def to_guest(self, end: VhostEnd) -> Figure:
        """Switch to guest: the C writer on b to v, testpmd ``rxonly`` counting (the
        median of its per-second rates over the steady seconds), per second of the
        busier of the writer (the kernel path) and the vhost workers (the tap reads
        and the ring)."""
        taps = end.taps
        workers = self._workers(end)
        settings = self.pmd_settings
        with vhost.pmds() as started:
            guest = self._pmd(started, end.socket, "rxonly")
            wait_for(lambda: bool(vhost.parse_pmd_stats(guest.output())), "testpmd to start", 60)
            writer = taps.netns.popen(
                *_pinned(self.cpus.sender, self.frames.tool, "blast", "--dev", taps.b,
                         "--src-mac", MAC_B, "--dst-mac", MAC_V, "--src-ip", taps.ip_b,
                         "--dst-ip", end.ip, "--port", str(PORT),
                         "--sport", str(SPORT_VHOST), "--size", str(self.frames.settings.size),
                         "--seconds", str(settings.warmup + settings.seconds + 60)),
            )  # fmt: skip
            try:
                wait_for(
                    lambda: any(s.rx_pps for s in vhost.parse_pmd_stats(guest.output())),
                    "frames from b to reach testpmd",
                    60,
                )
                time.sleep(settings.warmup)
                reports = len(vhost.parse_pmd_stats(guest.output()))
                worked, wrote, began = _cpu_of(workers), _cpu_of([writer.pid]), time.monotonic()
                wait_for(
                    lambda: (
                        len(vhost.parse_pmd_stats(guest.output())) >= reports + settings.seconds
                    ),
                    f"{settings.seconds} reports of testpmd",
                    settings.seconds + 30,
                )
                worked, wrote = _cpu_of(workers) - worked, _cpu_of([writer.pid]) - wrote
                seconds = time.monotonic() - began
                rates = [s.rx_pps for s in vhost.parse_pmd_stats(guest.output())[reports:]]
            finally:
                writer.kill()
                writer.wait()
        arrived = statistics.median(rates) * seconds / 1e6
        return Figure(
            per_core(arrived, (worked, wrote)),
            (worked + wrote) / arrived if arrived else None,
            f"{arrived / seconds:.3f} Mpps wall",
        )


# ---------------------------------------------------------------- rounds and rows


@dataclass
class Series:
    """One row's measure over the rounds."""

    unit: str
    per: str
    """What its CPU is divided by: ``Mpps``, ``k/s``, ``Gbit/s`` (empty: no CPU column)."""
    take: Callable[[], Figure]
    figures: list[Figure] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(f.value for f in self.figures)

    def spread(self) -> float:
        values = [f.value for f in self.figures]
        middle = statistics.median(values)
        return (max(values) - min(values)) / middle if middle else 0.0

    def cpu(self) -> float | None:
        rates = [f.cpu for f in self.figures if f.cpu is not None]
        return statistics.median(rates) if rates else None


def alternate(series: Sequence[Series], rounds: int) -> None:
    """Every series once per round, each round in the reverse order of the one before."""
    for round_ in range(rounds):
        for one in series if round_ % 2 == 0 else reversed(series):
            one.figures.append(one.take())
        print(f"round {round_ + 1}/{rounds} done", flush=True)


@dataclass(frozen=True, slots=True)
class Row:
    path: str
    measure: str
    figure: str
    spread: str
    ratio: str
    cpu: str
    target: str
    result: str


@dataclass(frozen=True, slots=True)
class Spec:
    """A row to print: its series, and what its ratio is taken against."""

    path: str
    measure: str
    series: Series
    reference: "Spec | None" = None
    """The row its ratio is taken against (None: no ratio, or this is a reference)."""
    reference_name: str = ""
    target: tuple[str, float] | None = None
    """``(">=" or "<=", ratio)``."""
    digits: int = 3
    is_reference: bool = False


def _row(spec: Spec) -> Row:
    series = spec.series
    value = series.median()
    notes = [f.note for f in series.figures if f.note]
    figure = f"{value:.{spec.digits}f} {series.unit}" + (f" ({notes[-1]})" if notes else "")
    ratio_text, result, target_text = "-", "-", "-"
    if spec.reference is not None:
        base = spec.reference.series.median()
        ratio = value / base if base else 0.0
        ratio_text = f"{ratio:.2f}"
        if spec.target is not None:
            sense, bound = spec.target
            target_text = f"{sense} {bound:.2f} x {spec.reference_name}"
            met = ratio >= bound if sense == ">=" else ratio <= bound
            result = "PASS" if met else "FAIL"
    elif spec.is_reference:
        ratio_text = "1.00"
    cpu = series.cpu()
    return Row(
        path=spec.path,
        measure=spec.measure,
        figure=figure,
        spread=f"{series.spread():.0%}" if len(series.figures) > 1 else "-",
        ratio=ratio_text,
        cpu=f"{cpu:.2f} cores/{series.per}" if cpu is not None else "-",
        target=target_text,
        result=result,
    )


def render(specs: Sequence[Spec]) -> str:
    rows = [_row(spec) for spec in specs]
    names = list(Row.__dataclass_fields__)
    return table(names, ([getattr(row, name) for name in names] for row in rows), {2, 3, 4, 5})


# ---------------------------------------------------------------- the run


def _settings(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else FULL
    chosen = replace(
        base,
        **{
            name: value
            for name in ("rounds", "seconds", "tcp_seconds", "vhost_seconds", "size")
            if (value := getattr(args, name)) is not None
        },
    )
    if chosen.rounds < 1 or chosen.seconds <= 0 or chosen.tcp_seconds < 1:
        raise BenchError("--rounds and --tcp-seconds must be at least 1, --seconds above 0")
    if chosen.vhost_seconds < 1:
        raise BenchError("--vhost-seconds must be at least 1")
    if not 60 <= chosen.size <= 1450:
        raise BenchError(f"--size {chosen.size}: a frame here is 60 to 1450 bytes")
    help_text = sh(*butterflyd_command(), "--help", check=False)
    offered = fast_paths(help_text)
    if args.fast_path is not None:
        wanted = tuple(p.strip() for p in args.fast_path.split(",") if p.strip())
        if not offered:
            raise BenchError("--fast-path: this butterflyd has no --fast-path option")
        if not wanted:
            raise BenchError("--fast-path: name at least one path (e.g. off,ebpf)")
        offered = wanted
    return replace(chosen, fast_paths=offered, vhost_loops=vhost_loops(help_text))


def _cpus() -> Cpus:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError("needs two CPUs: one for the writer, one for the reader")
    return Cpus(sender=cpus[0], receiver=cpus[-1])


def _established(frames: Frames, taps: Taps) -> Callable[[], Figure]:
    return lambda: frames.blast(taps, SPORT_ESTABLISHED, established=True)


def _frame_specs(
    settings: Settings, frames: Frames, plain: Sequence[Taps], butterflies: Sequence[Butterfly]
) -> tuple[list[Spec], dict[tuple[str, bool], Spec]]:
    """One-way, established and request/response rows; butterfly's one-way rows by
    (label, established) (the vhost-user rows' references)."""
    size = settings.size
    specs: list[Spec] = []
    filtered: dict[tuple[str, bool], Spec] = {}
    for kind, unit in (("one-way", "Mpps"), ("request/response", "k/s")):
        measure = (
            f"one-way {size} B UDP, new flow"
            if kind == "one-way"
            else f"request/response {size} B, transactions"
        )

        def take(taps: Taps, kind: str = kind) -> Callable[[], Figure]:
            if kind == "one-way":
                return lambda: frames.blast(taps, SPORT_NEW)
            return lambda: frames.ping_pong(taps)

        digits = 3 if unit == "Mpps" else 1
        reference = Spec(
            plain[-1].label,
            measure,
            Series(f"{unit}/core", unit, take(plain[-1])),
            digits=digits,
            is_reference=True,
        )
        specs += [
            *(
                Spec(
                    t.label,
                    measure,
                    Series(f"{unit}/core", unit, take(t)),
                    reference,
                    digits=digits,
                )
                for t in plain[:-1]
            ),
            reference,
        ]
        goal = MIN_FRAME_RATIO
        for butterfly in butterflies:
            label = f"{butterfly.label}, TAP vnics, 20 SG rules"
            spec = Spec(
                label,
                measure,
                Series(f"{unit}/core", unit, take(butterfly.taps)),
                reference,
                "bridge+br_netfilter",
                (">=", goal),
                digits,
            )
            specs.append(spec)
            if kind == "one-way":
                filtered[butterfly.label, False] = spec
                specs.append(
                    Spec(
                        f"{butterfly.label}, TAP vnics, 20 SG rules, sender's default caps",
                        f"{measure} (cap: 1,000 new/s)",
                        Series(f"{unit}/core", unit, take(butterfly.capped)),
                        reference,
                        digits=digits,
                    )
                )
                established = Spec(
                    label,
                    f"one-way {size} B UDP, established flow",
                    Series(f"{unit}/core", unit, _established(frames, butterfly.taps)),
                    reference,
                    "bridge+br_netfilter",
                    (">=", MIN_ESTABLISHED_RATIO),
                    digits,
                )
                specs.append(established)
                filtered[butterfly.label, True] = established
    return specs, filtered


def _traffic_specs(
    settings: Settings,
    cpus: Cpus,
    plain: tuple[Path, Path],
    floors: tuple[Path, Path],
    butterflies: Sequence[Butterfly],
    *,
    liberal: tuple[str, tuple[Path, Path]] | None,
) -> list[Spec]:
    """TCP and latency rows, on one host against the plain bridge, across hosts
    against the plain VXLAN; beside each, the same with the stateful floor
    (:data:`~butterfly_lab.bench.dataplane.STATEFUL_FLOOR`), no target: what any
    stateful filter on the bridge path costs here. ``liberal``: a label and the
    pairs (same host, across) whose TCP takes the fast path (:func:`liberal_pairs`)."""
    seconds = settings.tcp_seconds

    def tcp(path: Path) -> Series:
        return Series("Gbit/s", "Gbit/s", lambda: iperf3_tcp(path, seconds, cpus))

    def latency(test: str) -> Callable[[Path], Series]:
        return lambda path: Series("us", "", lambda: qperf(path, test, seconds, cpus))

    specs: list[Spec] = []
    for side, (scope, baseline, floor, name) in enumerate(
        (
            ("same host", plain[0], floors[0], "bridge"),
            ("across hosts", plain[1], floors[1], "vxlan"),
        )
    ):
        baseline_label = (
            "bridge + br_netfilter (no rules), veths"
            if name == "bridge"
            else "plain VXLAN between two namespace hosts"
        )
        floor_label = f"{baseline_label.replace(' (no rules)', '')}, conntrack floor (2 rules)"
        for measure, make, target, digits in (
            (f"{scope}: TCP, 1 stream", tcp, (">=", MIN_TCP_RATIO), 2),
            (f"{scope}: tcp_lat", latency("tcp_lat"), ("<=", MAX_LATENCY_RATIO), 1),
            (f"{scope}: udp_lat", latency("udp_lat"), ("<=", MAX_LATENCY_RATIO), 1),
        ):
            reference = Spec(
                baseline_label, measure, make(baseline), digits=digits, is_reference=True
            )
            specs.append(reference)
            specs.append(Spec(floor_label, measure, make(floor), reference, name, None, digits))
            rows = [
                (
                    f"{butterfly.label}, NETNS vnics, 20 SG rules",
                    butterfly.same_host if name == "bridge" else butterfly.across,
                )
                for butterfly in butterflies
            ]
            if liberal is not None:
                label, paths = liberal
                rows.append((f"{label}, NETNS vnics, 20 SG rules, {LIBERAL}=1", paths[side]))
            for label, path in rows:
                specs.append(Spec(label, measure, make(path), reference, name, target, digits))
    return specs


def _vhost_specs(
    settings: Settings,
    machine: Vhost,
    ends: Sequence[VhostEnd],
    filtered: dict[tuple[str, bool], Spec],
) -> list[Spec]:
    """Each against the C writer's figure on the same data path and kind of flow
    (switch to guest: new only, as testpmd ``rxonly`` never answers)."""
    size = settings.size
    specs = []
    for end in ends:
        label = f"{end.label}, vhost-user vnic, 20 SG rules"
        into, out = machine.to_switch, machine.to_guest
        for measure, established, take in (
            (f"guest -> switch {size} B, new flow (testpmd txonly)", False,
             functools.partial(into, end, established=False)),
            (f"guest -> switch {size} B, established (testpmd txonly)", True,
             functools.partial(into, end, established=True)),
            (f"switch -> guest {size} B, new flow (testpmd rxonly)", False,
             functools.partial(out, end)),
        ):  # fmt: skip
            series = Series("Mpps/core", "Mpps", take)
            reference = filtered[end.reference, established]
            name = "filtered C writer" + (", established" if established else "")
            specs.append(Spec(label, measure, series, reference, name, (">=", MIN_VHOST_RATIO)))
    return specs


def _label(fast_path: str | None, loop: str | None) -> str:
    return "butterfly" + "".join(
        f" --{option} {value}"
        for option, value in (("fast-path", fast_path), ("vhost-loop", loop))
        if value
    )


def _bench(lab: Lab, settings: Settings, cpus: Cpus, tool: str, folder: str) -> list[Spec]:
    modes: list[str | None] = list(settings.fast_paths) or [None]
    main_loop = settings.vhost_loops[-1] if settings.vhost_loops else None
    other_loops = settings.vhost_loops[:-1]

    def options(position: int) -> list[str]:
        mode, loop = (
            (modes[position // 2], main_loop)
            if position < 2 * len(modes)
            else (modes[0], other_loops[position - 2 * len(modes)])
        )
        return [*(["--fast-path", mode] if mode else []), *(["--vhost-loop", loop] if loop else [])]

    count = 2 * len(modes) + len(other_loops)
    hosts = lab.hosts(count, log_level="warning", extra_args=options)
    try:
        butterflies = [
            butterfly_setup(
                lab, _label(mode, main_loop), index, hosts[2 * index], hosts[2 * index + 1]
            )
            for index, mode in enumerate(modes)
        ]
        ends = [b.vhost for b in butterflies]
        for offset, loop in enumerate(other_loops):
            index = len(modes) + offset
            _, _, end = frame_vnics(hosts[2 * len(modes) + offset], _label(modes[0], loop),
                                    index, "abv")  # fmt: skip
            ends.append(replace(end, reference=butterflies[0].label))
        plain = [
            tc_taps(lab),
            bridge_taps(lab, br_netfilter=False),
            bridge_taps(lab, br_netfilter=True),
        ]
        liberal = None
        if "ebpf" in modes:
            label = _label("ebpf", main_loop)
            index = len(modes) + len(other_loops)
            argv = ["--fast-path", "ebpf", *(["--vhost-loop", main_loop] if main_loop else [])]
            liberal = label, liberal_pairs(lab, label, index, argv)
        mtu = vnic_mtu(hosts[0], "n1001-1")
        plain_paths = bridge_path(lab, mtu), vxlan_path(lab, mtu)
        floors = bridge_path(lab, mtu, stateful=True), vxlan_path(lab, mtu, stateful=True)
        traffic_paths = [
            *plain_paths,
            *floors,
            *(p for b in butterflies for p in (b.same_host, b.across)),
            *(liberal[1] if liberal else ()),
        ]
        for path in traffic_paths:
            start_servers(path.server, cpus)
        for path in traffic_paths:
            check_path(path)
        frames = Frames(tool, cpus, settings)
        frame_specs, filtered = _frame_specs(settings, frames, plain, butterflies)
        traffic_specs = _traffic_specs(
            settings, cpus, plain_paths, floors, butterflies, liberal=liberal
        )
        vhost_specs = _vhost_specs(settings, Vhost(frames, folder), ends, filtered)
        print(
            f"{len(traffic_paths) + len(plain) + len(butterflies) + len(other_loops)} paths"
            " ready; measuring",
            flush=True,
        )
        alternate([spec.series for spec in frame_specs], settings.rounds)
        alternate([spec.series for spec in traffic_specs], settings.rounds)
        alternate([spec.series for spec in vhost_specs], min(settings.rounds, 2))
    except (BenchError, LabError, ClientError, DaemonError):
        for host in hosts:
            log = host.daemon.log()
            if log:
                print(f"{host.name}'s butterflyd log:\n{log[-3000:]}", file=sys.stderr)
        raise
    return [*frame_specs, *traffic_specs, *vhost_specs]


def header(settings: Settings, cpus: Cpus, busy: tuple[float, float]) -> str:
    paths = ", ".join(settings.fast_paths) if settings.fast_paths else "its only data path"
    if settings.vhost_loops:
        paths += f"; vhost-user loops {', '.join(settings.vhost_loops)}"
    return "\n".join(
        [
            f"butterfly-bench frames: data plane on (real butterflyd, {paths});"
            f" {settings.size}-byte UDP frames (no FCS), one write() each from a C writer"
            f" (bfframes) on CPU {cpus.sender}, a C reader on CPU {cpus.receiver} counting"
            " what arrives; every path in one sitting",
            f"{settings.rounds} round(s) of {settings.seconds:g} s per frame measure and"
            f" {settings.tcp_seconds} s per iperf3/qperf test, order reversed each round"
            f" (vhost-user: {min(settings.rounds, 2)} round(s) of {settings.vhost_seconds} s);"
            " median kept, spread = (max - min) / median",
            "per core: frames reaching the receiving tap (its own counts: read, or dropped"
            " for a reader fallen behind) per second of the writer's CPU time (the C writer's,"
            " the vhost workers'; switch to guest: the busier of the writer and the workers);"
            " others' load takes cycles, not frames. Request/response: both ends on one CPU,"
            " transactions per second of their CPU time",
            "cpu: the CPU time of all of them (iperf3: its two ends) per unit of the figure"
            " (tick accounting: softirq work counts in the process it interrupts)",
            f"Linux {os.uname().release}, {os.cpu_count()} CPUs; CPU used by others:"
            f" {busy[0]:.0%} before, {busy[1]:.0%} after"
            + (" (a busy machine: the figures are skewed)" if max(busy) > BUSY else ""),
        ]
    )


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        settings = _settings(args)
        if os.geteuid() != 0:
            raise BenchError("needs root (network namespaces, taps, a kernel data plane)")
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise BenchError(
                f"missing {', '.join(missing)}: apt-get install "
                + " ".join(sorted({TOOLS[tool] for tool in missing}))
            )
        tool = program("bfframes")
        cpus = _cpus()
        busy_before = busy_elsewhere()
        with Lab() as lab, tempfile.TemporaryDirectory(prefix="bffr-", dir=lab.folder) as folder:
            print(f"lab {lab.prefix}: namespaces {lab.prefix}*, files in {lab.folder}", flush=True)
            specs = _bench(lab, settings, cpus, tool, folder)
            busy = (busy_before, busy_elsewhere())
        print(header(settings, cpus, busy))
        print(render(specs))
    except (BenchError, LabError, ClientError, DaemonError) as error:
        print(f"butterfly-bench frames: {error}", file=sys.stderr)
        return 2
    print(f"the run took {time.monotonic() - started:.0f} s, clean-up included")
    return verdict(all(_row(spec).result != "FAIL" for spec in specs), strict=args.strict)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="butterfly-bench frames")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
