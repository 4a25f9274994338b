"""The C frame generator builds and counts right; ``butterfly-bench frames --quick``
prints every row with real figures (not judged).

bfframes is compiled from its source into a fresh cache folder (gcc), then
driven on two taps that tc redirects to each other in a namespace of a lab:
what the sink counts is exactly what was sent, and nothing else it reads.
The bench itself builds a lab with real butterflyd processes, so it needs
root, qperf, iperf3 and dpdk-testpmd; it must leave no namespace behind.
"""

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from butterfly_lab.bench import cbuild
from butterfly_lab.bench.figures import BenchError
from butterfly_lab.bench.frames import Taps, parse_fields, tc_taps
from butterfly_lab.lab import Lab


@pytest.fixture(scope="module")
def bfframes(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Built from source into an empty cache, as on a fresh machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BUTTERFLY_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return cbuild.program("bfframes")


@pytest.fixture
def taps() -> Iterator[Taps]:
    with Lab() as lab:
        yield tc_taps(lab)


@pytest.mark.needs("gcc")
def test_bfframes_is_built_once_per_source(bfframes: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert os.access(bfframes, os.X_OK)
    assert Path(bfframes).name.startswith("bfframes-")
    built = Path(bfframes).stat().st_mtime_ns
    monkeypatch.setenv("BUTTERFLY_BENCH_CACHE", str(Path(bfframes).parent))
    assert cbuild.program("bfframes") == bfframes
    assert Path(bfframes).stat().st_mtime_ns == built


def test_without_gcc_the_build_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUTTERFLY_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BenchError, match=r"gcc is needed .*apt-get install gcc libc6-dev"):
        cbuild.program("bfframes")
    assert not (tmp_path / "cache").exists()


@pytest.mark.needs("gcc")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no mode"),
        (["flood", "--dev", "t1", "--port", "9"], "the mode is blast, sink, echo or ping"),
        (["blast", "--dev", "t1", "--port", "9"], "need --src-mac, --dst-mac"),
        (["sink", "--dev", "t1", "--port", "70000"], "--port must be an integer from 1 to 65535"),
        (["blast", "--dev", "t1", "--port", "9", "--src-mac", "52:54:00:12:34"], "six hex pairs"),
        (["sink", "--dev", "t1", "--port", "9", "--size", "20"], "--size must be an integer"),
    ],
)
def test_bfframes_refuses_bad_arguments_naming_them(
    bfframes: str, argv: list[str], message: str
) -> None:
    done = subprocess.run([bfframes, *argv], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert message in done.stderr, done.stderr


@pytest.mark.root
@pytest.mark.needs("gcc")
def test_sink_counts_exactly_the_frames_sent_and_nothing_else(bfframes: str, taps: Taps) -> None:
    sink = subprocess.Popen(
        ["ip", "netns", "exec", taps.netns.name, bfframes, "sink", "--dev", taps.b,
         "--port", "9999"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        blast = [bfframes, "blast", "--dev", taps.a, *taps.addresses(), "--size"]
        sent = parse_fields(taps.netns.exec(*blast, "64", "--count", "300"))
        assert sent["sent"] == 300 and sent["elapsed_ns"] > 0
        # a frame to another port, and a bigger one: only the first is not counted
        other = [arg if arg != "9999" else "9998" for arg in blast]
        taps.netns.exec(*other, "64", "--count", "5")
        taps.netns.exec(*blast, "1000", "--count", "7")
    finally:
        sink.send_signal(signal.SIGTERM)
        output, _ = sink.communicate(timeout=10)
    received = parse_fields(output.strip())
    assert received["received"] == 307
    assert received["bytes"] == 300 * 64 + 7 * 1000


@pytest.mark.root
@pytest.mark.needs("gcc")
def test_ping_pong_gets_every_answer_back(bfframes: str, taps: Taps) -> None:
    echo = subprocess.Popen(
        ["ip", "netns", "exec", taps.netns.name, bfframes, "echo", "--dev", taps.b,
         "--port", "9999"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        ping = [bfframes, "ping", "--dev", taps.a, *taps.addresses(), "--seconds", "0.3",
                "--timeout-ms", "5000"]  # fmt: skip
        pinged = parse_fields(taps.netns.exec(*ping))
    finally:
        echo.send_signal(signal.SIGTERM)
        output, _ = echo.communicate(timeout=10)
    assert pinged["transactions"] > 100 and pinged["lost"] == 0
    assert 0 < pinged["p50_ns"] <= pinged["p99_ns"]
    assert pinged["samples"] == pinged["transactions"]
    assert parse_fields(output.strip())["echoed"] == pinged["transactions"]


@pytest.mark.root
@pytest.mark.needs("gcc", "qperf", "iperf3", "dpdk-testpmd")
def test_bench_frames_quick_prints_every_row_with_real_figures() -> None:
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "butterfly-bench"), "frames", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^butterfly-bench frames: data plane on .* 64-byte UDP frames", out, re.M)
    assert "one write() each from a C writer" in out and "one sitting" in out
    header = r"^path +measure +figure +spread +ratio +cpu +target +result$"
    assert re.search(header, out, re.M), out
    paths = [
        ("tc redirect (u32 + mirred)", "one-way 64 B UDP, new flow", "Mpps/core"),
        ("bridge, bridge-nf-call-*=0", "one-way 64 B UDP, new flow", "Mpps/core"),
        ("bridge + br_netfilter (no rules)", "one-way 64 B UDP, new flow", "Mpps/core"),
        ("bridge + br_netfilter (no rules)", "request/response 64 B", "k/s/core"),
        ("butterfly, TAP vnics, 20 SG rules", "one-way 64 B UDP, new flow", "Mpps/core"),
        ("butterfly, TAP vnics, 20 SG rules", "one-way 64 B UDP, established", "Mpps/core"),
        ("butterfly, TAP vnics, 20 SG rules", "request/response 64 B", "k/s/core"),
        ("butterfly, NETNS vnics, 20 SG rules", "same host: TCP, 1 stream", "Gbit/s"),
        ("butterfly, NETNS vnics, 20 SG rules", "same host: tcp_lat", "us"),
        ("butterfly, NETNS vnics, 20 SG rules", "across hosts: udp_lat", "us"),
        (
            "butterfly, NETNS vnics, 20 SG rules, net.netfilter.nf_conntrack_tcp_be_liberal=1",
            "same host: TCP, 1 stream",
            "Gbit/s",
        ),
        (
            "butterfly, NETNS vnics, 20 SG rules, net.netfilter.nf_conntrack_tcp_be_liberal=1",
            "across hosts: TCP, 1 stream",
            "Gbit/s",
        ),
        ("plain VXLAN between two namespace hosts", "across hosts: TCP, 1 stream", "Gbit/s"),
        (
            "bridge + br_netfilter, veths, conntrack floor (2 rules)",
            "same host: TCP, 1 stream",
            "Gbit/s",
        ),
        (
            "plain VXLAN between two namespace hosts, conntrack floor (2 rules)",
            "across hosts: tcp_lat",
            "us",
        ),
        ("butterfly, vhost-user vnic, 20 SG rules", "guest -> switch 64 B, new", "Mpps/core"),
        ("butterfly, vhost-user vnic, 20 SG rules", "guest -> switch 64 B, est", "Mpps/core"),
        ("butterfly, vhost-user vnic, 20 SG rules", "switch -> guest 64 B, new", "Mpps/core"),
    ]
    for path, measure, unit in paths:
        # butterfly's rows name the data path and vhost loop when the daemon offers a choice
        pattern = re.escape(path).replace("butterfly,", r"butterfly(?: --\S+ \S+)*,")
        figure = rf" ([0-9.]+) {re.escape(unit)}\b"
        row = re.search(rf"^{pattern} +{re.escape(measure)}.*?{figure}", out, re.M)
        assert row, (path, measure, out)
        assert float(row.group(1)) > 0, (path, measure, out)
    targets = re.findall(r" (>=|<=) [0-9.]+ x \S.* +(PASS|FAIL)$", out, re.M)
    assert len(targets) >= 12, out  # 12 per data path of butterfly
    assert re.search(r">= 0\.90 x bridge\+br_netfilter +(PASS|FAIL)$", out, re.M), out
    assert re.search(r">= 0\.90 x filtered C writer +(PASS|FAIL)$", out, re.M), out
    assert re.search(r">= 0\.90 x filtered C writer, established +(PASS|FAIL)$", out, re.M)
    prefix = re.search(r"^lab (\S+): namespaces", out, re.M)
    assert prefix, out
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert not re.search(rf"^{prefix.group(1)}[a-z]", left.stdout, re.M), left.stdout
    assert not os.path.exists(f"/tmp/{prefix.group(1)}")


def test_bench_frames_help_offers_quick_strict_and_longer_runs() -> None:
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "butterfly-bench"), "frames", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--quick", "--strict", "--rounds", "--seconds", "--size", "--fast-path"):
        assert option in result.stdout, option
