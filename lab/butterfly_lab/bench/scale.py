"""``butterfly-bench scale``: what requests cost on a full host, data plane on.

For each host size (vnics x VNIs), in a fresh :class:`~butterfly_lab.lab.Lab`
host (a real butterflyd driving the kernel of its namespace), the host is
filled as a hypervisor is: TAP vnics with three security groups each (of
30 groups with rules and members), IP anti-spoofing on, spread over the
VNIs (multicast flooding unless ``--static-peers``). Then, at that size:

* ``nic_add`` of one more vnic (3 SGs, in an existing VNI), ``nic_update``
  of its groups, ``nic_del`` of it: each sample leaves the host as it was,
  so every sample is taken at the stated size;
* the same ``nic_add``/``nic_del`` when the vnic brings (and takes away) its
  own VNI: the bridge and VXLAN device are made and removed too;
* ``sg_member_add`` to the groups the vnics use;
* ``kill -9`` of the daemon and a restart (``--restarts`` times, each
  after the previous reconcile ended): the first answer (to a ``nic_list``
  from a client waiting before the daemon starts; p50 and maximum) and the
  end of the last start-up reconcile, as ``app_status`` reports it (asked
  without the graph, which reads every link of the host);
* the resident memory of the daemon and every process it started, once
  filled by requests and again after the restart's reconcile.

A Linux bridge holds at most 1,024 ports, so a host of N vnics has at
least N/1,000 VNIs: "10,000 vnics, 1 VNI" is measured as 10 VNIs.

A floor row per size: the same kernel objects (bridges, VXLAN devices,
locked taps with their MAC pinned, IPv6 off on each, a clsact qdisc bound
to the guard's shared tc blocks on each tap and VXLAN device, a chain of
three group jumps per vnic) made
without butterfly by ``ip -batch``, ``bridge -batch``, ``tc -batch`` and
``nft -f`` in a namespace of their own: the kernel's own cost, per vnic.

Latency figures are p99 of ``--samples`` samples (1,000 by default; fewer
is printed as a maximum, not a p99), the maximum beside it: a stream with no
quiet moment leaves the deletion of removed links to one request every few
seconds (:mod:`butterfly.dataplane.deleter`). Targets apply at every size.
"""

import argparse
import os
import sys
import time
from dataclasses import dataclass

from butterfly.api.client import Client
from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages
from butterfly.dataplane.guard import GuardKind
from butterfly.dataplane.naming import bridge_name, tap_name, vxlan_name
from butterfly.dataplane.underlay import flood_group
from butterfly.errors import ClientError
from butterfly_lab.bench.figures import BenchError, busy_elsewhere, percentile, table, verdict
from butterfly_lab.bench.soak import process_tree
from butterfly_lab.daemon import DaemonError
from butterfly_lab.lab import Host, Lab, LabError

__all__ = ["add_arguments", "run", "tree_rss_kib"]

TARGETS_MS = {
    "nic_add": 20.0,
    "nic_update": 10.0,
    "nic_del": 20.0,
    "nic_add_vni": 20.0,
    "nic_del_vni": 20.0,
    "sg_member_add": 5.0,
}
MAX_FIRST_ANSWER_S = 1.0
MAX_RECONCILE_S = 30.0
MAX_MEMORY_MB = 150.0
MIN_SAMPLES_FOR_P99 = 1000
SGS = 30
FILL_BATCH = 50
NEW_VNI_BASE = 1_000_000
BRIDGE_PORTS = 1000
"""vnics per VNI at most: the kernel's BR_MAX_PORTS is 1,024 (EXFULL beyond)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vnics",
        default="10,1000,10000",
        metavar="N,...",
        help="host sizes in vnics (default 10,1000,10000)",
    )
    parser.add_argument(
        "--vnis",
        default="1,4096",
        metavar="N,...",
        help="VNIs the vnics are spread over (default 1,4096; at most one per vnic)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=MIN_SAMPLES_FOR_P99,
        metavar="N",
        help=f"samples per latency figure (default {MIN_SAMPLES_FOR_P99})",
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=1,
        metavar="N",
        help="kill -9 and restarts per size, for the first answer (default 1)",
    )
    parser.add_argument("--v6", action="store_true", help="an IPv6 underlay")
    parser.add_argument(
        "--static-peers", action="store_true", help="flood to a static peer instead of multicast"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 10 and 100 vnics, 1 and 64 VNIs"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


@dataclass(frozen=True, slots=True)
class Size:
    vnics: int
    vnis: int

    @property
    def label(self) -> str:
        return f"{self.vnics:,} vnics / {self.vnis:,} VNIs"


@dataclass(slots=True)
class Figures:
    size: Size
    latencies_ms: dict[str, list[float]]
    cpu_ms: dict[str, float]
    """The daemon's CPU time per request, on average."""
    fill_s: float
    first_answers_s: list[float]
    """One per restart."""
    reconcile_s: float
    memory_mb: float
    restarted_memory_mb: float
    """After ``kill -9``, a restart and its reconcile."""
    floor_s: float
    floor_delete_s: float


