"""``butterfly-bench vhost --quick`` runs and prints every row (its figures are not judged).

It builds a lab with a real butterflyd and drives dpdk-testpmd against butterfly's
vhost-user backend and DPDK's own, so it needs root and dpdk-testpmd (the guests' row
needs QEMU too, and says n/a without it); it must leave no namespace, testpmd or
runtime folder of its run behind.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

FRAME_ROWS = (
    "guest -> switch, 64 B frames (testpmd txonly)",
    "guest -> switch, 1500 B frames (testpmd txonly)",
    "switch -> guest, 64 B frames (testpmd rxonly)",
    "switch -> guest, 1500 B frames (testpmd rxonly)",
)
MPPS = r"[0-9.]+ Mpps"
RESULT = r"(PASS|FAIL)"


def _bench_command() -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "butterfly-bench")]


def _row(out: str, measure: str, rest: str) -> None:
    assert re.search(rf"^{re.escape(measure)} +{rest}$", out, re.M), (measure, out)


@pytest.mark.root
@pytest.mark.needs("dpdk-testpmd")
def test_bench_vhost_quick_prints_every_row() -> None:
    result = subprocess.run(
        [*_bench_command(), "vhost", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^butterfly-bench vhost: 1 s per testpmd measure after 1 s", out, re.M)
    assert re.search(r"^measure +butterfly +reference +target +result$", out, re.M), out
    for measure in FRAME_ROWS:
        target = rf">= 1 Mpps +{RESULT}" if " 64 B " in measure else "- +-"
        load = "; workers [0-9]+% busy"
        if measure.startswith("guest -> switch"):
            load += rf", [0-9]+% in the kernel: kernel path alone <= {MPPS}/core"
        load += r"; [0-9.]+ us of worker CPU/frame \([0-9.]+ in user space\)"
        _row(out, f"{measure}, Python loop", rf"{MPPS}.* +DPDK vhost {MPPS}{load} +{target}")
        _row(
            out,
            f"{measure}, C loop",
            rf"{MPPS}.* +Python loop {MPPS}( \(x[0-9.]+\))?; DPDK vhost {MPPS}{load} +{target}",
        )
    _row(
        out,
        "guest -> switch, 65,000 B TSO segments (testpmd csum + tso), C loop",
        rf"[0-9.]+ Gbit/s +DPDK vhost [0-9.]+ Gbit/s +>= 10 Gbit/s +{RESULT}",
    )
    guests = "TCP between two QEMU guests (iperf3, TCG), C loop"
    if shutil.which("qemu-system-x86_64"):
        _row(
            out,
            guests,
            rf"vhost-user [0-9.]+ Gbit/s \(x[0-9.]+\) +tap [0-9.]+ Gbit/s;"
            rf" DPDK vhost [0-9.]+ Gbit/s \(x[0-9.]+\) +>= tap .* {RESULT}",
        )
    else:
        _row(out, guests, r"n/a +n/a: .* n/a")
    latency = r"[0-9.]+ ms \(p50 [0-9.]+\)"
    assert re.search(
        rf"^API p99, nic_list, src at full rate \({MPPS}\), C loop +{latency} +idle {latency}"
        rf" +< 5 ms +{RESULT}$",
        out,
        re.M,
    ), out
    assert re.search(
        rf"^API p99, sg_member_add, src at full rate \({MPPS}\), C loop +{latency}"
        rf" +idle {latency};"
        rf" CPUs busy, no vhost traffic {latency} +< 5 ms +{RESULT}$",
        out,
        re.M,
    ), out
    _row(
        out,
        "vhost workers' CPU, frontend connected, no traffic, C loop",
        rf"[0-9.]+ % +- +< 1 % +{RESULT}",
    )
    prefix = re.search(r"^lab (\S+): namespaces", out, re.M)
    assert prefix, out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert not re.search(rf"^{prefix.group(1)}[a-z]", left.stdout, re.M), left.stdout
    assert not os.path.exists(f"/tmp/{prefix.group(1)}")
    pid = prefix.group(1).removeprefix("bfl")
    runtime = os.listdir("/var/run/dpdk") if os.path.isdir("/var/run/dpdk") else []
    assert not [name for name in runtime if name.startswith(f"bfvb{pid}")], runtime


def test_bench_vhost_help_offers_quick_and_strict() -> None:
    result = subprocess.run(
        [*_bench_command(), "vhost", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--quick" in result.stdout and "--strict" in result.stdout
