"""Prometheus metrics of a real butterflyd in a lab host, scraped by a real Prometheus.

The figures are checked against the kernel's own counters, read before and
after each scrape (counters only grow, so the scraped value must lie between
the two readings), and against conntrack's own listing.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from switch_helpers import open_sg

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.dataplane.naming import bridge_name, tap_name
from butterfly_lab.lab import Host, Lab, Vm, wait_for

pytestmark = pytest.mark.root

PORT = 9477
"""Inside the lab host's own network namespace: no clash with anything outside."""
PROMETHEUS_PORT = 9090
VNI = 77

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def switch(lab: Lab) -> tuple[Host, Vm, Vm]:
    host = lab.host(extra_args=["--metrics", f"127.0.0.1:{PORT}"])
    open_sg(host)
    a, b = lab.vm(), lab.vm()
    host.add_vnic("ma", vm=a, mac="52:54:00:77:00:01", vni=VNI, ips=["10.77.0.1"],
                  security_groups=["open"])  # fmt: skip
    host.add_vnic("mb", vm=b, mac="52:54:00:77:00:02", vni=VNI, ips=["10.77.0.2"],
                  security_groups=["open"])  # fmt: skip
    assert a.ping("10.77.0.2", count=20, interval=0.01).received == 20
    return host, a, b


def _get(host: Host, url: str) -> bytes:
    """An HTTP GET from inside the host's namespace."""

    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=10) as answer:
            body: bytes = answer.read()
            return body

    return host.run(fetch)


def scrape(host: Host) -> Samples:
    text = _get(host, f"http://127.0.0.1:{PORT}/metrics").decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def kernel(host: Host, vnic_id: str) -> dict[str, int]:
    folder = f"/sys/class/net/{tap_name(vnic_id)}/statistics"
    names = ("rx_bytes", "rx_packets", "rx_dropped", "tx_bytes", "tx_packets", "tx_dropped")
    text = host.exec("sh", "-c", " ".join(f"cat {folder}/{name};" for name in names))
    return dict(zip(names, map(int, text.split()), strict=True))


