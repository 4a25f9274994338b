"""``butterfly-bench api --quick`` runs and prints its table (its figures are not judged)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _bench_command() -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "butterfly-bench")]


def test_bench_api_quick_prints_the_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [*_bench_command(), "api", "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "butterfly-bench api: 500 requests per measure" in out
    assert "the control plane alone (--no-dataplane)" in out
    header = re.search(
        r"^measure +requests +req/s +p50 ms +p99 ms +RSS MB +target +result$", out, re.M
    )
    assert header, out
    for row in (
        "zmq echo round trip",
        "app_status, empty daemon",
        "nic_add",
        "sg_member_add (100 SGs)",
        "daemon VmRSS, 500 vnics + 100 SGs",
    ):
        assert re.search(rf"^{re.escape(row)} ", out, re.M), (row, out)
    assert out.count(">= 2,000 req/s, p99 < 5 ms") == 2
    assert re.search(r"^daemon VmRSS.* [0-9.]+ +< 150 MB ", out, re.M), out
    assert re.search(r"^nic_add .*(PASS|FAIL)", out, re.M), out
    # the daemon it started is gone, and so is its folder
    pid = int(re.search(r"butterflyd \(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        cmdline = b""
    assert str(tmp_path).encode() not in cmdline
    assert list(tmp_path.iterdir()) == []


def test_bench_help_lists_the_subcommands() -> None:
    result = subprocess.run(
        [*_bench_command(), "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "api" in result.stdout
    result = subprocess.run(
        [*_bench_command(), "api", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--quick" in result.stdout and "--strict" in result.stdout


@pytest.mark.root
def test_bench_scale_prints_every_figure_with_its_target() -> None:
    result = subprocess.run(
        [*_bench_command(), "scale", "--vnics", "10", "--vnis", "1", "--samples", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "butterfly-bench scale: data plane on (IPv4 underlay, multicast)" in out
    assert "max of 5 samples" in out, "fewer than 1,000 samples is no p99"
    for row, target in (
        ("nic_add, 3 SGs, existing VNI", "< 20 ms"),
        ("nic_update of the 3 SGs", "< 10 ms"),
        ("nic_del, VNI stays", "< 20 ms"),
        ("nic_add, 3 SGs, new VNI", "< 20 ms"),
        ("nic_del, last of its VNI", "< 20 ms"),
        ("sg_member_add", "< 5 ms"),
        ("first answer after kill -9 (nic_list)", "< 1 s"),
        ("reconcile done after kill -9", "< 30 s"),
        ("memory, daemon and children", "< 150 MB"),
        ("floor: ip/bridge/tc -batch + nft -f", "baseline"),
        ("floor: ip -batch link del of the taps", "baseline"),
    ):
        assert re.search(
            rf"^10 vnics / 1 VNIs +{re.escape(row)}.*{re.escape(target)}", out, re.M
        ), (
            row,
            out,
        )
