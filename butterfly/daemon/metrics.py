"""butterflyd's Prometheus metrics, served on ``/metrics`` when ``--metrics`` asks.

Two kinds, through the official ``prometheus_client``:

* what the daemon counts as it goes: API requests by type and result, their
  latency histogram, the last reconcile's duration (:class:`Metrics`);
* what is read at scrape time, never before: per-vnic bytes, packets and
  drops in each direction from the kernel's interface counters
  (``/proc/net/dev``, one read for every vnic: :func:`vnic_counters_text`),
  conntrack entries per VNI (one ctnetlink dump), vhost-user workers' CPU
  time, the number of vnics, VNIs and security groups, and the drift
  watch's counts (:class:`SwitchCollector`).

The per-vnic families are written as text directly, after what
``generate_latest`` writes for the registry: 10,000 vnics are 60,000
samples, which prometheus_client's per-sample objects and escaping take
about 2 s to render on this project's machine, against the 1 s a scrape may
take; the text, with each vnic's labels rendered once and cached, takes a
few tens of milliseconds.

"in" is towards the guest (what the vnic's host-side interface transmits),
"out" is what the guest sent (what it receives), as ``nic_stats`` says.

The scrape runs in the HTTP server's thread while the main thread answers
requests: it only reads, from the kernel, from copies of the state taken in
one step, and never through the data plane's netlink or nftables handles.
"""

import gzip
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from butterfly.dataplane.naming import tap_name
from butterfly.errors import ButterflyError, ConfigError
from butterfly.model import StateView, Vnic
from butterfly.service.drift import DriftReport

