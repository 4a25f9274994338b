"""``butterfly-bench drift``: the window other software opens by changing butterfly's
kernel objects, from the change until butterflyd has put it back.

One host (a real butterflyd, data plane on) in a :class:`~butterfly_lab.lab.Lab`,
one VNI: a server vnic whose group lets ICMP in and nothing else, a client vnic.
While the client pings the server every 2 ms (``ping -D``: each reply stamped)
and sends it a UDP datagram every millisecond (its group drops UDP: a counter
inside the server counts any that arrive), each kind of change is made again and
again in the host's namespace (never the root one). Per change:

* the window: the longest gap between two ping replies around the change, that
  is how long the allowed flow was cut (fail-closed: a filter missing drops);
  the baseline, measured in the same run, is the same gap with no change at all
  (the ping's own resolution and the machine's noise);
* the blocked datagrams that reached the server during all of that kind's trials:
  the target is none.

Trials are few (each waits for the repair), so the table gives the median and
the maximum, not a p99. Exit code 0 when the benchmark ran; with ``--strict``,
1 when a target is missed; 2 when it could not run.
"""

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import TABLE
from butterfly.errors import ClientError
from butterfly_lab.bench.dataplane import add_tap_vnics
from butterfly_lab.bench.figures import BenchError, busy_elsewhere, percentile, table, verdict
from butterfly_lab.daemon import DaemonError
from butterfly_lab.lab import Host, Lab, LabError, Vm, wait_for

__all__ = ["CHANGES", "add_arguments", "gap_around", "run"]

VNI = 330
SERVER, CLIENT = "10.33.0.10", "10.33.0.11"
SERVER_MAC = "52:54:00:00:33:10"
BLOCKED_PORT = 9
MAX_WINDOW = 1.0
"""Seconds within which the allowed flow must be back."""
SETTLED = 0.3
"""Seconds of replies again before the next trial (ARP and the ping settle)."""
TRIAL_TIMEOUT = 5.0

CHANGES = {
    "nft flush ruleset": "nft flush ruleset",
    "delete the inet table": f"nft delete table inet {TABLE}",
    "flush the forward chain": f"nft flush chain inet {TABLE} filter",
    "port down": "ip link set bf-srv down",
    "port off its bridge": "ip link set bf-srv nomaster",
    "pinned address removed": f"bridge fdb del {SERVER_MAC} dev bf-srv master",
    "port deleted": "ip link del bf-srv",
}
"""What other software does, by name: shell commands in the host's namespace."""

_BLOCKED_SENDER = f"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    s.sendto(b"blocked", ("{SERVER}", {BLOCKED_PORT}))
    time.sleep(0.001)
"""
_STAMP = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trials", type=int, default=20, metavar="N", help="changes of each kind (default 20)"
    )
    parser.add_argument(
        "--vnics",
        type=int,
        default=300,
        metavar="N",
        help="other filtered TAP vnics on the host, so a repair has their objects to"
        " check and rewrite too (default 300)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="5 trials of each kind, 100 other vnics (CI)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


class Replies:
    """``ping -D`` in the client, every 2 ms; the stamps of its replies."""

    def __init__(self, client: Vm) -> None:
        self.process = client.popen("ping", "-D", "-n", "-i", "0.002", SERVER)
        self.stamps: list[float] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            found = _STAMP.match(line)
            if found:
                self.stamps.append(float(found.group(1)))

    def since(self, moment: float) -> int:
        return sum(1 for stamp in list(self.stamps) if stamp > moment)


def gap_around(stamps: Sequence[float], start: float, end: float) -> float:
    """The longest time without a reply between ``start`` and ``end`` (the last
    reply before ``start`` counts as its beginning)."""
    before = [s for s in stamps if s <= start]
    inside = [s for s in stamps if start < s <= end]
    points = ([before[-1]] if before else [start]) + inside
    return max((b - a for a, b in itertools.pairwise(points)), default=end - start)


def arrived(server: Vm, *, reset: bool = False) -> int:
    listed = json.loads(
        server.exec(
            "nft", "-j", "reset" if reset else "list", "counter", "inet", "bench", "blocked"
        )
    )
    return int(next(o["counter"]["packets"] for o in listed["nftables"] if "counter" in o))


def _setup(lab: Lab, vnics: int) -> tuple[Host, Vm, Vm]:
    host = lab.host(log_level="warning")
    host.call(MessageV0.Request(sg_add=MessageV0.Sg(id="bench-web")))
    add_tap_vnics(host, range(vnics))
    for sg_id, proto in (("icmp", "icmp"), ("open", "all")):
        host.cli(
            "sg", "add", sg_id,
            "+", "sg", "rule", "add", sg_id, "--ip-proto", proto, "--cidr", "0.0.0.0/0",
        )  # fmt: skip
    server, client = lab.vm(), lab.vm()
    host.add_vnic("srv", vm=server, mac=SERVER_MAC, vni=VNI, ips=[SERVER], security_groups=["icmp"])
    host.add_vnic(
        "cli", vm=client, mac="52:54:00:00:33:11", vni=VNI, ips=[CLIENT], security_groups=["open"]
    )
    server.exec(
        "nft",
        "add table inet bench; add counter inet bench blocked;"
        " add chain inet bench input { type filter hook input priority 0; };"
        f" add rule inet bench input udp dport {BLOCKED_PORT} counter name blocked",
    )
    if not client.reaches("icmp", SERVER):
        raise BenchError("the allowed flow (ICMP to the server) does not pass")
    return host, server, client


def control(host: Host, server: Vm) -> None:
    """The blocked flow's counter counts: with a rule letting it in, datagrams arrive."""
    rule = ["icmp", "--ip-proto", "udp", "--port", str(BLOCKED_PORT), "--cidr", "0.0.0.0/0"]
    arrived(server, reset=True)
    host.cli("sg", "rule", "add", *rule)
    try:
        wait_for(lambda: arrived(server) > 10, "the control datagrams (UDP let in)")
    finally:
        host.cli("sg", "rule", "del", *rule)


