"""``butterfly-bench vhost``: the vhost-user backend against its targets and DPDK's own.

Issue 4's benchmark, in one run. A real butterflyd runs in a host namespace of a
:class:`~butterfly_lab.lab.Lab` (kernel data plane, ``--nic-mtu 1500``); its
vhost-user vnic ``src`` and a NETNS vnic ``sink`` (a VM namespace) share a VNI and
the security group ``open``, so every frame crosses the bridge, anti-spoofing and
the conntrack-zoned filter, as in production. Measured:

* frames per second at 64 and 1500 bytes, dpdk-testpmd's virtio-user as the guest:
  ``txonly`` on ``src``'s socket (guest to switch: what the backend takes from the
  ring and writes to the tap, frames addressed to ``sink``), and ``rxonly`` on it
  while a testpmd ``txonly`` on an AF_PACKET port in ``sink`` sends to ``src``
  (switch to guest). The ceiling beside each figure, measured in the same run:
  DPDK's C vhost backend (testpmd ``--vdev net_vhost0``) against the same
  virtio-user frontend, no kernel in between; how busy the vhost workers are while
  the frames flow (under 100 %, the limit is elsewhere); and, guest to switch, what
  the kernel path alone would take per core, from the share of the workers' CPU
  time spent in the kernel (a tap write carries the frame through bridge, filter
  and sink);
* 64 KB TCP segments with TSO, guest to switch: testpmd replays one 65,000-byte TCP
  packet (a pcap port, ``infinite_rx``) through its ``csum`` engine with ``tso set
  1448``, so each frame leaves virtio-user as one GSO segment that the backend hands
  the kernel whole; against the DPDK backend likewise;
* TCP between two QEMU guests (iperf3) over two vhost-user vnics, and the same over
  two TAP vnics, in rounds, median kept (needs qemu-system-x86_64; the guests are
  those of the end-to-end tests, :mod:`butterfly_lab.guest`); then, as the ceiling
  of any vhost-user backend with these guests, the same over DPDK's backend
  (testpmd ``io`` between two ``net_vhost`` ports, no kernel in between);
* the API's latency, one request per frame: ``nic_list`` (the API path alone) and
  ``sg_member_add`` (an nftables set element and a synchronous SQLite commit too),
  idle, while ``src`` runs at full rate, and as a control while a DPDK pair keeps both
  CPUs as busy without vhost traffic of butterfly's (a kernel that must wait for busy
  CPUs, in an nftables commit say, is then told apart from the backend);
* the CPU the vhost workers use with a frontend connected and no traffic.

The frame rates are measured with each of the backend's loops (``--vhost-loop``
of butterflyd, the daemon restarted on the same state in between): the Python
loop first, the baseline, then the C loop, whose rows show the ratio to it. The
other measures run on the last loop measured (the C one unless ``--loop`` says).

CPUs: the vhost workers are pinned to the first CPU, testpmd's forwarding cores to
the last (the source and sink of the switch-to-guest measure share it); DPDK's
backend takes the first CPU in its measures; the guests and the workers are left to
the scheduler for the iperf3 rounds. The machine needs two CPUs, and other load
skews every figure: the header says how busy the machine was before the run.

It prints one table (measure, butterfly, reference, target, result); figures below
target show FAIL. The exit code is 0 when the benchmark ran, whatever the figures;
with ``--strict``, 1 when a target is missed; 2 when it could not run.
"""

import argparse
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import tap_name
from butterfly.errors import ClientError
from butterfly_lab import guest
from butterfly_lab.agent import internet_checksum
from butterfly_lab.bench.figures import BenchError, busy_elsewhere, percentile, table, verdict
from butterfly_lab.daemon import DaemonError
from butterfly_lab.lab import Host, Lab, LabError, Vm, wait_for

__all__ = ["add_arguments", "parse_pmd_stats", "run"]

MIN_MPPS = 1.0
"""Per busy vnic, 64-byte frames, each direction."""
MIN_TSO_GBITS = 10.0
GUEST_MARGIN = 0.95
"""vhost-user guests at least as fast as tap guests, less this much run-to-run noise."""
MAX_API_P99_MS = 5.0
"""butterfly-bench api's target, which must hold while packets flow."""
MAX_IDLE_CPU = 0.01
"""An idle worker sleeps: under 1% of a CPU."""
OTHER_LOAD = 0.05
"""CPU use by other processes (before the run) above which the header warns."""

