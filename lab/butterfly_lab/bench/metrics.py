"""``butterfly-bench metrics``: a Prometheus scrape of 10,000 vnics, and what it costs the API.

Starts a real ``butterflyd --no-dataplane --metrics`` inside a lab
namespace that also holds one persistent tap per vnic, named as the vnic's
port (``bf-<id>``): the scrape then reads 10,000 ports' kernel counters as
it would on a hypervisor (conntrack is not read: no kernel data plane).
Measured in the same run:

* a baseline: reading ``/proc/net/dev`` alone (the kernel's part of a scrape);
* a whole scrape, ``GET /metrics`` over HTTP, with 10,000 vnics (target < 1 s);
* ``sg_member_add`` latency with no scrape (the baseline), then while
  another thread scrapes once a second (15 times Prometheus' default rate:
  the API must stay within its targets), then back to back (the worst case).

The exit code is 0 when it ran, whatever the figures; ``--strict``: 1 when a
target is missed.
"""

import argparse
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from butterfly.api.client import Client
from butterfly.api.codec import REVISION
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages
from butterfly.dataplane.naming import tap_name
from butterfly.errors import ClientError
from butterfly_lab.bench.figures import BenchError, busy_elsewhere, percentile, table, verdict
from butterfly_lab.daemon import DaemonError, DaemonProcess
from butterfly_lab.lab import Lab, LabError, Netns, sh

__all__ = ["add_arguments", "run"]

MAX_SCRAPE_S = 1.0
MAX_API_P99_MS = 5.0
PORT = 9477
FULL = {"vnics": 10_000, "scrapes": 30, "requests": 2_000}
QUICK = {"vnics": 300, "scrapes": 5, "requests": 1_000}
FILL_BATCH = 100
T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small run (a smoke test)")
    parser.add_argument("--vnics", type=int, help="vnics (default 10,000)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


def _fill(client: Client, lab_ns: str, vnics: int) -> None:
    """The vnics in the daemon, and their ports as taps in the namespace."""
    ids = [f"m{index:06}" for index in range(vnics)]
    for start in range(0, vnics, FILL_BATCH):
        envelope = Messages()
        for index in range(start, min(vnics, start + FILL_BATCH)):
            nic = MessageV0.Nic(id=ids[index], mac=_mac(index), vni=index % 1000 + 1)
            nic.type = MessageV0.Nic.TAP
            envelope.messages.add(revision=REVISION).message_0.request.nic_add.CopyFrom(nic)
        for message in client.send(envelope).messages:
            if not message.message_0.response.status.status:
                raise BenchError(message.message_0.response.status.error.description)
    batch = "".join(f"tuntap add dev {tap_name(vnic_id)} mode tap\n" for vnic_id in ids)
    sh("ip", "-n", lab_ns, "-batch", "-", input=batch, timeout=300)
    client.call(MessageV0.Request(sg_add=MessageV0.Sg(id="bench")))


def _mac(index: int) -> str:
    return "52:54:" + ":".join(f"{(index >> shift) & 0xFF:02x}" for shift in (24, 16, 8, 0))


def _timed(count: int, work: Callable[[int], object]) -> list[float]:
    seconds = []
    for index in range(count):
        started = time.perf_counter()
        work(index)
        seconds.append(time.perf_counter() - started)
    return seconds


def _scrape(_: int = 0) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=30) as answer:
        body: bytes = answer.read()
        return body


def _read_proc_net_dev(_: int) -> str:
    with open("/proc/thread-self/net/dev", encoding="ascii") as file:
        return file.read()


def _member_add(client: Client, offset: int) -> Callable[[int], object]:
    def send(index: int) -> None:
        value = offset + index
        member = f"10.{(value >> 16) & 0xFF}.{(value >> 8) & 0xFF}.{value & 0xFF}"
        request = MessageV0.Request(
            sg_member_add=MessageV0.SgMemberAddReq(sg_id="bench", member=member)
        )
        if not client.call(request).response.status.status:
            raise BenchError(f"sg_member_add {member} failed")

    return send


