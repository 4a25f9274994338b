"""``butterfly-bench api``: the control plane's speed and size against its targets.

Starts a real ``butterflyd --no-dataplane`` in a temporary folder and, with
one client sending one request per frame (as orchestrators do), measures:

* two baselines in the same run: a raw ZeroMQ echo round trip (a REP
  socket in another process that sends every frame back: the transport's
  own cost) and ``app_status`` on the empty daemon (decoding, dispatch,
  encoding, no state change);
* ``nic_add`` of distinct vnics and ``sg_member_add`` of distinct members
  spread over 100 security groups: requests per second, p50 and p99;
* after filling the state to the target size (10,000 vnics, 1,000 SGs),
  the daemon's resident memory (VmRSS of /proc/PID/status).

Those rows measure the control plane alone (``--no-dataplane``: nothing is
programmed in the kernel). Run as root, the table gains rows with the data
plane on: the same ``nic_add`` (TAP vnics, one SG each) and
``sg_member_add`` against a butterflyd driving the kernel of a lab
namespace (:mod:`butterfly_lab.lab`), judged against the data-plane
targets (``butterfly-bench scale`` measures them on full hosts).

It prints a table with the targets and whether each is met. The exit code is
0 when the benchmark ran, whatever the figures; with ``--strict``, 1 when a
target is missed.
"""

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace

from butterfly.api.client import Client
from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages
from butterfly.errors import ClientError
from butterfly_lab.bench.figures import BenchError, table, verdict
from butterfly_lab.daemon import DaemonError, DaemonProcess, free_port, resident_memory_kib
from butterfly_lab.lab import Lab, LabError

__all__ = ["add_arguments", "run"]

MIN_REQUESTS_PER_S = 2000.0
MAX_P99_MS = 5.0
MAX_RSS_MB = 150.0
DATAPLANE_P99_MS = {"nic_add": 20.0, "sg_member_add": 5.0}
"""The data plane's targets (issue 10), with the kernel work included."""
DATAPLANE_REQUESTS = 1000

FULL = {"requests": 10_000, "vnics": 10_000, "sgs": 1_000}
QUICK = {"requests": 500, "vnics": 500, "sgs": 100}
MEMBER_SGS = 100
WARM_UP = 50
FILL_BATCH = 100