LOOPS = ("python", "c")
"""butterflyd's --vhost-loop values, the baseline (Python) first."""
LOOP_NAMES = {"python": "Python loop", "c": "C loop"}
NIC_MTU = 1500
FRAME_SIZES = (64, 1500)
TSO_FRAME = 65000
TSO_MSS = 1448
VNI, GUEST_VNI = 4242, 4343
SRC_MAC, SINK_MAC = "52:54:00:42:00:01", "52:54:00:42:00:02"
SRC_IP, SINK_IP = "10.42.0.1", "10.42.0.2"
OUTSIDE_IP = "198.18.0.2"
"""Destination of the TSO segments: no one's, so the sink's kernel drops them unanswered."""
TOOLS = {"dpdk-testpmd": "dpdk-dev", "iperf3": "iperf3", "ping": "iputils-ping"}
"""The commands the benchmark runs, and the Debian packages holding them."""
PMD_MEMORY_MB = 512
TSO_PMD_MEMORY_MB = 1536
"""Room for 8,192 mbufs of 64 KB, which the 65,000-byte packets need (one segment each)."""


@dataclass(frozen=True, slots=True)
class Settings:
    seconds: int
    """Samples (one per second) kept from each testpmd measure, after the warm-up."""
    warmup: int
    rounds: int
    """iperf3 rounds per kind of vnic (the median is kept)."""
    iperf_seconds: int
    requests: int
    """API requests timed idle, and as many under load."""
    idle_seconds: float