def _while_scraping(netns: Netns, period: float, work: Callable[[], T]) -> T:
    """``work()`` while another thread scrapes every ``period`` seconds (0: back to back)."""
    stop = threading.Event()

    def scrape_on() -> None:
        while not stop.is_set():
            started = time.monotonic()
            _scrape()
            stop.wait(max(0.0, period - (time.monotonic() - started)))

    background = threading.Thread(target=lambda: netns.run(scrape_on, timeout=3600))
    background.start()
    try:
        return work()
    finally:
        stop.set()
        background.join()


def _ms(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:.1f}"


def run(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    vnics = args.vnics or sizes["vnics"]
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="butterfly-bench-") as directory:
        netns = lab.netns("m")
        daemon = DaemonProcess(
            directory,
            netns=netns.name,
            endpoint=f"ipc://{directory}/api.sock",
            log_level="warning",
            extra_args=["--metrics", f"127.0.0.1:{PORT}"],
        )
        try:
            daemon.start()
            with Client(endpoint=daemon.endpoint, timeout_ms=60_000) as client:
                _fill(client, netns.name, vnics)
                size = len(netns.run(_scrape))
                busy = busy_elsewhere()
                proc = netns.run(lambda: _timed(sizes["scrapes"], _read_proc_net_dev))
                scrapes = netns.run(lambda: _timed(sizes["scrapes"], _scrape))
                quiet = _timed(sizes["requests"], _member_add(client, 0))
                every_second = _while_scraping(
                    netns, 1.0, lambda: _timed(sizes["requests"], _member_add(client, 1 << 20))
                )
                loaded = _while_scraping(
                    netns, 0.0, lambda: _timed(sizes["requests"], _member_add(client, 2 << 20))
                )
        except (BenchError, ClientError, DaemonError, LabError) as error:
            print(f"butterfly-bench metrics: {error}", file=sys.stderr)
            print(daemon.log()[-4000:], file=sys.stderr)
            return 2
        finally:
            daemon.close()
    rows = [
        ("read /proc/net/dev (baseline)", str(len(proc)), _ms(proc, 0.5), "-",
         _ms(proc, 1.0), "-", "-"),
        (f"GET /metrics, {vnics} vnics ({size // 1024} KB)", str(len(scrapes)),
         _ms(scrapes, 0.5), "-", _ms(scrapes, 1.0), f"< {MAX_SCRAPE_S:g} s",
         "PASS" if max(scrapes) < MAX_SCRAPE_S else "FAIL"),
        ("sg_member_add, no scrape (baseline)", str(len(quiet)), _ms(quiet, 0.5),
         _ms(quiet, 0.99), _ms(quiet, 1.0), "-", "-"),
        ("sg_member_add, a scrape every second", str(len(every_second)),
         _ms(every_second, 0.5), _ms(every_second, 0.99), _ms(every_second, 1.0),
         f"p99 < {MAX_API_P99_MS:g} ms",
         "PASS" if percentile(every_second, 0.99) * 1000 < MAX_API_P99_MS else "FAIL"),
        ("sg_member_add, scraping back to back", str(len(loaded)), _ms(loaded, 0.5),
         _ms(loaded, 0.99), _ms(loaded, 1.0), "(worst case)", "-"),
    ]  # fmt: skip
    print(
        f"butterfly-bench metrics: Prometheus scrapes of {vnics} vnics"
        f" (data plane off, {vnics} taps in a namespace; CPUs {busy:.0%} busy"
        f" elsewhere before the run; {os.cpu_count()} CPUs)"
    )
    header = ("measure", "samples", "p50 ms", "p99 ms", "max ms", "target", "result")
    print(table(header, rows, right={1, 2, 3, 4}))
    return verdict(all(row[-1] != "FAIL" for row in rows), strict=args.strict)
