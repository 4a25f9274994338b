"""``butterfly-bench api --quick`` runs and prints its table (its figures are not judged)."""

import os
import re
import subprocess
import sys
from pathlib import Path


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
