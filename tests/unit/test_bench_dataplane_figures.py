"""What ``butterfly-bench dataplane`` reads from qperf and iperf3, and how it sums rounds up."""

import json

import pytest

from butterfly_lab.agent import internet_checksum
from butterfly_lab.bench.dataplane import (
    Row,
    Sample,
    median,
    parse_iperf3,
    parse_qperf,
    render,
)
from butterfly_lab.bench.figures import BenchError, percentile, table

QPERF = """\
tcp_lat:
    latency  =  29.3 us
udp_lat:
    latency  =  1.2 ms
"""


def test_qperf_latencies_are_converted_to_microseconds() -> None:
    assert parse_qperf(QPERF) == {"tcp_lat": 29.3, "udp_lat": 1200.0}
    assert parse_qperf("tcp_lat:\n    latency  =  950 ns\n") == {"tcp_lat": pytest.approx(0.95)}


def test_qperf_failure_gives_no_latency() -> None:
    assert parse_qperf("tcp_lat:\n10.1.0.9: failed to connect\n") == {}


def _iperf3(received: dict[str, float]) -> str:
    return json.dumps({"start": {}, "end": {"sum_sent": {}, "sum_received": received}})


def test_iperf3_received_rate_and_loss() -> None:
    assert parse_iperf3(_iperf3({"bits_per_second": 12.5e9})) == (12.5, 0.0)
    udp = _iperf3({"bits_per_second": 2e9, "lost_percent": 2.5})
    assert parse_iperf3(udp) == (2.0, 2.5)


def test_iperf3_errors_are_bench_errors() -> None:
    with pytest.raises(BenchError, match="unable to connect"):
        parse_iperf3(json.dumps({"end": {}, "error": "unable to connect to server"}))
    with pytest.raises(BenchError, match="no JSON"):
        parse_iperf3("iperf3: error - the server is busy running a test\n")


def test_median_is_taken_figure_by_figure() -> None:
    rounds = [Sample(30, 20, 10, 1, 5), Sample(10, 40, 30, 2, 0), Sample(20, 30, 20, 3, 9)]
    assert median(rounds) == Sample(20, 30, 20, 2, 5)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 51)]
    assert percentile(values, 0.5) == 25.0
    assert percentile(values, 0.99) == 50.0
    assert percentile([3.0], 0.99) == 3.0


def test_render_aligns_columns_with_figures_to_the_right() -> None:
    table = render([Row("a measure", "veth 1.0", "12.25", "0.50", "< 1.10 x veth", "FAIL")])
    head, rule, row = table.splitlines()
    assert head.split() == ["measure", "baselines", "butterfly", "ratio", "target", "result"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert row.index("12.25") + len("12.25") == head.index("butterfly") + len("butterfly")
    assert row.endswith("FAIL")


def test_table_aligns_columns_and_rules_the_header() -> None:
    rendered = table(("measure", "figure"), [("a", "1.5"), ("longer", "10.25")], right={1})
    assert rendered.splitlines() == [
        "measure  figure",
        "-------  ------",
        "a           1.5",
        "longer    10.25",
    ]


def test_internet_checksum_of_a_known_ipv4_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
