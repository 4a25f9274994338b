"""``butterfly-bench soak``: the daemon's memory, descriptors and latency under vnic churn.

A host lives for months while VMs come and go; a daemon that keeps a few KB
of every vnic it ever had grows until it is restarted. This benchmark runs
one real ``butterflyd`` (kernel data plane on, one vhost-user worker) in a
:class:`~butterfly_lab.lab.Lab` host and repeats a *cycle* of the churn a
cloud host sees, ten requests:

* ``nic_add`` of a TAP vnic (three security groups, IP anti-spoofing) into a
  VNI that a vnic which stays all along shares, then of a NETNS vnic (into a
  VM namespace) and a vhost-user vnic into a VNI of their own, which the
  first of them creates;
* a member added to and a rule added to groups the vnics use, both taken
  out again;
* ``nic_del`` of the three vnics, the last of which removes their VNI.

After a warm-up (caches fill, the allocator finds its level), it samples
every ``--every`` cycles the daemon's processes (the daemon and its
vhost-user workers): resident and proportional memory (VmRSS, Pss), open
descriptors and threads, and the requests' latency over those cycles.
Memory is shown three ways: RSS (judged), PSS and USS (private pages only);
a PSS that moves while RSS and USS stay is other processes starting or
ending that share pages (libpython) with the daemon. The
first sample, right after the warm-up, is the baseline every later one is
compared with; the headline is the growth per 1,000 cycles (a
least-squares slope over the samples, so one noisy sample does not decide
it). At the end it checks that the kernel's objects (links, forwarding
entries, the whole ruleset) and the daemon's state are exactly as before the
warm-up.

The exit code is 0 when the benchmark ran, whatever the figures; with
``--strict``, 1 when a target is missed; 2 when it could not run.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.errors import ClientError
from butterfly_lab.bench.figures import BenchError, busy_elsewhere, percentile, table, verdict
from butterfly_lab.daemon import DaemonError
from butterfly_lab.lab import Host, Lab, LabError, Vm

__all__ = [
    "Churn",
    "Sample",
    "Soak",
    "add_arguments",
    "growth_per_1000",
    "lab_host",
    "process_tree",
    "render",
    "run",
    "sample_processes",
    "soak",
]

MAX_GROWTH_MB = 5.0
"""Over 10,000 cycles, all the daemon's processes together."""
TARGET_CYCLES = 10_000
SETTLE_SECONDS = 30.0
"""How long the kernel may take to catch up with the deletions after the last cycle."""
REQUESTS_PER_CYCLE = 10

GROUPS = ("soak-a", "soak-b", "soak-c")
SHARED_VNI = 1700
"""The TAP vnic's VNI, which a vnic staying all along keeps alive."""
OWN_VNI = 1701
"""The VNI the NETNS and vhost-user vnics create and remove at every cycle."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cycles",
        type=int,
        default=TARGET_CYCLES,
        metavar="N",
        help=f"measured cycles, after the warm-up (default {TARGET_CYCLES:,};"
        f" {REQUESTS_PER_CYCLE} requests each)",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=1000,
        metavar="N",
        help="cycles between two samples (default 1,000)",
    )
    parser.add_argument(
        "--warm-up",
        type=int,
        default=300,
        metavar="N",
        help="cycles before the baseline sample (default 300)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


# --------------------------------------------------------------------------- processes


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon and its vhost-user workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                # The command name may hold spaces: the fields start after its ')'.
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return sorted(found)


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise BenchError(f"process {pid} has no {name}")


def _rollup_kib(pid: int) -> tuple[int, int]:
    """Pss, and the private pages alone (USS: what the process alone holds)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if name in ("Pss", "Private_Clean", "Private_Dirty"):
                fields[name] = int(rest.split()[0])
    if "Pss" not in fields:
        raise BenchError(f"process {pid} has no Pss")
    return fields["Pss"], fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


@dataclass(frozen=True, slots=True)
class Sample:
    """The daemon's processes at one point of the run, and the latency since the last."""

    cycles: int
    seconds: float
    processes: int
    rss_kib: int
    pss_kib: int
    uss_kib: int
    fds: int
    threads: int
    latencies_ms: tuple[float, ...] = ()