def _sizes(args: argparse.Namespace) -> list[Size]:
    vnics = [10, 100] if args.quick else [int(n) for n in args.vnics.split(",")]
    vnis = [1, 64] if args.quick else [int(n) for n in args.vnis.split(",")]
    sizes = []
    for count in vnics:
        for networks in vnis:
            # A Linux bridge holds at most 1,024 ports (one is the VXLAN device's).
            size = Size(count, min(count, max(networks, -(-count // BRIDGE_PORTS))))
            if size not in sizes:
                sizes.append(size)
    return sizes


def tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and of all its descendants (vhost workers, tracers), in KiB."""
    total = 0
    for current in process_tree(pid):
        try:
            with open(f"/proc/{current}/status", encoding="ascii") as status:
                total += next(
                    (int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0
                )
        except OSError:
            continue
    return total


def _blocks(kind: GuardKind) -> str:
    return f"ingress_block {kind.blocks.ingress} egress_block {kind.blocks.egress}"


def _mac(index: int) -> str:
    return "52:54:" + ":".join(f"{(index >> shift) & 0xFF:02x}" for shift in (24, 16, 8, 0))


def _ipv4(base: int, index: int) -> str:
    value = (base << 24) + index
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def _groups(index: int) -> list[str]:
    return [f"sg-{(index + k) % SGS:02}" for k in range(3)]


def _nic(index: int, vni: int, groups: list[str]) -> MessageV0.Request:
    request = MessageV0.Request()
    nic = request.nic_add
    nic.id = f"v{index:07}"
    nic.mac = _mac(index + 1)
    nic.vni = vni
    nic.ip.append(_ipv4(10, index + 1))
    nic.security_group.extend(groups)
    nic.ip_anti_spoof = True
    nic.type = MessageV0.Nic.TAP
    return request


def _sg(index: int) -> MessageV0.Request:
    request = MessageV0.Request()
    sg = request.sg_add
    sg.id = f"sg-{index:02}"
    sg.member.extend(_ipv4(11, index * 4 + m + 1) for m in range(4))
    rule = sg.rule.add(direction=MessageV0.Rule.INBOUND, protocol=6, port_start=22, port_end=22)
    rule.cidr.address, rule.cidr.mask_size = "10.0.0.0", 8
    sg.rule.add(direction=MessageV0.Rule.INBOUND, protocol=-1, security_group=sg.id)
    return request


def _checked(client: Client, request: MessageV0.Request) -> MessageV0.Response:
    response = client.call(request).response
    if not response.status.status:
        raise BenchError(f"the daemon refused {request}: {response.status.error.description}")
    return response


def _send_batches(client: Client, requests: list[MessageV0.Request]) -> None:
    for start in range(0, len(requests), FILL_BATCH):
        envelope = Messages()
        for one in requests[start : start + FILL_BATCH]:
            envelope.messages.add(revision=REVISION).message_0.request.CopyFrom(one)
        for message in client.send(envelope).messages:
            status = message.message_0.response.status
            if not status.status:
                raise BenchError(f"filling the host failed: {status.error.description}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, all threads) of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Timer:
    """Each request's latency, and the daemon's CPU time meanwhile (which
    other work on a shared machine inflates far less than the latency)."""

    def __init__(self, client: Client, pid: int) -> None:
        self.client = client
        self.pid = pid
        self.samples: dict[str, list[float]] = {}
        self.cpu_ms: dict[str, float] = {}

    def __call__(self, name: str, request: MessageV0.Request) -> None:
        cpu = cpu_seconds(self.pid)
        before = time.perf_counter()
        _checked(self.client, request)
        self.samples.setdefault(name, []).append((time.perf_counter() - before) * 1000)
        self.cpu_ms[name] = self.cpu_ms.get(name, 0.0) + (cpu_seconds(self.pid) - cpu) * 1000


def _latencies(timer: _Timer, size: Size, count: int) -> None:
    for i in range(count):
        index = size.vnics + i
        groups, others = _groups(i), _groups(i + 3)
        add = _nic(index, i % size.vnis + 1, groups)
        timer("nic_add", add)
        update = MessageV0.Request()
        update.nic_update.id = add.nic_add.id
        update.nic_update.security_group.extend(others)
        timer("nic_update", update)
        delete = MessageV0.Request(nic_del=add.nic_add.id)
        timer("nic_del", delete)
        alone = _nic(index, NEW_VNI_BASE + i, groups)
        timer("nic_add_vni", alone)
        timer("nic_del_vni", delete)
        member = MessageV0.Request()
        member.sg_member_add.sg_id = groups[0]
        member.sg_member_add.member = _ipv4(12, i + 1)
        timer("sg_member_add", member)


def _status(client: Client) -> MessageV0.ReconcileStatus:
    request = MessageV0.Request(app_status=True, app_status_reconcile=True, app_status_graph=False)
    return _checked(client, request).app_status.reconcile


def _kill_and_restart(host: Host) -> tuple[float, float, float]:
    """Seconds to the first answer and to the end of the reconcile, after kill -9,
    and then the memory (MB) of the daemon and its processes."""
    host.kill()
    with Client(endpoint=host.endpoint, timeout_ms=120_000) as client:
        started = time.monotonic()
        host.spawn()
        _checked(client, MessageV0.Request(nic_list=True))
        first = time.monotonic() - started
        while True:
            status = _status(client)
            if not status.running:
                break
            time.sleep(0.2)
        if status.problems:
            raise BenchError(f"the reconcile after kill -9 failed: {status.problems}")
    reconciled = time.monotonic() - started
    return first, reconciled, tree_rss_kib(host.daemon.pid) * 1024 / 1e6


def _floor(lab: Lab, size: Size, v6: bool) -> tuple[float, float]:
    """Seconds for ip/bridge/tc -batch and nft -f to make the same kernel objects,
    and for ip -batch to delete the taps."""
    netns = lab.netns("z")
    netns.ip("link", "add", "ful0", "type", "veth", "peer", "name", "ful1")
    address = "2001:db8:fe::1" if v6 else "198.51.100.254"
    netns.ip("addr", "add", f"{address}/{64 if v6 else 24}", "dev", "ful0", "nodad")
    netns.ip("link", "set", "ful0", "up")
    netns.exec("sysctl", "-qw", f"net.ipv4.igmp_max_memberships={size.vnis + 1024}")
    netns.exec("sysctl", "-qw", f"net.core.optmem_max={(size.vnis + 1024) * 64 + 131072}")
    # As butterfly's links: no IPv6 of the host's, a clsact qdisc bound to the guard's blocks.
    netns.exec("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    links, fdb, qdiscs = [], [], []
    for vni in range(1, size.vnis + 1):
        group = flood_group(vni, 6 if v6 else 4)
        bridge, vxlan = bridge_name(vni), vxlan_name(vni)
        links += [
            f"link add {bridge} type bridge stp_state 0 forward_delay 0 mcast_snooping 0",
            f"link add {vxlan} type vxlan id {vni} local {address} group {group} dev ful0 "
            "dstport 4789",
            f"link set {vxlan} master {bridge} up",
            f"link set {bridge} up",
        ]
        qdiscs.append(f"qdisc add dev {vxlan} {_blocks(GuardKind.OPEN)} clsact")
    rules = ["table inet floor {"]
    for sg in range(SGS):
        rules.append(f"  chain sg{sg:02} {{ tcp dport 22 ip saddr 10.0.0.0/8 accept; }}")
    rules.append("  map ports { type ifname : verdict; }")
    for index in range(size.vnics):
        tap = tap_name(f"f{index}")
        links += [
            f"tuntap add dev {tap} mode tap",
            f"link set {tap} master {bridge_name(index % size.vnis + 1)} up",
            f"link set {tap} type bridge_slave learning off flood off locked on",
        ]
        fdb.append(f"fdb replace {_mac(index + 1)} dev {tap} master static sticky")
        qdiscs.append(f"qdisc add dev {tap} {_blocks(GuardKind.FILTERED)} clsact")
        jumps = "; ".join(f"jump sg{g[3:]}" for g in _groups(index))
        rules.append(f"  chain p{index} {{ {jumps}; drop; }}")
    rules.append("}")
    rules += [
        f"add element inet floor ports {{ {tap_name(f'f{index}')} : jump p{index} }}"
        for index in range(size.vnics)
    ]
    started = time.monotonic()
    for tool, text in (("ip", links), ("bridge", fdb), ("tc", qdiscs)):
        netns.exec(tool, "-batch", "-", input="\n".join(text) + "\n", timeout=3600)
    netns.exec("nft", "-f", "-", input="\n".join(rules) + "\n", timeout=3600)
    made = time.monotonic() - started
    started = time.monotonic()
    deletions = "".join(f"link del {tap_name(f'f{index}')}\n" for index in range(size.vnics))
    netns.exec("ip", "-batch", "-", input=deletions, timeout=3600)
    return made, time.monotonic() - started


def _measure(size: Size, args: argparse.Namespace) -> Figures:
    lab = Lab()
    try:
        return _measure_in(lab, size, args)
    finally:
        try:
            lab.close()
        except LabError as error:  # the figures are in; say what the clean-up left
            print(f"butterfly-bench scale: {size.label}: {error}", file=sys.stderr)


def _measure_in(lab: Lab, size: Size, args: argparse.Namespace) -> Figures:
    host = lab.host(v6=args.v6, start=False, log_level="warning")
    if args.static_peers:
        peer = "2001:db8:ffff::fe" if args.v6 else "198.51.100.253"
        host.daemon.extra_args += ["--vxlan-peers", peer]
    host.start()
    client = host.client
    started = time.monotonic()
    _send_batches(client, [_sg(i) for i in range(SGS)])
    _send_batches(client, [_nic(i, i % size.vnis + 1, _groups(i)) for i in range(size.vnics)])
    fill = time.monotonic() - started
    print(f"{size.label}: filled in {fill:.1f} s", flush=True)
    timer = _Timer(client, host.daemon.pid)
    _latencies(timer, size, args.samples)
    cpu = {name: total / len(timer.samples[name]) for name, total in timer.cpu_ms.items()}
    memory = tree_rss_kib(host.daemon.pid) * 1024 / 1e6
    restarts = [_kill_and_restart(host) for _ in range(max(1, args.restarts))]
    _, reconcile, restarted_memory = restarts[-1]
    print(f"{size.label}: measured", flush=True)
    floor, floor_delete = _floor(lab, size, args.v6)
    return Figures(
        size=size,
        latencies_ms=timer.samples,
        cpu_ms=cpu,
        fill_s=fill,
        first_answers_s=[first for first, _, _ in restarts],
        reconcile_s=reconcile,
        memory_mb=memory,
        restarted_memory_mb=restarted_memory,
        floor_s=floor,
        floor_delete_s=floor_delete,
    )


def _verdict(value: float, target: float) -> str:
    return "PASS" if value < target else "FAIL"


def render(results: list[Figures], samples: int, busy: float, mode: str) -> tuple[str, bool]:
    """The table, and whether every target is met."""
    figure = "p99" if samples >= MIN_SAMPLES_FOR_P99 else "max"
    # Beside a p99, the maximum: the rare request that waits for a whole
    # batch of deferred link deletions (the deleter's docstring) shows there.
    tails = ("p99 ms", "max ms") if figure == "p99" else ("max ms",)
    header = ("host", "measure", "samples", "p50 ms", *tails, "cpu ms", "target", "result")
    rows: list[tuple[str, ...]] = []

    def other(label: str, name: str, count: str, p50: str, value: str, *rest: str) -> None:
        """A row whose figure is not a request's latency (no maximum beside it)."""
        rows.append((label, name, count, p50, value, *("-",) * (len(tails) - 1), *rest))

    verdicts = []
    names = {
        "nic_add": "nic_add, 3 SGs, existing VNI",
        "nic_update": "nic_update of the 3 SGs",
        "nic_del": "nic_del, VNI stays",
        "nic_add_vni": "nic_add, 3 SGs, new VNI",
        "nic_del_vni": "nic_del, last of its VNI",
        "sg_member_add": "sg_member_add",
    }
    for result in results:
        label = result.size.label
        for key, name in names.items():
            values = result.latencies_ms.get(key, [])
            if not values:
                continue
            tail = percentile(values, 0.99) if figure == "p99" else max(values)
            verdict = _verdict(tail, TARGETS_MS[key])
            verdicts.append(verdict)
            shown = (tail, max(values)) if figure == "p99" else (tail,)
            rows.append(
                (
                    label,
                    name,
                    str(len(values)),
                    f"{percentile(values, 0.5):.1f}",
                    *(f"{value:.1f}" for value in shown),
                    f"{result.cpu_ms.get(key, 0.0):.1f}",
                    f"< {TARGETS_MS[key]:g} ms",
                    verdict,
                )
            )
        firsts = result.first_answers_s
        verdict = _verdict(max(firsts), MAX_FIRST_ANSWER_S)
        verdicts.append(verdict)
        other(
            label,
            "first answer after kill -9 (nic_list)",
            str(len(firsts)),
            f"{percentile(firsts, 0.5) * 1000:.0f}",
            f"{max(firsts):.2f} s",
            "-",
            f"< {MAX_FIRST_ANSWER_S:g} s",
            verdict,
        )
        for name, value, target, unit in (
            ("reconcile done after kill -9", result.reconcile_s, MAX_RECONCILE_S, "s"),
            ("memory, daemon and children", result.memory_mb, MAX_MEMORY_MB, "MB"),
            (
                "memory after kill -9 and the reconcile",
                result.restarted_memory_mb,
                MAX_MEMORY_MB,
                "MB",
            ),
        ):
            verdict = _verdict(value, target)
            verdicts.append(verdict)
            other(
                label, name, "1", "-", f"{value:.2f} {unit}", "-", f"< {target:g} {unit}", verdict
            )
        per_vnic = result.floor_s / result.size.vnics * 1000
        other(
            label,
            f"floor: ip/bridge/tc -batch + nft -f ({result.floor_s:.2f} s in all)",
            "1",
            "-",
            f"{per_vnic:.2f} per vnic",
            "-",
            "baseline",
            "-",
        )
        per_delete = f"{result.floor_delete_s / result.size.vnics * 1000:.2f} per vnic"
        other(
            label,
            "floor: ip -batch link del of the taps",
            "1",
            "-",
            per_delete,
            "-",
            "baseline",
            "-",
        )
        fill_per_vnic = result.fill_s / result.size.vnics * 1000
        other(
            label,
            "filling the host through the API",
            "1",
            "-",
            f"{fill_per_vnic:.1f} per vnic",
            "-",
            "-",
            "-",
        )
    title = (
        f"butterfly-bench scale: data plane on ({mode}), TAP vnics with 3 SGs and IP "
        f"anti-spoofing; {figure} of {samples} samples per request figure, cpu: the daemon's "
        "CPU time per request (mean); "
        f"CPUs {busy:.0%} busy with other work before the run"
    )
    rendered = table(header, rows, right=set(range(2, 5 + len(tails))))
    return f"{title}\n{rendered}", all(v == "PASS" for v in verdicts)


def _modes(args: argparse.Namespace) -> str:
    underlay = "IPv6" if args.v6 else "IPv4"
    flooding = "static peers" if args.static_peers else "multicast"
    return f"{underlay} underlay, {flooding}"


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("butterfly-bench scale: needs root (network namespaces, a kernel data plane)")
        return 2
    busy = busy_elsewhere()
    results = []
    failed, met = False, True
    for size in _sizes(args):
        try:
            results.append(_measure(size, args))
        except (BenchError, ClientError, DaemonError, LabError, OSError) as error:
            # The sizes measured so far are still worth their table.
            print(f"butterfly-bench scale: {size.label}: {error}", file=sys.stderr)
            failed = True
            break
    if results:
        rendered, met = render(results, args.samples, busy, _modes(args))
        print(rendered)
    if failed:
        return 2
    return verdict(met, strict=args.strict)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="butterfly-bench scale")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
