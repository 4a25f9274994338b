"""Memory stays flat while vnics come and go: the churn of ``butterfly-bench soak``, a
few hundred cycles against a real butterflyd with the kernel data plane.

A cycle adds and deletes a TAP, a NETNS and a vhost-user vnic (a VNI created
and removed with them) and changes a group's members and rules. Leaking 30
KB per vnic would grow the daemon by about 27 MB over the 300 cycles; the
bound is 3 MB, judged on the least-squares slope over 13 samples, after a
warm-up, so that the allocator's ups and downs (a MB or two either way)
cannot decide it.
"""

import os
import re
import subprocess
import sys

import pytest

from butterfly_lab.bench.soak import lab_host, soak
from butterfly_lab.lab import Lab

CYCLES = 300
EVERY = 25
WARM_UP = 100
MAX_GROWTH_MB = 3.0

pytestmark = pytest.mark.root


@pytest.mark.timeout(900)
def test_vnic_churn_leaves_memory_descriptors_threads_and_kernel_as_they_were() -> None:
    with Lab() as lab:
        host, vm = lab_host(lab)
        result = soak(host, vm, cycles=CYCLES, every=EVERY, warm_up=WARM_UP)
    samples = result.samples
    table = "\n".join(f"{s.cycles}: RSS {s.rss_kib} KiB, PSS {s.pss_kib} KiB" for s in samples)
    # RSS, not PSS: a page shared with other processes (libpython) counts in PSS
    # as a share that moves whenever processes of other tests start or end.
    growth = result.growth_mb(lambda s: s.rss_kib) * CYCLES / 1000
    assert growth < MAX_GROWTH_MB, f"RSS grew {growth:.1f} MB over {CYCLES} cycles:\n{table}"
    assert {s.fds for s in samples} == {result.baseline.fds}, samples
    assert {s.threads for s in samples} == {result.baseline.threads}, samples
    assert {s.processes for s in samples} == {2}, samples  # the daemon and its one worker
    assert result.unchanged, result.changes
    assert all(len(s.latencies_ms) == EVERY * 10 for s in samples[1:])


def test_the_bench_prints_a_row_per_sample_and_the_growth_headline() -> None:
    bench = os.path.join(os.path.dirname(sys.executable), "butterfly-bench")
    done = subprocess.run(
        [bench, "soak", "--cycles", "10", "--every", "5", "--warm-up", "2"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(
        r"^cycles +s +procs +RSS MB +dRSS MB +PSS MB +dPSS MB +USS MB +dUSS MB +fds", out, re.M
    ), out
    assert re.search(r"^baseline +0 +2 +[\d.]+ +\+0\.00 ", out, re.M), out
    for cycles in (5, 10):
        # p50, no p99 (50 requests are too few for one), the maximum
        row = rf"^{cycles} +\d+ +2 +[\d.]+ +[+-][\d.]+ .* [\d.]+ +- +[\d.]+$"
        assert re.search(row, out, re.M), out
    headline = r"^growth per 1,000 cycles: RSS [+-][\d.]+ MB, PSS [+-][\d.]+ MB, USS [+-][\d.]+ MB"
    assert re.search(headline, out, re.M), out
    assert "kernel objects and state as before the warm-up: PASS" in out, out
