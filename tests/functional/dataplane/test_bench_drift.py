"""``butterfly-bench drift`` runs in its own lab and prints its table (its figures
are not judged here: the benchmark is where they are read)."""

import os
import re
import subprocess
import sys

import pytest

from butterfly_lab.bench.drift import CHANGES

pytestmark = pytest.mark.root


def test_bench_drift_prints_a_row_per_change() -> None:
    bench = os.path.join(os.path.dirname(sys.executable), "butterfly-bench")
    result = subprocess.run(
        [bench, "drift", "--trials", "2", "--vnics", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "butterfly-bench drift: data plane on" in out
    assert re.search(r"^change +trials +baseline max +window p50 +window max ", out, re.M), out
    for name in ["no change (baseline)", *CHANGES]:
        row = re.search(rf"^{re.escape(name)} +2 +\d+ +\d+ +\d+ +(\d+) ", out, re.M)
        assert row, (name, out)
        assert row.group(1) == "0", f"{name}: blocked datagrams arrived"
    assert re.search(r"butterflyd counted \d+ changes, \d+ repairs, 0 failed", out), out
