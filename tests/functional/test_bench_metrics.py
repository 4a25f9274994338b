"""``butterfly-bench metrics --quick`` runs and prints every row (figures not judged).

It runs a daemon in a lab namespace with a tap per vnic, so it needs root; it
must leave no namespace of its run behind.
"""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.root


def test_bench_metrics_quick_prints_the_table() -> None:
    bench = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "butterfly-bench"), "metrics", "--quick"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = bench.communicate(timeout=300)
    assert bench.returncode == 0, out + err
    assert "Prometheus scrapes of 300 vnics (data plane off, 300 taps" in out
    assert re.search(r"^measure +samples +p50 ms +p99 ms +max ms +target +result$", out, re.M)
    for row in (
        r"read /proc/net/dev \(baseline\) +5 ",
        r"GET /metrics, 300 vnics \(\d+ KB\) +5 .*< 1 s +(PASS|FAIL)",
        r"sg_member_add, no scrape \(baseline\) +1000 ",
        r"sg_member_add, a scrape every second +1000 .*p99 < 5 ms +(PASS|FAIL)",
        r"sg_member_add, scraping back to back +1000 ",
    ):
        assert re.search(rf"^{row}", out, re.M), (row, out)
    # the lab's names start with bfl<pid of the bench>
    left = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [name for name in left if name.startswith(f"bfl{bench.pid}")]
