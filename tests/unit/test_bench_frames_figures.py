"""What ``butterfly-bench frames`` reads from bfframes and butterflyd, and how it judges rows."""

import pytest

from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly_lab.bench.figures import BenchError
from butterfly_lab.bench.frames import (
    PORT,
    Figure,
    Series,
    Spec,
    fast_paths,
    frame_groups,
    parse_fields,
    per_core,
    render,
    vhost_loops,
)


def test_bfframes_report_is_read_as_integers() -> None:
    line = "sent=1208064 elapsed_ns=2000138202 user_ns=75381000 sys_ns=1697423000"
    assert parse_fields(line) == {
        "sent": 1208064,
        "elapsed_ns": 2000138202,
        "user_ns": 75381000,
        "sys_ns": 1697423000,
    }


@pytest.mark.parametrize("line", ["bfframes: attaching to tap t1: No such device", "", "a=b"])
def test_anything_else_from_bfframes_is_an_error_quoting_it(line: str) -> None:
    with pytest.raises(BenchError, match="not key=value figures"):
        parse_fields(line)


def test_both_data_paths_are_measured_only_when_the_daemon_offers_a_choice() -> None:
    assert fast_paths("  --fast-path auto|ebpf|off  the per-port eBPF path") == ("off", "ebpf")
    assert fast_paths("  --no-offload  vnics without offloads") == ()


def test_both_vhost_loops_are_measured_only_when_the_daemon_offers_a_choice() -> None:
    assert vhost_loops("  --vhost-loop {auto,c,python}  what moves vhost-user frames") == (
        "python",
        "c",
    )
    assert vhost_loops("  --vhost-workers N") == ()


def test_per_core_divides_by_the_busiest_process() -> None:
    assert per_core(0.5, (1.0, 0.25)) == 0.5
    assert per_core(0.5, (0.5, 0.25)) == 1.0
    assert per_core(0.5, (0.0,)) == 0.0


def test_frame_groups_keep_twenty_rules_the_last_allowing_the_udp_port_only() -> None:
    groups = frame_groups()
    assert [group.id for group in groups] == ["frames-a", "frames-b"]
    rules = [rule for group in groups for rule in group.rule]
    assert len(rules) == 20
    last = rules[-1]
    assert (last.protocol, last.port_start, last.port_end) == (17, PORT, PORT)
    assert last.direction == MessageV0.Rule.INBOUND
    named = {rule.security_group for rule in rules if rule.security_group}
    assert named == {"frames-a"}  # renamed with its group, not left naming bench-a
    assert all(rule.port_start != PORT for rule in rules[:-1])


def _series(*values: float, unit: str = "Mpps/core") -> Series:
    series = Series(unit, "Mpps", lambda: Figure(0.0, None))
    series.figures = [Figure(value, 2.0 / value, "note") for value in values]
    return series


def test_rows_show_median_spread_ratio_cpu_and_the_target_met_or_missed() -> None:
    reference = Spec("bridge", "one-way", _series(0.40, 0.44, 0.42), is_reference=True)
    met = Spec("ours", "one-way", _series(0.39, 0.38), reference, "bridge", (">=", 0.90))
    missed = Spec("ours", "established", _series(0.2), reference, "bridge", (">=", 0.95))
    lines = render([reference, met, missed]).splitlines()
    assert lines[0].split() == [
        "path", "measure", "figure", "spread", "ratio", "cpu", "target", "result"
    ]  # fmt: skip
    assert lines[2].split() == [
        "bridge", "one-way", "0.420", "Mpps/core", "(note)", "10%", "1.00", "4.76",
        "cores/Mpps", "-", "-",
    ]  # fmt: skip
    assert lines[3].split()[-9:] == [
        "3%", "0.92", "5.20", "cores/Mpps", ">=", "0.90", "x", "bridge", "PASS"
    ]  # fmt: skip
    assert lines[3].endswith(">= 0.90 x bridge  PASS")
    assert lines[4].endswith(">= 0.95 x bridge  FAIL")
    assert " 0.48 " in lines[4] and "   -  " in lines[4]  # one round: no spread


def test_latency_targets_are_upper_bounds() -> None:
    reference = Spec("bridge", "tcp_lat", _series(30.0, unit="us"), is_reference=True)
    slower = Spec("ours", "tcp_lat", _series(31.0, unit="us"), reference, "bridge", ("<=", 1.05))
    much_slower = Spec("ours", "tcp_lat", _series(33.0, unit="us"), reference, "b", ("<=", 1.05))
    lines = render([reference, slower, much_slower]).splitlines()
    assert lines[3].endswith("PASS") and lines[4].endswith("FAIL")