_ECHO_SERVER = """
import sys
import zmq
context = zmq.Context()
socket = context.socket(zmq.REP)
socket.bind(sys.argv[1])
while True:
    frame = socket.recv()
    socket.send(frame)
    if frame == b"stop":
        break
socket.close()
context.term()
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run for CI: {QUICK['requests']} requests per measure,"
        f" a state of {QUICK['vnics']} vnics and {QUICK['sgs']} SGs",
    )
    parser.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help=f"requests per measure (default {FULL['requests']})",
    )
    parser.add_argument(
        "--vnics",
        type=int,
        metavar="N",
        help=f"vnics in the state for the memory figure (default {FULL['vnics']})",
    )
    parser.add_argument(
        "--sgs", type=int, metavar="N", help=f"security groups in the state (default {FULL['sgs']})"
    )
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help="where the daemon's temporary folder goes (its file system decides"
        " what an fsync costs; default: the system's temporary folder)",
    )
    parser.add_argument(
        "--no-dataplane-rows",
        action="store_true",
        help="skip the rows with the data plane on (they need root and a lab namespace)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


@dataclass(frozen=True, slots=True)
class Measure:
    name: str
    latencies_ns: list[int]
    seconds: float

    @property
    def per_second(self) -> float:
        return len(self.latencies_ns) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ns)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[rank - 1] / 1e6


def _measure(name: str, count: int, send: Callable[[int], None]) -> Measure:
    latencies: list[int] = []
    started = time.perf_counter_ns()
    for index in range(count):
        before = time.perf_counter_ns()
        send(index)
        latencies.append(time.perf_counter_ns() - before)
    return Measure(name, latencies, (time.perf_counter_ns() - started) / 1e9)


def _checked(client: Client, request: MessageV0.Request) -> MessageV0.Response:
    response = client.call(request).response
    if not response.status.status:
        raise BenchError(f"the daemon refused {request}: {response.status.error.description}")
    return response


def _mac(index: int) -> str:
    return "52:54:" + ":".join(f"{(index >> shift) & 0xFF:02x}" for shift in (24, 16, 8, 0))


def _ipv4(base: int, index: int) -> str:
    value = (base << 24) + index
    return ".".join(str((value >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def _nic(index: int, sgs: int) -> MessageV0.Nic:
    return MessageV0.Nic(
        id=f"vnic-{index:06}",
        mac=_mac(index),
        vni=index % 1000,
        ip=[_ipv4(10, index + 1)],
        security_group=[f"sg-{index % max(1, sgs):04}"],
        ip_anti_spoof=True,
    )


def _sg(index: int) -> MessageV0.Sg:
    sg = MessageV0.Sg(id=f"sg-{index:04}", member=[_ipv4(11, index * 4 + m + 1) for m in range(4)])
    rule = sg.rule.add(direction=MessageV0.Rule.INBOUND, protocol=6, port_start=22, port_end=22)
    rule.cidr.address, rule.cidr.mask_size = "10.0.0.0", 8
    sg.rule.add(direction=MessageV0.Rule.INBOUND, protocol=-1, security_group=sg.id)
    return sg


@contextmanager
def _echo_server() -> Iterator[str]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    process = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER, endpoint])
    try:
        yield endpoint
    finally:
        with Client(endpoint=endpoint, timeout_ms=2000) as client, suppress(ClientError):
            client.send_frame(b"stop")
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _send_batches(client: Client, requests: list[MessageV0.Request]) -> None:
    """Fill the state fast: many messages per frame, every answer checked."""
    for start in range(0, len(requests), FILL_BATCH):
        envelope = Messages()
        for one in requests[start : start + FILL_BATCH]:
            envelope.messages.add(revision=REVISION).message_0.request.CopyFrom(one)
        reply = client.send(envelope)
        for message in reply.messages:
            status = message.message_0.response.status
            if not status.status:
                raise BenchError(f"filling the state failed: {status.error.description}")


@dataclass(frozen=True, slots=True)
class Results:
    echo: Measure
    status: Measure
    nic_add: Measure
    member_add: Measure
    rss_kib: int
    vnics: int
    sgs: int
    full_size: bool
    dataplane: tuple[Measure, ...] = ()
    """nic_add and sg_member_add with the data plane on (empty: not measured)."""


def _benchmark(
    daemon: DaemonProcess, requests: int, vnics: int, sgs: int, full_size: bool
) -> Results:
    frame = Messages()
    frame.messages.add(revision=REVISION).message_0.request.app_status = True
    echo_frame = frame.SerializeToString()
    with _echo_server() as endpoint, Client(endpoint=endpoint) as echo:

        def echo_once(_: int) -> None:
            echo.send_frame(echo_frame)

        for index in range(WARM_UP):
            echo_once(index)
        echo_measure = _measure("zmq echo round trip", requests, echo_once)
    with Client(endpoint=daemon.endpoint) as client:

        def status_once(_: int) -> None:
            _checked(client, MessageV0.Request(app_status=True))

        def nic_add_once(index: int) -> None:
            _checked(client, MessageV0.Request(nic_add=_nic(index, sgs)))

        def member_add_once(index: int) -> None:
            request = MessageV0.Request()
            request.sg_member_add.sg_id = f"sg-{index % MEMBER_SGS:04}"
            request.sg_member_add.member = _ipv4(12, index + 1)
            _checked(client, request)

        for index in range(WARM_UP):
            status_once(index)
        status = _measure("app_status, empty daemon", requests, status_once)
        nic_add = _measure("nic_add", requests, nic_add_once)
        member = _measure(f"sg_member_add ({MEMBER_SGS} SGs)", requests, member_add_once)
        _send_batches(
            client, [MessageV0.Request(nic_add=_nic(i, sgs)) for i in range(requests, vnics)]
        )
        existing = set(_checked(client, MessageV0.Request(sg_list=True)).sg_list)
        _send_batches(
            client,
            [MessageV0.Request(sg_add=_sg(i)) for i in range(sgs) if f"sg-{i:04}" not in existing],
        )
        counted_vnics = len(_checked(client, MessageV0.Request(nic_list=True)).nic_list)
        counted_sgs = len(_checked(client, MessageV0.Request(sg_list=True)).sg_list)
    return Results(
        echo=echo_measure,
        status=status,
        nic_add=nic_add,
        member_add=member,
        rss_kib=resident_memory_kib(daemon.pid),
        vnics=counted_vnics,
        sgs=counted_sgs,
        full_size=full_size,
    )


def _with_dataplane(count: int) -> tuple[Measure, ...]:
    """nic_add and sg_member_add against a butterflyd driving a lab namespace's kernel."""
    with Lab() as lab:
        host = lab.host(log_level="warning")
        client = host.client
        _send_batches(client, [MessageV0.Request(sg_add=_sg(i)) for i in range(MEMBER_SGS)])

        def nic_add_once(index: int) -> None:
            nic = _nic(index, MEMBER_SGS)
            nic.type = MessageV0.Nic.TAP
            _checked(client, MessageV0.Request(nic_add=nic))

        def member_add_once(index: int) -> None:
            request = MessageV0.Request()
            request.sg_member_add.sg_id = f"sg-{index % MEMBER_SGS:04}"
            request.sg_member_add.member = _ipv4(12, index + 1)
            _checked(client, request)

        return (
            _measure("nic_add, data plane on (TAP)", count, nic_add_once),
            _measure(f"sg_member_add ({MEMBER_SGS} SGs), data plane on", count, member_add_once),
        )