def sample_processes(pid: int, cycles: int, seconds: float) -> Sample:
    """VmRSS, Pss, descriptors and threads summed over the daemon's process tree."""
    pids = process_tree(pid)
    try:
        rollups = [_rollup_kib(p) for p in pids]
        return Sample(
            cycles=cycles,
            seconds=seconds,
            processes=len(pids),
            rss_kib=sum(_status_field(p, "VmRSS") for p in pids),
            pss_kib=sum(pss for pss, _ in rollups),
            uss_kib=sum(uss for _, uss in rollups),
            fds=sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids),
            threads=sum(_status_field(p, "Threads") for p in pids),
        )
    except FileNotFoundError as error:
        raise BenchError(f"a process of the daemon ended during the sample: {error}") from None


def growth_per_1000(samples: Sequence[Sample], value: Callable[[Sample], float]) -> float:
    """The least-squares slope of ``value`` against cycles, per 1,000 cycles."""
    if len(samples) < 2:
        return 0.0
    xs = [s.cycles for s in samples]
    ys = [value(s) for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if not spread:
        return 0.0
    return 1000 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


# --------------------------------------------------------------------------- the churn


def _sg(sg_id: str, index: int) -> MessageV0.Sg:
    sg = MessageV0.Sg(id=sg_id, member=[f"10.251.{index}.1"])
    rule = sg.rule.add(direction=MessageV0.Rule.INBOUND, protocol=6, port_start=22, port_end=22)
    rule.cidr.address, rule.cidr.mask_size = "10.0.0.0", 8
    sg.rule.add(direction=MessageV0.Rule.INBOUND, protocol=-1, security_group=sg_id)
    return sg


def _nic(vnic_id: str, mac: str, vni: int, ip: str) -> MessageV0.Request:
    request = MessageV0.Request()
    nic = request.nic_add
    nic.id, nic.mac, nic.vni = vnic_id, mac, vni
    nic.ip.append(ip)
    nic.security_group.extend(GROUPS)
    nic.ip_anti_spoof = True
    return request


class Churn:
    """The cycle's requests against one lab host, each timed.

    :meth:`prepare` makes what stays all along (the groups and the vnic
    keeping the TAP vnic's VNI alive); :meth:`cycle` leaves the daemon as
    it found it.
    """

    def __init__(self, host: Host, vm: Vm) -> None:
        self._host = host
        self._vm = vm
        self.latencies_ms: list[float] = []

    def prepare(self) -> None:
        for index, sg_id in enumerate(GROUPS):
            self._host.call(MessageV0.Request(sg_add=_sg(sg_id, index)))
        anchor = _nic("soak-stay", "52:54:00:5a:00:01", SHARED_VNI, "10.250.0.1")
        anchor.nic_add.type = MessageV0.Nic.TAP
        self._host.call(anchor)

    def _call(self, request: MessageV0.Request) -> None:
        started = time.perf_counter()
        self._host.call(request)
        self.latencies_ms.append((time.perf_counter() - started) * 1000)

    def cycle(self, number: int) -> None:
        tap = _nic("soak-tap", "52:54:00:5a:00:02", SHARED_VNI, "10.250.0.2")
        tap.nic_add.type = MessageV0.Nic.TAP
        netns = _nic("soak-ns", "52:54:00:5a:00:03", OWN_VNI, "10.250.1.3")
        netns.nic_add.type = MessageV0.Nic.NETNS
        netns.nic_add.path = self._vm.name
        vhost = _nic("soak-vu", "52:54:00:5a:00:04", OWN_VNI, "10.250.1.4")
        vhost.nic_add.type = MessageV0.Nic.VHOST_USER_SERVER
        for request in (tap, netns, vhost):
            self._call(request)
        member = f"10.252.{number // 250 % 250}.{number % 250 + 1}"
        add_member = MessageV0.Request()
        add_member.sg_member_add.sg_id, add_member.sg_member_add.member = GROUPS[0], member
        self._call(add_member)
        rule = MessageV0.Rule(
            direction=MessageV0.Rule.INBOUND,
            protocol=17,
            port_start=1024 + number % 1000,
            port_end=1024 + number % 1000,
        )
        rule.cidr.address, rule.cidr.mask_size = "10.0.0.0", 8
        add_rule = MessageV0.Request()
        add_rule.sg_rule_add.sg_id = GROUPS[1]
        add_rule.sg_rule_add.rule.CopyFrom(rule)
        self._call(add_rule)
        del_rule = MessageV0.Request()
        del_rule.sg_rule_del.sg_id = GROUPS[1]
        del_rule.sg_rule_del.rule.CopyFrom(rule)
        self._call(del_rule)
        del_member = MessageV0.Request()
        del_member.sg_member_del.sg_id, del_member.sg_member_del.member = GROUPS[0], member
        self._call(del_member)
        for vnic_id in ("soak-tap", "soak-ns", "soak-vu"):
            self._call(MessageV0.Request(nic_del=vnic_id))


@dataclass
class Soak:
    """A soak run's samples (the first is the baseline) and its end check."""

    warm_up: int
    samples: list[Sample] = field(default_factory=list)
    unchanged: bool = False
    """The kernel's objects and the daemon's state are as before the warm-up."""
    changes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> Sample:
        return self.samples[0]

    def growth_mb(self, value: Callable[[Sample], float]) -> float:
        return growth_per_1000(self.samples, value) / 1024


def soak(
    host: Host,
    vm: Vm,
    *,
    cycles: int,
    every: int,
    warm_up: int,
    progress: Callable[[Sample], None] = lambda _: None,
) -> Soak:
    """Run the churn on ``host`` (its daemon started) with NETNS vnics into ``vm``."""
    churn = Churn(host, vm)
    churn.prepare()
    before = host.snapshot()
    for number in range(warm_up):
        churn.cycle(number)
    result = Soak(warm_up=warm_up)
    started = time.monotonic()
    churn.latencies_ms.clear()
    result.samples.append(sample_processes(host.daemon.pid, 0, 0.0))
    progress(result.baseline)
    for number in range(1, cycles + 1):
        churn.cycle(warm_up + number)
        if number % every == 0 or number == cycles:
            sample = sample_processes(host.daemon.pid, number, time.monotonic() - started)
            sample = replace(sample, latencies_ms=tuple(churn.latencies_ms))
            churn.latencies_ms.clear()
            result.samples.append(sample)
            progress(sample)
    # The daemon's deletion thread deletes the last cycles' links after their
    # replies (~25 ms a link): the kernel is compared once it has caught up.
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        after = host.snapshot()
        result.changes = sorted(key for key in before if before[key] != after.get(key))
        if not result.changes or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    result.unchanged = not result.changes
    return result


# --------------------------------------------------------------------------- the report


def _mb(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _delta(kib: float) -> str:
    return f"{kib / 1024:+.2f}"


MIN_P99_SAMPLES = 1000
"""Fewer requests than this in a row: no p99 (the maximum is shown anyway)."""


def _latency(sample: Sample) -> tuple[str, str, str]:
    if not sample.latencies_ms:
        return "-", "-", "-"
    values = sample.latencies_ms
    p99 = percentile(values, 0.99) if len(values) >= MIN_P99_SAMPLES else None
    return (
        f"{percentile(values, 0.50):.2f}",
        "-" if p99 is None else f"{p99:.2f}",
        f"{max(values):.1f}",
    )


def render(result: Soak, busy: float) -> tuple[str, bool]:
    """The report (title, table, headline, verdicts) and whether every target is met."""
    base = result.baseline
    rows = []
    for sample in result.samples:
        label = "baseline" if sample is base else f"{sample.cycles:,}"
        rows.append(
            (
                label,
                f"{sample.seconds:.0f}",
                str(sample.processes),
                _mb(sample.rss_kib),
                _delta(sample.rss_kib - base.rss_kib),
                _mb(sample.pss_kib),
                _delta(sample.pss_kib - base.pss_kib),
                _mb(sample.uss_kib),
                _delta(sample.uss_kib - base.uss_kib),
                str(sample.fds),
                str(sample.threads),
                *_latency(sample),
            )
        )
    header = (
        "cycles",
        "s",
        "procs",
        "RSS MB",
        "dRSS MB",
        "PSS MB",
        "dPSS MB",
        "USS MB",
        "dUSS MB",
        "fds",
        "threads",
        "p50 ms",
        "p99 ms",
        "max ms",
    )
    measured = result.samples[-1].cycles
    title = (
        f"butterfly-bench soak: one butterflyd, data plane on, {measured:,} cycles of"
        f" {REQUESTS_PER_CYCLE} requests (TAP, NETNS and vhost-user vnics added and deleted,"
        f" a VNI created and removed, SG member and rule changes) after {result.warm_up:,}"
        f" warm-up cycles; memory, descriptors and threads of the daemon and its workers;"
        f" latency of the cycles since the previous row (CPUs {busy:.0%} busy elsewhere"
        " before the run: figures are noisy)"
    )
    rss = result.growth_mb(lambda s: s.rss_kib)
    pss = result.growth_mb(lambda s: s.pss_kib)
    uss = result.growth_mb(lambda s: s.uss_kib)
    last = result.samples[-1]
    budget = MAX_GROWTH_MB * 1000 / TARGET_CYCLES
    verdicts = {
        f"RSS growth per 1,000 cycles < {budget:g} MB ({MAX_GROWTH_MB:g} MB"
        f" over {TARGET_CYCLES:,}; PSS is shown, not judged: its share of pages"
        " mapped by other processes moves as they come and go)": rss < budget,
        "descriptors unchanged": last.fds == base.fds,
        "threads unchanged": last.threads == base.threads,
        "kernel objects and state as before the warm-up": result.unchanged,
    }
    lines = [
        title,
        table(header, rows, right=set(range(1, len(header)))),
        f"growth per 1,000 cycles: RSS {rss:+.3f} MB, PSS {pss:+.3f} MB, USS {uss:+.3f} MB"
        f" (least-squares slope over {len(result.samples)} samples);"
        f" over the run: RSS {_delta(last.rss_kib - base.rss_kib)} MB,"
        f" PSS {_delta(last.pss_kib - base.pss_kib)} MB,"
        f" USS {_delta(last.uss_kib - base.uss_kib)} MB",
    ]
    for name, met in verdicts.items():
        lines.append(f"{name}: {'PASS' if met else 'FAIL'}")
    if result.changes:
        lines.append("changed: " + ", ".join(result.changes))
    return "\n".join(lines), all(verdicts.values())


def _progress(sample: Sample) -> None:
    print(
        f"  {sample.cycles:>6} cycles, {sample.seconds:.0f} s: RSS {_mb(sample.rss_kib)} MB,"
        f" PSS {_mb(sample.pss_kib)} MB, USS {_mb(sample.uss_kib)} MB, {sample.fds} fds,"
        f" {sample.threads} threads",
        flush=True,
    )


@dataclass(frozen=True, slots=True)
class _Settings:
    cycles: int
    every: int
    warm_up: int


def _settings(args: argparse.Namespace) -> _Settings:
    for name in ("cycles", "every"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name} must be at least 1")
    if args.warm_up < 0:
        raise BenchError("--warm-up must not be negative")
    return _Settings(cycles=args.cycles, every=args.every, warm_up=args.warm_up)


def lab_host(lab: Lab) -> tuple[Host, Vm]:
    """The soak's host (its daemon with one vhost-user worker, logging warnings) and VM."""
    return lab.host(extra_args=["--vhost-workers", "1"], log_level="warning"), lab.vm()


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        settings = _settings(args)
        if os.geteuid() != 0:
            raise BenchError("needs root (network namespaces, a kernel data plane)")
        busy = busy_elsewhere()
        with Lab() as lab:
            print(f"lab {lab.prefix}: namespaces {lab.prefix}*, files in {lab.folder}", flush=True)
            host, vm = lab_host(lab)
            print(f"butterflyd pid {host.daemon.pid}; warm-up of {settings.warm_up} cycles")
            try:
                result = soak(
                    host,
                    vm,
                    cycles=settings.cycles,
                    every=settings.every,
                    warm_up=settings.warm_up,
                    progress=_progress,
                )
            except (BenchError, LabError, ClientError) as error:
                print(f"butterfly-bench soak: {error}", file=sys.stderr)
                print(f"butterflyd's log ends with:\n{host.daemon.log()[-6000:]}", file=sys.stderr)
                raise
            report, met = render(result, busy)
    except (BenchError, LabError, ClientError, DaemonError) as error:
        print(f"butterfly-bench soak: {error}", file=sys.stderr)
        return 2
    print(report)
    print(f"the run took {time.monotonic() - started:.0f} s, clean-up included")
    return verdict(met, strict=args.strict)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="butterfly-bench soak")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