@dataclass(frozen=True, slots=True)
class Outcome:
    windows: list[float]
    blocked: int


def trial(host: Host, replies: Replies, command: str | None) -> float:
    """One change (None: none, the baseline); the allowed flow's longest gap."""
    start = time.time()
    if command is not None:
        host.exec("sh", "-c", command)
    else:
        time.sleep(0.02)
    changed = time.time()
    deadline = time.monotonic() + TRIAL_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.05)
        recent = [s for s in list(replies.stamps) if s > changed]
        if recent and time.time() - recent[0] >= SETTLED and len(recent) > 10:
            break
    else:
        raise BenchError(f"after {command!r}, the allowed flow did not come back")
    return gap_around(replies.stamps, start, time.time())


def measure(host: Host, server: Vm, replies: Replies, command: str | None, trials: int) -> Outcome:
    arrived(server, reset=True)
    windows = [trial(host, replies, command) for _ in range(trials)]
    return Outcome(windows, arrived(server))


def _row(name: str, baseline: Outcome, ours: Outcome) -> list[str]:
    windows = sorted(ours.windows)
    worst = windows[-1]
    ok = worst < MAX_WINDOW and ours.blocked == 0
    return [
        name,
        f"{len(windows)}",
        f"{max(baseline.windows) * 1e3:.0f}",
        f"{windows[len(windows) // 2] * 1e3:.0f}",
        f"{worst * 1e3:.0f}",
        f"{ours.blocked}",
        f"< {MAX_WINDOW * 1e3:.0f} ms, 0 blocked",
        "PASS" if ok else "FAIL",
    ]


_REPAIRED = re.compile(r"kernel drift repaired in (\d+) ms, (\d+) ms after the first change")


def repair_times(log: str) -> list[float]:
    """Milliseconds from each repaired batch's first change (as butterflyd noticed
    it) to the end of its repair, from the daemon's log."""
    return [float(a) + float(b) for a, b in _REPAIRED.findall(log)]


def _bench(
    lab: Lab, trials: int, vnics: int
) -> tuple[list[list[str]], float, MessageV0.DriftStatus, list[float]]:
    host, server, client = _setup(lab, vnics)
    busy = busy_elsewhere()
    sender = client.popen(sys.executable, "-c", _BLOCKED_SENDER, stdout=subprocess.DEVNULL)
    replies = Replies(client)
    try:
        wait_for(lambda: replies.since(time.time() - 0.5) > 10, "the ping replies")
        control(host, server)
        baseline = measure(host, server, replies, None, trials)
        rows = [_row("no change (baseline)", baseline, baseline)]
        for name, command in CHANGES.items():
            rows.append(_row(name, baseline, measure(host, server, replies, command, trials)))
            print(f"{name}: done", flush=True)
        status = host.call(MessageV0.Request(app_status=True, app_status_drift=True))
    except (BenchError, LabError, ClientError, DaemonError):
        log = host.daemon.log()
        if log:
            print(f"butterflyd log:\n{log[-3000:]}", file=sys.stderr)
        raise
    finally:
        sender.kill()
    return rows, busy, status.app_status.drift, repair_times(host.daemon.log())


def run(args: argparse.Namespace) -> int:
    trials = 5 if args.quick else args.trials
    vnics = 100 if args.quick else args.vnics
    try:
        if trials < 1 or vnics < 0:
            raise BenchError("--trials must be at least 1, --vnics at least 0")
        if os.geteuid() != 0:
            raise BenchError("needs root (network namespaces, a kernel data plane)")
        started = time.monotonic()
        with Lab() as lab:
            print(f"lab {lab.prefix}: namespaces {lab.prefix}*", flush=True)
            rows, busy, drift, repairs = _bench(lab, trials, vnics)
    except (BenchError, LabError, ClientError, DaemonError) as error:
        print(f"butterfly-bench drift: {error}", file=sys.stderr)
        return 2
    print(
        f"butterfly-bench drift: data plane on, {os.cpu_count()} CPUs, {vnics + 2} vnics"
        f" (2 in the measured VNI); {trials} changes of"
        " each kind while the client pings the server every 2 ms (ICMP: allowed) and sends it"
        " a UDP datagram every 1 ms (blocked; a control with it allowed saw it arrive);"
        " window = longest gap between ping replies (ms; max is a maximum over the trials,"
        f" not a p99); CPU time used by others before the traffic {busy:.0%}"
    )
    header = [
        "change", "trials", "baseline max", "window p50", "window max",
        "blocked arrived", "target", "result",
    ]  # fmt: skip
    print(table(header, rows, {1, 2, 3, 4, 5}))
    print(
        f"butterflyd counted {drift.changes_seen} changes, {drift.repairs} repairs,"
        f" {drift.repair_failures} failed; from a change noticed to its repair done, by its"
        f" log: p50 {percentile(repairs, 0.5) if repairs else 0:.0f} ms, max"
        f" {max(repairs, default=0):.0f} ms; the run took {time.monotonic() - started:.0f} s"
    )
    return verdict(all(row[-1] != "FAIL" for row in rows), strict=args.strict)