def _labels(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def test_vnic_counters_are_the_kernels(switch: tuple[Host, Vm, Vm]) -> None:
    host, _, _ = switch
    for vnic_id in ("ma", "mb"):
        before = kernel(host, vnic_id)
        samples = scrape(host)
        after = kernel(host, vnic_id)
        for name, direction, field in (
            ("bytes", "in", "tx_bytes"),
            ("packets", "in", "tx_packets"),
            ("drops", "in", "tx_dropped"),
            ("bytes", "out", "rx_bytes"),
            ("packets", "out", "rx_packets"),
            ("drops", "out", "rx_dropped"),
        ):
            key = (
                f"butterfly_vnic_{name}_total",
                _labels(vnic=vnic_id, vni=str(VNI), direction=direction),
            )
            assert before[field] <= samples[key] <= after[field], (key, before, after)
        # 20 echo requests out of ma, 20 replies into it: 98-byte frames at least
        assert samples[("butterfly_vnic_packets_total", _labels(
            vnic=vnic_id, vni=str(VNI), direction="out"))] >= 20  # fmt: skip
    samples = scrape(host)
    assert samples[("butterfly_vnics", frozenset())] == 2
    assert samples[("butterfly_vnis", frozenset())] == 1
    assert samples[("butterfly_security_groups", frozenset())] == 1
    ok = samples[("butterfly_api_requests_total", _labels(request="nic_add", result="ok"))]
    assert ok == 2
    assert samples[("butterfly_reconcile_duration_seconds", frozenset())] > 0


def test_conntrack_entries_per_vni_are_conntracks(switch: tuple[Host, Vm, Vm]) -> None:
    host, a, _ = switch
    zones = json.loads(host.exec("nft", "-j", "list", "map", "inet", "butterfly", "zones"))
    elements = next(item["map"] for item in zones["nftables"] if "map" in item)["elem"]
    zone = dict(elements)[bridge_name(VNI)]
    for port in range(5):  # no listener: each probe is a new flow, tracked all the same
        a.probe("udp", "10.77.0.2", 5000 + port, timeout=0.1)

    def listed() -> int:
        output = host.exec("conntrack", "-L", "-w", str(zone), check=False)
        return sum(1 for line in output.splitlines() if f"zone={zone}" in line)

    before = listed()
    value = scrape(host)[("butterfly_conntrack_entries", _labels(vni=str(VNI)))]
    after = listed()
    assert before >= 5
    assert min(before, after) <= value <= max(before, after)


@pytest.fixture
def prometheus(switch: tuple[Host, Vm, Vm], tmp_path: Path) -> Iterator[Host]:
    """Debian's Prometheus inside the host's namespace, scraping butterflyd every second."""
    host, _, _ = switch
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: butterfly\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{PORT}']\n"
    )
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 (closed below)
    process = host.popen(
        "prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path}/data",
        f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}", stdout=log,
    )  # fmt: skip
    try:
        yield host
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def query(host: Host, promql: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode(
        {"query": promql}
    )
    answer = json.loads(_get(host, url))
    assert answer["status"] == "success", answer
    result: list[dict[str, object]] = answer["data"]["result"]
    return result


def _value(result: list[dict[str, object]]) -> tuple[float, float]:
    """(timestamp, value) of a one-series instant vector."""
    assert len(result) == 1, result
    stamp, value = result[0]["value"]  # type: ignore[misc]
    return float(stamp), float(value)


def test_a_real_prometheus_scrapes_the_daemon(
    prometheus: Host, switch: tuple[Host, Vm, Vm]
) -> None:
    host, a, _ = switch

    def up() -> bool:
        try:
            result = query(host, 'up{job="butterfly"}')
        except OSError:  # Prometheus is still starting
            return False
        return result != [] and _value(result)[1] == 1

    wait_for(up, "Prometheus scraping butterflyd", timeout=60)
    assert a.ping("10.77.0.2", count=10, interval=0.01).received == 10
    quiet_from = time.time()
    before = kernel(host, "ma")
    series = 'butterfly_vnic_bytes_total{vnic="ma",direction="out",vni="77"}'
    # the scrape that follows the traffic: the series' own timestamp says when
    wait_for(
        lambda: _value(query(host, f"timestamp({series})"))[1] > quiet_from + 0.2,
        "a scrape after the traffic",
        timeout=30,
    )
    _, value = _value(query(host, series))
    after = kernel(host, "ma")
    assert before["rx_bytes"] <= value <= after["rx_bytes"]
    assert _value(query(host, "butterfly_vnics"))[1] == 2
    latency = query(host, 'butterfly_api_request_duration_seconds_count{request="nic_add"}')
    assert _value(latency)[1] >= 2


def test_vhost_workers_cpu_time_is_their_processes(switch: tuple[Host, Vm, Vm]) -> None:
    host, _, _ = switch
    request = MessageV0.Request()
    request.nic_add.id, request.nic_add.mac, request.nic_add.vni = "mv", "52:54:00:77:00:03", 78
    request.nic_add.type = MessageV0.Nic.VHOST_USER_SERVER
    host.call(request)  # the first vhost-user vnic starts the workers
    try:
        children = Path(f"/proc/{host.daemon.pid}/task/{host.daemon.pid}/children")
        workers = [int(pid) for pid in children.read_text().split()]
        assert workers

        def cpu(pid: int) -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = sum(cpu(pid) for pid in workers)
        samples = scrape(host)
        after = sum(cpu(pid) for pid in workers)
        scraped = [v for (name, _), v in samples.items() if name.startswith("butterfly_vhost_")]
        assert len(scraped) == len(workers)
        assert before <= sum(scraped) <= after
    finally:
        host.delete_vnic("mv")


SEND_FRAMES = (
    "import socket, sys\n"
    "raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
    "raw.bind((sys.argv[1], 0))\n"
    "for line in sys.stdin.read().split():\n"
    "    raw.send(bytes.fromhex(line))\n"
)


def _rule_counters(host: Host) -> dict[str, int]:
    """The named drop counters, as nft lists them."""
    counts = {}
    for family in ("bridge", "inet"):
        listed = json.loads(
            host.exec("nft", "-j", "list", "counters", "table", family, "butterfly")
        )
        for item in listed["nftables"]:
            if "counter" in item:
                counts[item["counter"]["name"]] = int(item["counter"]["packets"])
    return counts


def _drops(host: Host) -> dict[str, float]:
    return {
        dict(labels)["cause"]: value
        for (name, labels), value in scrape(host).items()
        if name == "butterfly_drops_total"
    }


CAUSES = {
    "security_group_in": "drop_sg_in",
    "security_group_out": "drop_sg_out",
    "ip_spoofing": "drop_spoof_ip",
    "frame_type": "drop_frame_type",
}


def test_drops_by_cause_are_the_rules_counters(lab: Lab, switch: tuple[Host, Vm, Vm]) -> None:
    host, a, _ = switch
    closed, spoofer = lab.vm(), lab.vm()
    host.cli("sg", "add", "closed")
    host.add_vnic("mc", vm=closed, mac="52:54:00:77:00:04", vni=VNI, ips=["10.77.0.4"],
                  security_groups=["closed"])  # fmt: skip
    host.add_vnic("ms", vm=spoofer, mac="52:54:00:77:00:05", vni=VNI, ips=["10.77.0.5"],
                  security_groups=["open"], ip_anti_spoof=True)  # fmt: skip
    try:
        start = _drops(host)
        assert set(start) == set(CAUSES)
        # a security group that allows nothing in, and one that allows all (the control)
        assert a.ping("10.77.0.4", count=5, interval=0.05, deadline=2).received == 0
        assert a.ping("10.77.0.2", count=3, interval=0.05).received == 3
        # a source address that is not the vnic's, then its own (the control)
        spoofer.ip("addr", "add", "10.77.0.55/24", "dev", tap_name("ms"))
        spoofed = spoofer.exec("ping", "-n", "-q", "-c", "3", "-i", "0.2", "-w", "2", "-I",
                               "10.77.0.55", "10.77.0.2", check=False)  # fmt: skip
        assert " 0 received" in spoofed
        assert spoofer.ping("10.77.0.2", count=3, interval=0.05).received == 3
        # frames neither IP nor ARP from a filtered vnic
        frame = "52540077000252540077000588b5" + "00" * 46
        spoofer.exec(sys.executable, "-c", SEND_FRAMES, tap_name("ms"), input=f"{frame}\n" * 5)
        before = _rule_counters(host)
        scraped = _drops(host)
        after = _rule_counters(host)
        for cause, counter in CAUSES.items():
            assert before[counter] <= scraped[cause] <= after[counter], cause
        assert scraped["security_group_in"] - start["security_group_in"] >= 5
        assert scraped["ip_spoofing"] - start["ip_spoofing"] >= 1
        assert scraped["frame_type"] - start["frame_type"] == 5
    finally:
        host.delete_vnic("mc")
        host.delete_vnic("ms")
        host.cli("sg", "del", "closed")


def _drift(host: Host, name: str, kind: str) -> float:
    return scrape(host)[(f"butterfly_drift_changes_{name}_total", _labels(kind=kind))]


DRIFT_CHANGES = {
    "link": f"ip link set dev {tap_name('ma')} mtu 1280",
    "port_flags": f"bridge link set dev {tap_name('ma')} learning on",
    "nftables": "nft flush map inet butterfly in_mac",
    "port_guard": f"tc qdisc del dev {tap_name('ma')} clsact",
    "forwarding_entry": f"bridge fdb del 52:54:00:77:00:01 dev {tap_name('ma')} master",
}


def test_drift_is_counted_by_kind_seen_and_repaired(switch: tuple[Host, Vm, Vm]) -> None:
    host, a, _ = switch
    before = scrape(host)
    assert before[("butterfly_drift_report_only", frozenset())] == 0
    for kind, command in DRIFT_CHANGES.items():
        seen, repaired = _drift(host, "seen", kind), _drift(host, "repaired", kind)
        host.exec("sh", "-c", command)
        wait_for(lambda k=kind, r=repaired: _drift(host, "repaired", k) > r, f"{kind} repaired")
        assert _drift(host, "seen", kind) > seen
    after = scrape(host)
    assert after[("butterfly_drift_repairs_total", frozenset())] >= before[
        ("butterfly_drift_repairs_total", frozenset())
    ] + len(DRIFT_CHANGES)
    assert after[("butterfly_drift_repair_failures_total", frozenset())] == 0
    assert a.ping("10.77.0.2", count=3, interval=0.05).received == 3, "all put back"


def test_report_only_mode_is_visible_and_counts_nothing_repaired(lab: Lab) -> None:
    host = lab.host(extra_args=["--metrics", f"127.0.0.1:{PORT}", "--report-drift-only"])
    assert scrape(host)[("butterfly_drift_report_only", frozenset())] == 1
    wait_for(  # the start-up reconcile made them
        lambda: bool(host.exec("nft", "list", "table", "inet", "butterfly", check=False)),
        "butterfly's tables",
    )
    host.exec("nft", "delete", "table", "inet", "butterfly")
    wait_for(lambda: _drift(host, "seen", "nftables") > 0, "the change counted")
    assert _drift(host, "repaired", "nftables") == 0
    assert scrape(host)[("butterfly_drift_repairs_total", frozenset())] == 0