__all__ = [
    "Metrics",
    "MetricsServer",
    "SwitchCollector",
    "VnicCounters",
    "interface_counters",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
"""Around the API's target (p99 < 5 ms), up to what a slow kernel change takes."""

SWITCH_INTERVAL = 0.0005
"""Seconds; see :class:`MetricsServer`."""
_PROC_NET_DEV = "/proc/thread-self/net/dev"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class InterfaceCounters:
    rx_bytes: int
    rx_packets: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_dropped: int


def interface_counters(path: str = _PROC_NET_DEV) -> dict[str, InterfaceCounters]:
    """Every interface of the calling thread's network namespace, in one read."""
    with open(path, encoding="ascii") as file:
        lines = file.read().splitlines()[2:]
    counters = {}
    for line in lines:
        name, _, numbers = line.partition(":")
        fields = numbers.split()
        counters[name.strip()] = InterfaceCounters(
            rx_bytes=int(fields[0]),
            rx_packets=int(fields[1]),
            rx_dropped=int(fields[3]),
            tx_bytes=int(fields[8]),
            tx_packets=int(fields[9]),
            tx_dropped=int(fields[11]),
        )
    return counters


def _cpu_seconds(pid: int) -> float | None:
    """User plus system time of a process (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _copy(items: Callable[[], Iterable[T]]) -> list[T]:
    """A listing of the state, copied while the main thread may add or remove
    to it: an item removed under our feet makes the copy start again."""
    for _ in range(10):
        try:
            return list(items())
        except (KeyError, RuntimeError):
            continue
    return []


_VNIC_FAMILIES = (
    ("bytes", "Bytes through a vnic's port (in: to the guest, out: from it)"),
    ("packets", "Packets through a vnic's port (in: to the guest, out: from it)"),
    ("drops", "Packets the kernel dropped at a vnic's port"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class VnicCounters:
    """The per-vnic families in Prometheus' text format (0.0.4), read at each call."""

    def __init__(self, state: StateView, proc_net_dev: str = _PROC_NET_DEV) -> None:
        self._state = state
        self._proc_net_dev = proc_net_dev
        self._labels: dict[tuple[str, int], tuple[str, str]] = {}

    def _label_sets(self, vnic: Vnic) -> tuple[str, str]:
        key = (vnic.id, vnic.vni)
        labels = self._labels.get(key)
        if labels is None:
            common = f'vnic="{_escape(vnic.id)}",vni="{vnic.vni}",direction='
            labels = self._labels[key] = (common + '"in"}', common + '"out"}')
        return labels

    def text(self) -> str:
        vnics = _copy(self._state.vnics)
        interfaces = interface_counters(self._proc_net_dev)
        lines: dict[str, list[str]] = {name: [] for name, _ in _VNIC_FAMILIES}
        bytes_, packets, drops = lines["bytes"], lines["packets"], lines["drops"]
        for vnic in vnics:
            port = interfaces.get(tap_name(vnic.id))
            if port is None:
                continue
            into, out = self._label_sets(vnic)
            bytes_.append(f"butterfly_vnic_bytes_total{{{into} {port.tx_bytes}")
            bytes_.append(f"butterfly_vnic_bytes_total{{{out} {port.rx_bytes}")
            packets.append(f"butterfly_vnic_packets_total{{{into} {port.tx_packets}")
            packets.append(f"butterfly_vnic_packets_total{{{out} {port.rx_packets}")
            drops.append(f"butterfly_vnic_drops_total{{{into} {port.tx_dropped}")
            drops.append(f"butterfly_vnic_drops_total{{{out} {port.rx_dropped}")
        if len(self._labels) > 2 * len(vnics) + 1000:
            self._labels.clear()  # deleted vnics' labels go, now and then
        parts = []
        for name, text in _VNIC_FAMILIES:
            family = f"butterfly_vnic_{name}_total"
            parts.append(f"# HELP {family} {text}\n# TYPE {family} counter\n")
            parts.append("\n".join(lines[name]) + "\n" if lines[name] else "")
        return "".join(parts)


class SwitchCollector(Collector):
    """The switch's other metrics, read when Prometheus scrapes."""

    def __init__(
        self,
        *,
        state: StateView,
        worker_pids: Callable[[], list[int]],
        conntrack: Callable[[], dict[int, int]] | None,
        drops: Callable[[], dict[str, int]] | None,
        drift: Callable[[], DriftReport | None] = lambda: None,
    ) -> None:
        """``conntrack``: tracked entries per VNI; ``drops``: packets dropped per
        cause; both None without a kernel data plane. ``drift``: what the drift
        watch counted (None while there is none)."""
        self._state = state
        self._worker_pids = worker_pids
        self._conntrack = conntrack
        self._drops = drops
        self._drift = drift

    def collect(self) -> Iterable[Metric]:
        yield from self._counts(_copy(self._state.vnics))
        yield from self._workers()
        if self._conntrack is not None:
            yield from self._conntrack_entries()
        if self._drops is not None:
            yield from self._dropped()
        report = self._drift()
        if report is not None:
            yield from _drift(report)

    def _counts(self, vnics: list[Vnic]) -> Iterator[Metric]:
        yield GaugeMetricFamily("butterfly_vnics", "vnics on this host", value=len(vnics))
        yield GaugeMetricFamily(
            "butterfly_vnis", "VNIs with a vnic on this host", value=len({v.vni for v in vnics})
        )
        yield GaugeMetricFamily(
            "butterfly_security_groups",
            "Security groups defined",
            value=len(_copy(self._state.sgs)),
        )

    def _workers(self) -> Iterator[Metric]:
        busy = CounterMetricFamily(
            "butterfly_vhost_worker_cpu_seconds",
            "CPU time (user and system) of each vhost-user worker process",
            labels=["worker"],
        )
        for index, pid in enumerate(self._worker_pids()):
            seconds = _cpu_seconds(pid)
            if seconds is not None:
                busy.add_metric([str(index)], seconds)
        yield busy

    def _conntrack_entries(self) -> Iterator[Metric]:
        assert self._conntrack is not None
        entries = GaugeMetricFamily(
            "butterfly_conntrack_entries", "Tracked flows in a VNI's conntrack zone", labels=["vni"]
        )
        try:
            for vni, count in sorted(self._conntrack().items()):
                entries.add_metric([str(vni)], count)
        except ButterflyError as error:
            log.warning("metrics: %s", error)
            return
        yield entries

    def _dropped(self) -> Iterator[Metric]:
        assert self._drops is not None
        drops = CounterMetricFamily(
            "butterfly_drops",
            "Packets butterfly's rules dropped, by cause: security_group_in/out (no rule"
            " of the vnic's groups allows it), ip_spoofing (a source address that is not"
            " the vnic's), frame_type (neither IP nor ARP, to or from a filtered vnic)",
            labels=["cause"],
        )
        try:
            for cause, packets in sorted(self._drops().items()):
                drops.add_metric([cause], packets)
        except ButterflyError as error:
            log.warning("metrics: %s", error)
            return
        yield drops


def _drift(report: DriftReport) -> Iterator[Metric]:
    """Other software's changes to butterfly's kernel objects, and their repair."""
    for family, help_, counts in (
        ("seen", "seen", report.seen_by_kind),
        ("repaired", "put back by a repair", report.repaired_by_kind),
    ):
        metric = CounterMetricFamily(
            f"butterfly_drift_changes_{family}",
            f"Changes other programs made to butterfly's kernel objects, {help_}, by"
            " kind: nftables, link, port_flags, forwarding_entry, port_guard,"
            " notifications_lost (unknown: everything is checked)",
            labels=["kind"],
        )
        for kind, count in counts:
            metric.add_metric([kind], count)
        yield metric
    yield CounterMetricFamily(
        "butterfly_drift_repairs", "Repairs of drift that succeeded", value=report.repairs
    )
    yield CounterMetricFamily(
        "butterfly_drift_repair_failures",
        "Repairs of drift that failed (the next change tries again)",
        value=report.repair_failures,
    )
    yield GaugeMetricFamily(
        "butterfly_drift_report_only",
        "1 when butterflyd only reports drift and repairs nothing (--report-drift-only)",
        value=int(report.report_only),
    )


class Metrics:
    """The daemon's registry (its own, not prometheus_client's global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "butterfly_api_requests",
            "API requests answered, by type and result",
            ["request", "result"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "butterfly_api_request_duration_seconds",
            "Time to answer an API request, by type",
            ["request"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._reconcile = Gauge(
            "butterfly_reconcile_duration_seconds",
            "How long the last reconcile of the kernel with the state took",
            registry=self.registry,
        )
        self._collect_time = Gauge(
            "butterfly_scrape_duration_seconds",
            "How long the previous scrape took to read and render (and compress)",
            registry=self.registry,
        )

    def observe_answer(self, request: str, ok: bool, seconds: float) -> None:
        """An :data:`~butterfly.daemon.observe.AnswerListener`."""
        self._requests.labels(request, "ok" if ok else "error").inc()
        self._latency.labels(request).observe(seconds)

    def reconciled(self, seconds: float) -> None:
        self._reconcile.set(seconds)

    def scraped(self, seconds: float) -> None:
        self._collect_time.set(seconds)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class MetricsServer:
    """``/metrics`` over HTTP on ``address`` (host, port), in threads of its own
    (prometheus_client's threading WSGI server)."""

    def __init__(
        self,
        metrics: Metrics,
        address: tuple[str, int],
        *,
        collector: SwitchCollector,
        vnics: VnicCounters,
    ) -> None:
        self._metrics = metrics
        self._vnics = vnics
        metrics.registry.register(collector)
        # A request waiting for the interpreter while a scrape renders waits up
        # to this interval at each of its system calls (5 ms by default).
        sys.setswitchinterval(SWITCH_INTERVAL)
        host, port = address

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        try:
            self._server = make_server(host, port, self._app, Server, handler_class=_QuietHandler)
        except OSError as error:
            raise ConfigError(f"metrics: cannot listen on {host}:{port}: {error}") from error
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics here\n"]
        started = time.perf_counter()
        body = generate_latest(self._metrics.registry) + self._vnics.text().encode()
        headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        self._metrics.scraped(time.perf_counter() - started)
        start_response("200 OK", headers)
        return [body]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