def _verdict(measure: Measure) -> str:
    missed = []
    if measure.per_second < MIN_REQUESTS_PER_S:
        missed.append("req/s")
    if measure.percentile_ms(0.99) >= MAX_P99_MS:
        missed.append("p99")
    return "PASS" if not missed else "FAIL (" + ", ".join(missed) + ")"


def render(results: Results, requests: int) -> tuple[str, bool]:
    """The table, and whether every target that applies is met."""
    throughput_target = f">= {MIN_REQUESTS_PER_S:,.0f} req/s, p99 < {MAX_P99_MS:g} ms"
    header = ("measure", "requests", "req/s", "p50 ms", "p99 ms", "RSS MB", "target", "result")
    rows: list[tuple[str, ...]] = []
    verdicts: list[str] = []
    for measure, target in (
        (results.echo, "baseline"),
        (results.status, "baseline"),
        (results.nic_add, throughput_target),
        (results.member_add, throughput_target),
    ):
        verdict = "-" if target == "baseline" else _verdict(measure)
        if verdict != "-":
            verdicts.append(verdict)
        rows.append(
            (
                measure.name,
                str(len(measure.latencies_ns)),
                f"{measure.per_second:,.0f}",
                f"{measure.percentile_ms(0.50):.3f}",
                f"{measure.percentile_ms(0.99):.3f}",
                "-",
                target,
                verdict,
            )
        )
    for measure, key in zip(results.dataplane, ("nic_add", "sg_member_add"), strict=False):
        p99 = measure.percentile_ms(0.99)
        verdict = "PASS" if p99 < DATAPLANE_P99_MS[key] else "FAIL (p99)"
        verdicts.append(verdict)
        rows.append(
            (
                measure.name,
                str(len(measure.latencies_ns)),
                f"{measure.per_second:,.0f}",
                f"{measure.percentile_ms(0.50):.3f}",
                f"{p99:.3f}",
                "-",
                f"p99 < {DATAPLANE_P99_MS[key]:g} ms",
                verdict,
            )
        )
    rss_mb = results.rss_kib * 1024 / 1e6
    if results.full_size:
        memory_verdict = "PASS" if rss_mb < MAX_RSS_MB else "FAIL"
        verdicts.append(memory_verdict)
    else:
        memory_verdict = "n/a (state below target size)"
    rows.append(
        (
            f"daemon VmRSS, {results.vnics} vnics + {results.sgs} SGs",
            "-",
            "-",
            "-",
            "-",
            f"{rss_mb:.1f}",
            f"< {MAX_RSS_MB:g} MB",
            memory_verdict,
        )
    )
    title = (
        f"butterfly-bench api: {requests} requests per measure, one request per frame, one client;"
        " the control plane alone (--no-dataplane) except the rows marked 'data plane on'"
    )
    rendered = table(header, rows, right={1, 2, 3, 4, 5})
    return f"{title}\n{rendered}", all(v == "PASS" for v in verdicts)


def run(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    requests = args.requests or sizes["requests"]
    vnics = max(args.vnics or sizes["vnics"], requests)
    sgs = max(args.sgs or sizes["sgs"], MEMBER_SGS)
    full_size = vnics >= FULL["vnics"] and sgs >= FULL["sgs"]
    with tempfile.TemporaryDirectory(prefix="butterfly-bench-", dir=args.dir) as directory:
        daemon = DaemonProcess(directory, log_level="warning")
        try:
            daemon.start()
            print(
                f"butterflyd (pid {daemon.pid}) on {daemon.endpoint}, state in {daemon.state_path}",
                flush=True,
            )
            results = _benchmark(daemon, requests, vnics, sgs, full_size)
            if not args.no_dataplane_rows and os.geteuid() == 0:
                count = min(requests, DATAPLANE_REQUESTS)
                results = replace(results, dataplane=_with_dataplane(count))
        except (BenchError, ClientError, DaemonError, LabError) as error:
            print(f"butterfly-bench api: {error}", file=sys.stderr)
            log = daemon.log()
            if log:
                print(f"butterflyd's log:\n{log[-4000:]}", file=sys.stderr)
            return 2
        finally:
            daemon.close()
    table, met = render(results, requests)
    print(table)
    return verdict(met, strict=args.strict)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="butterfly-bench api")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
