"""``butterfly-bench dataplane --quick`` runs and prints every row (its figures are not judged).

It builds a lab of network namespaces with three real butterflyd, so it needs
root, qperf and iperf3; it must leave no namespace of its run behind.
"""

import os
import re
import subprocess
import sys

import pytest

SCENARIOS = (
    "same host, no SG",
    "same host, 20 SG rules",
    "across hosts, no SG",
    "across hosts, 20 SG rules",
)
METRICS = ("tcp_lat us", "udp_lat us", "TCP Gbit/s", "UDP Gbit/s (lost)")
RESULT = r"(PASS|FAIL|-)"


def _bench_command() -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "butterfly-bench")]


@pytest.mark.root
@pytest.mark.needs("qperf", "iperf3")
def test_bench_dataplane_quick_prints_every_row() -> None:
    result = subprocess.run(
        [*_bench_command(), "dataplane", "--quick"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^traffic: 1 round\(s\), median kept; 1 s per test;", out, re.M), out
    assert re.search(r"^measure +baselines +butterfly +ratio +target +result$", out, re.M), out
    for scenario in SCENARIOS:
        baselines = "veth .+, bridge .+" if scenario.startswith("same") else "vxlan .+"
        for metric in METRICS:
            row = rf"^{re.escape(f'{scenario}: {metric}')} +{baselines} +\S.* {RESULT}$"
            assert re.search(row, out, re.M), (scenario, metric, out)
    assert len(re.findall(r"^.*x bridge +(PASS|FAIL)$", out, re.M)) == 6, out
    assert len(re.findall(r"^.*x vxlan +(PASS|FAIL)$", out, re.M)) == 4, out
    for change in ("add", "del"):
        for rank in ("p50", "p99"):
            row = rf"^sg_member_{change} {rank} ms, 100 vnics +10 vnics [0-9.]+ .*< 50 ms +"
            assert re.search(row + RESULT, out, re.M), (change, rank, out)
    for label in (
        "without the port guards",
        "without the guards and the bridge table",
        "without the guards and either table",
    ):
        measure = f"diagnosis: same host, 20 SG rules, {label}: TCP Gbit/s"
        row = rf"^{re.escape(measure)} +bridge [0-9.]+ +[0-9.]+ +[0-9.]+ +- +-$"
        assert re.search(row, out, re.M), (label, out)
    prefix = re.search(r"^lab (\S+): namespaces", out, re.M)
    assert prefix, out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert not re.search(rf"^{prefix.group(1)}[a-z]", left.stdout, re.M), left.stdout
    assert not os.path.exists(f"/tmp/{prefix.group(1)}")


def test_bench_dataplane_help_offers_quick_and_strict() -> None:
    result = subprocess.run(
        [*_bench_command(), "dataplane", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--quick" in result.stdout and "--strict" in result.stdout