FULL = Settings(seconds=5, warmup=2, rounds=3, iperf_seconds=4, requests=1000, idle_seconds=3)
QUICK = Settings(seconds=1, warmup=1, rounds=1, iperf_seconds=1, requests=50, idle_seconds=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run for CI: {QUICK.seconds} s per testpmd measure, {QUICK.rounds}"
        f" iperf3 round of {QUICK.iperf_seconds} s, {QUICK.requests} API requests",
    )
    parser.add_argument(
        "--seconds",
        type=int,
        metavar="S",
        help=f"seconds kept per testpmd measure (default {FULL.seconds})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"iperf3 rounds per kind of vnic (default {FULL.rounds})",
    )
    parser.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help=f"API requests per latency figure (default {FULL.requests})",
    )
    parser.add_argument(
        "--loop",
        choices=("both", *LOOPS),
        default="both",
        help="the vhost loops whose frame rates are measured (default both: python, then c)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


# ---------------------------------------------------------------- testpmd


@dataclass(frozen=True, slots=True)
class PortStats:
    """One of testpmd's per-second statistics for one port."""

    rx_pps: int
    rx_bps: int
    tx_pps: int
    tx_bps: int


_BLOCK = re.compile(r"NIC statistics for port (\d+)\s+#+(.*?)#{20,}", re.S)
_THROUGHPUT = re.compile(
    r"Rx-pps:\s+(\d+)\s+Rx-bps:\s+(\d+).*?Tx-pps:\s+(\d+)\s+Tx-bps:\s+(\d+)", re.S
)


def parse_pmd_stats(output: str, port: int = 0) -> list[PortStats]:
    """testpmd's ``--stats-period`` reports for ``port``, oldest first."""
    stats = []
    for number, block in _BLOCK.findall(output):
        found = _THROUGHPUT.search(block)
        if int(number) == port and found is not None:
            stats.append(PortStats(*(int(value) for value in found.groups())))
    return stats


class Pmd:
    """One dpdk-testpmd, not interactive, printing port statistics every second.

    ``core`` runs its forwarding; its main thread (which mostly sleeps) takes the
    machine's other end. Killed by pid in :meth:`stop`, which also removes its
    runtime folder.
    """

    _serial = 0

    def __init__(
        self,
        folder: str,
        *,
        vdevs: Sequence[str],
        mode: str,
        core: int,
        main_core: int,
        memory_mb: int = PMD_MEMORY_MB,
        netns: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        Pmd._serial += 1
        self.prefix = f"bfvb{os.getpid()}p{Pmd._serial}"
        self.log_path = os.path.join(folder, f"{self.prefix}.log")
        argv = [
            *(["ip", "netns", "exec", netns] if netns else []),
            "dpdk-testpmd", "-l", f"{core},{main_core}", "--main-lcore", str(main_core),
            "--no-pci", "--no-huge", "-m", str(memory_mb), "--file-prefix", self.prefix,
            *(arg for vdev in vdevs for arg in ("--vdev", vdev)),
            "--", "--total-num-mbufs=8192", f"--forward-mode={mode}", "--stats-period", "1",
            *extra,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as file:
            return file.read()

    def steady(self, field: str, settings: Settings, timeout: float = 60) -> float:
        """The median of ``field`` (a :class:`PortStats` name) once traffic flows,
        skipping the warm-up; 0 when it never flows."""
        deadline = time.monotonic() + timeout
        wanted = settings.warmup + settings.seconds
        while time.monotonic() < deadline:
            values = [getattr(s, field) for s in parse_pmd_stats(self.output())]
            flowing = next((i for i, value in enumerate(values) if value), None)
            if flowing is not None and len(values) - flowing >= wanted:
                kept = values[flowing + settings.warmup : flowing + wanted]
                return float(statistics.median(kept))
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        tail = "\n".join(self.output().splitlines()[-15:])
        print(f"warning: testpmd {self.prefix} carried no traffic:\n{tail}", file=sys.stderr)
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(f"/var/run/dpdk/{self.prefix}", ignore_errors=True)


@contextlib.contextmanager
def pmds() -> Iterator[list[Pmd]]:
    """The testpmd processes one measure starts: all stopped when it ends."""
    started: list[Pmd] = []
    try:
        yield started
    finally:
        for pmd in reversed(started):
            pmd.stop()


def virtio_user(socket_path: str) -> str:
    return f"net_virtio_user0,path={socket_path},mac={SRC_MAC}"


def write_tso_pcap(path: str) -> None:
    """A pcap of one 65,000-byte TCP packet from ``src`` to ``sink``'s MAC (for
    testpmd's csum engine to send as a TSO segment); its checksum is testpmd's job."""
    ip_length = TSO_FRAME - 14
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, ip_length, 1, 0x4000, 64, 6, 0,
        ipaddress.IPv4Address(SRC_IP).packed, ipaddress.IPv4Address(OUTSIDE_IP).packed,
    )  # fmt: skip
    ip = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    tcp = struct.pack("!HHIIBBHHH", 40000, 9, 1, 1, 5 << 4, 0x10, 65535, 0, 0)
    frame = (
        bytes.fromhex(SINK_MAC.replace(":", "") + SRC_MAC.replace(":", "")) + b"\x08\x00"
        + ip + tcp + bytes(ip_length - 40)
    )  # fmt: skip
    with open(path, "wb") as file:
        file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        file.write(struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame)


# ---------------------------------------------------------------- the measures


@dataclass(frozen=True, slots=True)
class Cpus:
    switch: int
    """The vhost workers', and DPDK's backend's."""
    generator: int
    """testpmd's forwarding cores as the guest (and as the switch-to-guest source)."""


@dataclass
class Bench:
    """What the measures share: the lab host, its vnics, a work folder."""

    host: Host
    sink: Vm
    socket: str
    folder: str
    cpus: Cpus
    settings: Settings

    def pmd(self, started: list[Pmd], **options: Any) -> Pmd:
        options.setdefault("main_core", self.cpus.switch)
        pmd = Pmd(self.folder, **options)
        started.append(pmd)
        return pmd

    def dpdk_backend(self, started: list[Pmd], mode: str) -> str:
        """DPDK's C vhost backend on the switch CPU; its socket, once it exists."""
        path = os.path.join(self.folder, f"dpdk-{len(started)}.sock")
        self.pmd(
            started,
            vdevs=[f"net_vhost0,iface={path},queues=1,tso=1"],
            mode=mode,
            core=self.cpus.switch,
            main_core=self.cpus.generator,
        )
        wait_for(lambda: os.path.exists(path), "DPDK's vhost backend to listen", timeout=30)
        return path


@dataclass(frozen=True, slots=True)
class Forwarded:
    pps: float
    busy: float | None = None
    """The vhost workers' CPU time per second while the frames flow (1.0: one core
    saturated); None for DPDK."""
    kernel_share: float | None = None
    """Of that time, the part spent in the kernel. Guest to switch, that is the tap
    writes, each carrying a frame through bridge, filter and into the sink."""

    def cpu_per_frame(self) -> tuple[float, float] | None:
        """Microseconds of worker CPU per frame, and the part of it in user space
        (the backend's own work): CPU time, so the figure holds on a busy machine
        where the rates do not."""
        if not self.busy or self.kernel_share is None or not self.pps:
            return None
        total = self.busy / self.pps * 1e6
        return total, total * (1 - self.kernel_share)

    def kernel_ceiling(self) -> float | None:
        """Frames per second per core the kernel path alone would take, had the
        Python part cost nothing."""
        if not self.busy or not self.kernel_share or not self.pps:
            return None
        return self.pps / (self.busy * self.kernel_share)


def worker_load(bench: Bench, pps: float, seconds: float = 1.0) -> Forwarded:
    """The workers' CPU use over ``seconds`` while traffic flows at ``pps``."""
    workers = worker_pids(bench.host.daemon.pid)
    user = sum(_cpu_seconds(pid, user=True) for pid in workers)
    kernel = sum(_cpu_seconds(pid, user=False) for pid in workers)
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    user = sum(_cpu_seconds(pid, user=True) for pid in workers) - user
    kernel = sum(_cpu_seconds(pid, user=False) for pid in workers) - kernel
    share = kernel / (user + kernel) if user + kernel else None
    return Forwarded(pps, (user + kernel) / elapsed, share)


def guest_to_switch(bench: Bench, size: int, dpdk: bool) -> Forwarded:
    """Frames per second a testpmd ``txonly`` guest gets through (to ``sink``'s MAC)."""
    with pmds() as started:
        socket_path = bench.dpdk_backend(started, "rxonly") if dpdk else bench.socket
        guest = bench.pmd(
            started,
            vdevs=[virtio_user(socket_path)],
            mode="txonly",
            core=bench.cpus.generator,
            extra=[f"--txpkts={size}", f"--eth-peer=0,{SINK_MAC}"],
        )
        pps = guest.steady("tx_pps", bench.settings)
        return Forwarded(pps) if dpdk or not pps else worker_load(bench, pps)


def switch_to_guest(bench: Bench, size: int, dpdk: bool) -> Forwarded:
    """Frames per second a testpmd ``rxonly`` guest receives: from DPDK's backend's
    ``txonly``, or for butterfly from a testpmd ``txonly`` on ``sink``'s interface."""
    with pmds() as started:
        if dpdk:
            socket_path = bench.dpdk_backend(started, "txonly")
        else:
            socket_path = bench.socket
            bench.pmd(
                started,
                vdevs=[f"net_af_packet0,iface={tap_name('sink')}"],
                mode="txonly",
                core=bench.cpus.generator,
                netns=bench.sink.name,
                extra=[f"--txpkts={size}", f"--eth-peer=0,{SRC_MAC}"],
            )
        guest = bench.pmd(
            started, vdevs=[virtio_user(socket_path)], mode="rxonly", core=bench.cpus.generator
        )
        pps = guest.steady("rx_pps", bench.settings)
        return Forwarded(pps) if dpdk or not pps else worker_load(bench, pps)


def tso_to_switch(bench: Bench, dpdk: bool) -> float:
    """Gbit/s of 65,000-byte TSO segments a testpmd guest gets through."""
    pcap = os.path.join(bench.folder, "tso.pcap")
    write_tso_pcap(pcap)
    commands = os.path.join(bench.folder, "tso.testpmd")
    with open(commands, "w", encoding="ascii") as file:
        file.write(
            "port stop all\ncsum set ip sw 0\ncsum set tcp hw 0\n"
            f"tso set {TSO_MSS} 0\nport start all\n"
        )
    with pmds() as started:
        socket_path = bench.dpdk_backend(started, "rxonly") if dpdk else bench.socket
        guest = bench.pmd(
            started,
            vdevs=[virtio_user(socket_path), f"net_pcap0,rx_pcap={pcap},infinite_rx=1"],
            mode="csum",
            core=bench.cpus.generator,
            memory_mb=TSO_PMD_MEMORY_MB,
            # the csum engine rewrites MACs: the peer's is the destination
            extra=["--mbuf-size=65535", f"--cmdline-file={commands}", f"--eth-peer=0,{SINK_MAC}"],
        )
        return guest.steady("tx_bps", bench.settings) / 1e9


@dataclass(frozen=True, slots=True)
class Latency:
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True, slots=True)
class ApiLatencies:
    """``nic_list`` (the API path alone) and ``sg_member_add`` (an nftables set
    element and a synchronous SQLite commit too) under one load."""

    nic_list: Latency
    member_add: Latency


class ApiProbe:
    """Times API requests one by one, one request per frame, as orchestrators send them."""

    def __init__(self, bench: Bench) -> None:
        self._bench = bench
        self._members = 0

    def _timed(self, requests: Sequence[MessageV0.Request]) -> Latency:
        timings = []
        for request in requests:
            started = time.perf_counter()
            self._bench.host.call(request)
            timings.append((time.perf_counter() - started) * 1e3)
        return Latency(percentile(timings, 0.5), percentile(timings, 0.99))

    def measure(self) -> ApiLatencies:
        count = self._bench.settings.requests
        adds = []
        for _ in range(count):
            self._members += 1
            request = MessageV0.Request()
            request.sg_member_add.sg_id = "api"
            request.sg_member_add.member = str(ipaddress.IPv4Address("10.200.0.0") + self._members)
            adds.append(request)
        return ApiLatencies(
            self._timed([MessageV0.Request(nic_list=True)] * count), self._timed(adds)
        )


def api_latencies(bench: Bench) -> tuple[ApiLatencies, ApiLatencies, ApiLatencies, float]:
    """The API idle; while ``src`` takes 64-byte frames at full rate (and that rate);
    and, as a control, while a DPDK pair keeps both CPUs as busy without any vhost
    traffic of butterfly's (what is left is the kernel's share, not the backend's)."""
    probe = ApiProbe(bench)
    idle = probe.measure()
    warm_up = Settings(1, bench.settings.warmup, 1, 1, 0, 0)
    with pmds() as started:
        guest = bench.pmd(
            started,
            vdevs=[virtio_user(bench.socket)],
            mode="txonly",
            core=bench.cpus.generator,
            extra=["--txpkts=64", f"--eth-peer=0,{SINK_MAC}"],
        )
        if not guest.steady("tx_pps", warm_up):
            raise BenchError("testpmd sent nothing for the API-under-load measure")
        loaded = probe.measure()
        stats = parse_pmd_stats(guest.output())
        rate = float(stats[-1].tx_pps) if stats else 0.0
    with pmds() as started:
        socket_path = bench.dpdk_backend(started, "rxonly")
        guest = bench.pmd(
            started, vdevs=[virtio_user(socket_path)], mode="txonly", core=bench.cpus.generator
        )
        if not guest.steady("tx_pps", warm_up):
            raise BenchError("testpmd sent nothing for the busy-CPUs control measure")
        busy = probe.measure()
    return idle, loaded, busy, rate


def worker_pids(daemon_pid: int) -> list[int]:
    """The daemon's children: its vhost worker processes."""
    children: list[int] = []
    for task in Path(f"/proc/{daemon_pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children += [int(pid) for pid in (task / "children").read_text().split()]
    return children


def _cpu_seconds(pid: int, *, user: bool | None = None) -> float:
    """CPU time of ``pid``: in user mode, in the kernel, or (None) both."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = {True: int(fields[11]), False: int(fields[12])}
    used = ticks[user] if user is not None else sum(ticks.values())
    return used / os.sysconf("SC_CLK_TCK")


def idle_cpu(bench: Bench) -> float:
    """The workers' share of one CPU while a frontend is connected and nothing flows."""
    with pmds() as started:
        bench.pmd(started, vdevs=[virtio_user(bench.socket)], mode="rxonly",
                  core=bench.cpus.generator)  # fmt: skip
        time.sleep(bench.settings.warmup + 1)
        workers = worker_pids(bench.host.daemon.pid)
        before = sum(_cpu_seconds(pid) for pid in workers)
        started_at = time.monotonic()
        time.sleep(bench.settings.idle_seconds)
        used = sum(_cpu_seconds(pid) for pid in workers) - before
        return used / (time.monotonic() - started_at)


# ---------------------------------------------------------------- guests


_RECEIVER = re.compile(r"([0-9.]+) ([KMG]?)bits/sec\s+receiver")
_UNITS = {"": 1e-9, "K": 1e-6, "M": 1e-3, "G": 1.0}


def parse_receiver_gbits(output: str) -> float:
    """The receiver's rate from iperf3's text report, in Gbit/s."""
    found = _RECEIVER.search(output)
    if found is None:
        raise BenchError(f"iperf3 printed no receiver rate: {output[-500:]!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


@dataclass(frozen=True, slots=True)
class GuestRates:
    """Median iperf3 Gbit/s between the same two kinds of QEMU guests."""

    vhost: float
    """Over butterfly's vhost-user vnics."""
    tap: float
    """Over butterfly's TAP vnics (QEMU's own virtio-net backend on a tap)."""
    dpdk: float
    """Over DPDK's vhost-user backend (testpmd ``io`` between its two ports, polling a
    core, no kernel, no filter): what the best backend gets from guests on this
    machine, measured alone after the others (its polling core would slow them)."""


def guests_tcp(bench: Bench) -> GuestRates | str:
    """iperf3 between two guests over each kind of vnic; or why it could not run."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    try:
        image = guest.build_image()
        vhost, tap = _butterfly_guests_tcp(bench, image)
        return GuestRates(vhost, tap, _dpdk_guests_tcp(bench, image))
    except guest.GuestError as error:
        raise BenchError(f"guests: {error}") from error


def _guest(
    image: guest.GuestImage,
    name: str,
    nic: guest.TapNic | guest.VhostUserNic,
    ip: str,
    netns: str | None = None,
) -> guest.Guest:
    return guest.Guest(
        image, netns=netns, name=f"bfvb{os.getpid()}{name}", nic=nic, ipv4=f"{ip}/24",
        # the device vhost-user guests need under TCG (no MSI-X), for every kind
        extra_qemu_args=["-global", "virtio-net-pci.vectors=0"],
    )  # fmt: skip


def _iperf3(bench: Bench, client: guest.Guest, server_ip: str) -> float:
    seconds = bench.settings.iperf_seconds
    output = client.check(
        "for try in 1 2 3 4 5; do "
        f"iperf3 -c {server_ip} -t {seconds} && exit 0; sleep 0.5; done; exit 1",
        timeout=5 * seconds + 60,
    )
    return parse_receiver_gbits(output)


def _butterfly_guests_tcp(bench: Bench, image: guest.GuestImage) -> tuple[float, float]:
    host = bench.host
    pairs: dict[str, list[guest.Guest]] = {"vhost": [], "tap": []}
    ips = {"vhost": ("10.43.0.1", "10.43.0.2"), "tap": ("10.44.0.1", "10.44.0.2")}
    with contextlib.ExitStack() as stack:
        for kind, (one, two) in ips.items():
            for end, ip in enumerate((one, two), start=1):
                vnic_id = f"{kind[0]}{end}"
                mac = f"52:54:00:43:0{int(kind == 'tap')}:0{end}"
                nic = MessageV0.Nic(id=vnic_id, mac=mac, vni=GUEST_VNI, ip=[ip],
                                    security_group=["open"])  # fmt: skip
                if kind == "tap":
                    nic.type, nic.vni = MessageV0.Nic.TAP, GUEST_VNI + 1
                response = host.call(MessageV0.Request(nic_add=nic))
                attach = (
                    guest.TapNic(tap_name(vnic_id), mac=mac)
                    if kind == "tap"
                    else guest.VhostUserNic(Path(response.nic_add.path), mac=mac)
                )
                made = _guest(
                    image, vnic_id, attach, ip, netns=host.name if kind == "tap" else None
                )
                stack.callback(made.close)
                pairs[kind].append(made)
        guest.boot_all([made for pair in pairs.values() for made in pair])
        for _, server in pairs.values():
            server.check("iperf3 -s -D")
        rates: dict[str, list[float]] = {"vhost": [], "tap": []}
        for round_ in range(bench.settings.rounds):
            for kind in ["vhost", "tap"] if round_ % 2 == 0 else ["tap", "vhost"]:
                rates[kind].append(_iperf3(bench, pairs[kind][0], ips[kind][1]))
    return statistics.median(rates["vhost"]), statistics.median(rates["tap"])


def _dpdk_guests_tcp(bench: Bench, image: guest.GuestImage) -> float:
    sockets = [os.path.join(bench.folder, f"guest-{end}.sock") for end in (1, 2)]
    ips = ("10.45.0.1", "10.45.0.2")
    with pmds() as started, contextlib.ExitStack() as stack:
        bench.pmd(
            started,
            vdevs=[
                f"net_vhost{end},iface={path},queues=1,tso=1" for end, path in enumerate(sockets)
            ],
            mode="io",
            core=bench.cpus.switch,
            main_core=bench.cpus.generator,
        )
        wait_for(
            lambda: all(map(os.path.exists, sockets)), "DPDK's vhost backend to listen", timeout=30
        )
        pair = []
        for end, (path, ip) in enumerate(zip(sockets, ips, strict=True), start=1):
            nic = guest.VhostUserNic(Path(path), mac=f"52:54:00:43:02:0{end}")
            made = _guest(image, f"d{end}", nic, ip)
            stack.callback(made.close)
            pair.append(made)
        guest.boot_all(pair)
        pair[1].check("iperf3 -s -D")
        rates = [_iperf3(bench, pair[0], ips[1]) for _ in range(bench.settings.rounds)]
    return statistics.median(rates)


# ---------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Row:
    measure: str
    butterfly: str
    reference: str
    target: str
    result: str


def _judge(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _mpps(pps: float) -> str:
    return f"{pps / 1e6:.3f} Mpps"


def frame_rows(
    results: dict[tuple[str, int, bool], Forwarded],
    loop: str,
    baseline: dict[tuple[str, int, bool], Forwarded] | None = None,
) -> list[Row]:
    """``loop``'s rows; with ``baseline`` (the Python loop's results), its ratio to it."""
    rows = []
    for direction, label in (("tx", "guest -> switch"), ("rx", "switch -> guest")):
        mode = "txonly" if direction == "tx" else "rxonly"
        for size in FRAME_SIZES:
            forwarded = results[direction, size, False]
            ours, dpdk = forwarded.pps, results[direction, size, True].pps
            gbits = f" ({ours * size * 8 / 1e9:.2f} Gbit/s)" if size > 64 else ""
            reference = f"DPDK vhost {_mpps(dpdk)}"
            if baseline is not None:
                before = baseline[direction, size, False].pps
                ratio = f" (x{ours / before:.2f})" if before else ""
                reference = f"Python loop {_mpps(before)}{ratio}; {reference}"
            if forwarded.busy is not None:
                reference += f"; workers {forwarded.busy * 100:.0f}% busy"
            ceiling = forwarded.kernel_ceiling()
            if direction == "tx" and ceiling is not None and forwarded.kernel_share is not None:
                reference += (
                    f", {forwarded.kernel_share * 100:.0f}% in the kernel:"
                    f" kernel path alone <= {_mpps(ceiling)}/core"
                )
            cost = forwarded.cpu_per_frame()
            if cost is not None:
                reference += f"; {cost[0]:.2f} us of worker CPU/frame ({cost[1]:.2f} in user space)"
            target, result = "-", "-"
            if size == 64:
                target, result = f">= {MIN_MPPS:g} Mpps", _judge(ours >= MIN_MPPS * 1e6)
            rows.append(Row(
                f"{label}, {size} B frames (testpmd {mode}), {LOOP_NAMES[loop]}",
                _mpps(ours) + gbits,
                reference,
                target,
                result,
            ))  # fmt: skip
    return rows


def tso_row(ours: float, dpdk: float, loop: str) -> Row:
    return Row(
        f"guest -> switch, {TSO_FRAME:,} B TSO segments (testpmd csum + tso), {loop}",
        f"{ours:.1f} Gbit/s",
        f"DPDK vhost {dpdk:.1f} Gbit/s",
        f">= {MIN_TSO_GBITS:g} Gbit/s",
        _judge(ours >= MIN_TSO_GBITS),
    )


def guest_row(tcp: GuestRates | str, loop: str) -> Row:
    measure = f"TCP between two QEMU guests (iperf3, TCG), {loop}"
    target = f">= tap guests (-{(1 - GUEST_MARGIN) * 100:.0f}% noise)"
    if isinstance(tcp, str):
        return Row(measure, "n/a", f"n/a: {tcp}", target, "n/a")
    return Row(
        measure,
        f"vhost-user {tcp.vhost:.2f} Gbit/s (x{tcp.vhost / tcp.tap:.2f})",
        f"tap {tcp.tap:.2f} Gbit/s; DPDK vhost {tcp.dpdk:.2f} Gbit/s (x{tcp.dpdk / tcp.tap:.2f})",
        target,
        _judge(tcp.vhost >= GUEST_MARGIN * tcp.tap),
    )


def api_rows(
    idle: ApiLatencies, loaded: ApiLatencies, busy: ApiLatencies, rate: float, loop: str
) -> list[Row]:
    def cell(latency: Latency) -> str:
        return f"{latency.p99_ms:.2f} ms (p50 {latency.p50_ms:.2f})"

    target = f"< {MAX_API_P99_MS:g} ms"
    return [
        Row(
            f"API p99, nic_list, src at full rate ({_mpps(rate)}), {loop}",
            cell(loaded.nic_list),
            f"idle {cell(idle.nic_list)}",
            target,
            _judge(loaded.nic_list.p99_ms < MAX_API_P99_MS),
        ),
        Row(
            f"API p99, sg_member_add, src at full rate ({_mpps(rate)}), {loop}",
            cell(loaded.member_add),
            f"idle {cell(idle.member_add)}; CPUs busy, no vhost traffic {cell(busy.member_add)}",
            target,
            _judge(loaded.member_add.p99_ms < MAX_API_P99_MS),
        ),
    ]


def idle_row(share: float, loop: str) -> Row:
    return Row(
        f"vhost workers' CPU, frontend connected, no traffic, {loop}",
        f"{share * 100:.2f} %",
        "-",
        f"< {MAX_IDLE_CPU * 100:g} %",
        _judge(share < MAX_IDLE_CPU),
    )


def render(rows: Sequence[Row]) -> str:
    """The header is Row's field names."""
    names = [field.name for field in fields(Row)]
    return table(names, ([getattr(row, name) for name in names] for row in rows))


# ---------------------------------------------------------------- the run


def _settings(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else FULL
    return Settings(
        seconds=args.seconds or base.seconds,
        warmup=base.warmup,
        rounds=args.rounds or base.rounds,
        iperf_seconds=base.iperf_seconds,
        requests=args.requests or base.requests,
        idle_seconds=base.idle_seconds,
    )


def _cpus() -> Cpus:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError("needs two CPUs: one for the vhost workers, one for testpmd")
    return Cpus(switch=cpus[0], generator=cpus[-1])


def _pin_workers(bench: Bench) -> None:
    for pid in worker_pids(bench.host.daemon.pid):
        os.sched_setaffinity(pid, {bench.cpus.switch})


def use_loop(bench: Bench, loop: str) -> None:
    """Restart butterflyd on the same state with ``--vhost-loop loop``: the same
    vnics and socket, frames moved by the other loop."""
    daemon = bench.host.daemon
    daemon.extra_args = [*daemon.extra_args[:-2], "--vhost-loop", loop]
    bench.host.restart()
    _pin_workers(bench)
    bench.sink.ping(SRC_IP, count=1, deadline=2)


def _setup(lab: Lab, folder: str, settings: Settings, cpus: Cpus, loop: str) -> Bench:
    host = lab.host(
        extra_args=["--nic-mtu", str(NIC_MTU), "--vhost-loop", loop], log_level="warning"
    )
    host.cli(
        "sg", "add", "open",
        "+", "sg", "rule", "add", "open", "--ip-proto", "all", "--cidr", "0.0.0.0/0",
        "+", "sg", "add", "api",
    )  # fmt: skip
    nic = MessageV0.Nic(id="src", mac=SRC_MAC, vni=VNI, ip=[SRC_IP], security_group=["open"])
    socket_path = host.call(MessageV0.Request(nic_add=nic)).nic_add.path
    sink = lab.vm()
    host.add_vnic("sink", vm=sink, mac=SINK_MAC, vni=VNI, ips=[SINK_IP], security_groups=["open"])
    # The bridge learns where sink's MAC is (otherwise frames to it are flooded).
    sink.ping(SRC_IP, count=1, deadline=2)
    bench = Bench(host, sink, socket_path, folder, cpus, settings)
    _pin_workers(bench)
    return bench


def _bench(lab: Lab, settings: Settings, cpus: Cpus, loops: Sequence[str]) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bfvb-", dir=lab.folder) as folder:
        bench = _setup(lab, folder, settings, cpus, loops[0])
        reference: dict[tuple[str, int, bool], Forwarded] = {}
        for size in FRAME_SIZES:
            reference["tx", size, True] = guest_to_switch(bench, size, True)
            reference["rx", size, True] = switch_to_guest(bench, size, True)
            print(f"{size} B frames, DPDK: done", flush=True)
        frames: dict[str, dict[tuple[str, int, bool], Forwarded]] = {}
        for loop in loops:
            if loop != loops[0]:
                use_loop(bench, loop)
            measured = frames[loop] = dict(reference)
            for size in FRAME_SIZES:
                measured["tx", size, False] = guest_to_switch(bench, size, False)
                measured["rx", size, False] = switch_to_guest(bench, size, False)
                print(f"{size} B frames, butterfly, {LOOP_NAMES[loop]}: done", flush=True)
        tso = tso_to_switch(bench, dpdk=False), tso_to_switch(bench, dpdk=True)
        print("TSO segments: done", flush=True)
        api = api_latencies(bench)
        print("API latency: done", flush=True)
        share = idle_cpu(bench)
        for pid in worker_pids(bench.host.daemon.pid):
            os.sched_setaffinity(pid, os.sched_getaffinity(0))
        tcp = guests_tcp(bench)
        print("guests: done", flush=True)
    baseline = frames.get("python")
    rows = [
        row
        for loop in loops
        for row in frame_rows(frames[loop], loop, baseline if loop != "python" else None)
    ]
    last = LOOP_NAMES[loops[-1]]
    return [
        *rows,
        tso_row(*tso, last),
        guest_row(tcp, last),
        *api_rows(*api, last),
        idle_row(share, last),
    ]


def header(settings: Settings, cpus: Cpus, busy: float) -> str:
    return (
        f"butterfly-bench vhost: {settings.seconds} s per testpmd measure after"
        f" {settings.warmup} s of warm-up (median of per-second rates);"
        f" {settings.rounds} iperf3 round(s) of {settings.iperf_seconds} s;"
        f" {settings.requests} API requests per latency figure\n"
        f"vhost workers on CPU {cpus.switch}, testpmd forwarding on CPU {cpus.generator};"
        f" vnic MTU {NIC_MTU}; CPUs busy before the run: {busy * 100:.0f}%"
        + (" (other load: figures are skewed)" if busy > OTHER_LOAD else "")
    )


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        settings = _settings(args)
        if os.geteuid() != 0:
            raise BenchError("needs root (network namespaces, a kernel data plane, DPDK)")
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise BenchError(
                f"missing {', '.join(missing)}: apt-get install "
                + " ".join(sorted({TOOLS[tool] for tool in missing}))
            )
        cpus = _cpus()
        busy = busy_elsewhere()
        with Lab() as lab:
            print(f"lab {lab.prefix}: namespaces {lab.prefix}*, files in {lab.folder}", flush=True)
            loops = LOOPS if args.loop == "both" else (args.loop,)
            rows = _bench(lab, settings, cpus, loops)
        print(header(settings, cpus, busy))
        print(render(rows))
    except (BenchError, LabError, ClientError, DaemonError) as error:
        print(f"butterfly-bench vhost: {error}", file=sys.stderr)
        return 2
    print(f"the run took {time.monotonic() - started:.0f} s, clean-up included")
    return verdict(all(row.result != "FAIL" for row in rows), strict=args.strict)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="butterfly-bench vhost")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
