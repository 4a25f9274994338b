"""Drift repair's scheduling (pure logic): when a repair runs, what it counts, what it
logs; the kernel watch is an in-memory fake, the clock a number the test moves."""

import logging
import struct
from typing import Any

import pytest

from butterfly.daemon.drift import MAX_DELAY, SETTLE, DriftRepair
from butterfly.dataplane.guard import (
    ALL_OK,
    BRIDGE_OK,
    INBOUND_OK,
    OUTBOUND_OK,
    SENDER_OPEN,
    GuardKind,
    program,
    sender_program,
)
from butterfly.dataplane.watch import KINDS, LINK, LOST, NFTABLES, PORT_FLAGS, Change, Scope
from butterfly.errors import DataplaneError
from butterfly_lab.bench.drift import gap_around, repair_times


class FakeWatch:
    def __init__(self) -> None:
        self.queued: list[Change] = []
        self.own_seen: list[set[int] | frozenset[int]] = []
        self.primed = 0

    def drain(self, own_links: set[int] | frozenset[int] = frozenset()) -> list[Change]:
        self.own_seen.append(own_links)
        found, self.queued = self.queued, []
        return found

    def filenos(self) -> tuple[int, int]:
        return (-1, -1)

    def prime(self) -> None:
        self.primed += 1

    def close(self) -> None:
        pass


class FakeDataplane:
    def __init__(self) -> None:
        self.fake_watch = FakeWatch()
        self.touched: set[int] = set()

    def watch(self, *, primed_by_reconcile: bool = False) -> Any:
        return self.fake_watch

    def rewatch(self, watch: Any) -> None:
        watch.prime()

    def take_touched(self) -> set[int]:
        touched, self.touched = self.touched, set()
        return touched


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(
        self,
        *,
        report_only: bool = False,
        fail: bool = False,
        bug: bool = False,
        held: bool = False,
    ) -> None:
        self.dataplane = FakeDataplane()
        self.held = held
        self.clock = Clock()
        self.repairs = 0
        self.scopes: list[Scope] = []
        self.fail = fail
        self.bug = bug
        self.drift = DriftRepair(
            dataplane=self.dataplane,
            repair=self.repair,
            report_only=report_only,
            clock=self.clock,
            hold=lambda: self.held,
        )

    def repair(self, scope: Scope) -> None:
        self.scopes.append(scope)
        self.repairs += 1
        if self.fail:
            raise DataplaneError("reconcile: nic 'a': namespace gone")
        if self.bug:
            raise KeyError("bf-a")

    def change(self, *lines: str) -> None:
        self.dataplane.fake_watch.queued += [_change(line) for line in lines]
        self.drift.readable()


def _change(line: str) -> Change:
    """A change as the watch makes it: nftables's are about the tables, others
    about the link they name first."""
    if line.startswith("nftables:"):
        return Change(line, Scope(tables=True), NFTABLES)
    kind = PORT_FLAGS if "learning" in line else LINK
    return Change(line, Scope(links=frozenset([line.split(":", maxsplit=1)[0]])), kind)


def test_nothing_pending_means_no_timeout_and_no_repair() -> None:
    rig = Rig()
    assert rig.drift.timeout() is None
    rig.drift.run_due()
    assert rig.repairs == 0


def test_a_change_is_repaired_once_it_settles() -> None:
    rig = Rig()
    rig.change("bf-a: down")
    assert rig.drift.timeout() == pytest.approx(SETTLE)
    rig.clock.now += SETTLE / 2
    rig.drift.run_due()
    assert rig.repairs == 0
    rig.clock.now += SETTLE / 2
    rig.drift.run_due()
    assert rig.repairs == 1
    assert rig.drift.timeout() is None
    assert rig.dataplane.fake_watch.primed == 0, "no dump: the repair's echo told the watch"


def test_after_lost_notifications_everything_is_repaired_and_the_links_dumped() -> None:
    rig = Rig()
    rig.dataplane.fake_watch.queued.append(
        Change("links: notifications lost (socket overflow)", Scope(everything=True), LOST)
    )
    rig.drift.readable()
    rig.clock.now += MAX_DELAY
    rig.drift.run_due()
    assert rig.scopes == [Scope(everything=True)]
    assert rig.dataplane.fake_watch.primed == 1


def test_a_storm_is_repaired_by_max_delay_after_its_first_change() -> None:
    rig = Rig()
    rig.change("nftables: delete table inet butterfly by nft (pid 1)")
    while rig.clock.now < 100.0 + MAX_DELAY - SETTLE / 2:
        rig.clock.now += SETTLE / 2
        rig.change("nftables: delete table inet butterfly by nft (pid 2)")
        rig.drift.run_due()
    assert rig.repairs == 0
    rig.clock.now = 100.0 + MAX_DELAY
    rig.drift.run_due()
    assert rig.repairs == 1


def test_a_request_waits_for_the_pending_repair() -> None:
    rig = Rig()
    rig.dataplane.fake_watch.queued.append(_change("bf-a: mtu 1450 -> 1400"))
    rig.drift.before_request()
    assert rig.repairs == 1


def test_a_requests_own_changes_are_not_drift() -> None:
    rig = Rig()
    rig.dataplane.touched = {7, 8}
    rig.drift.after_request()
    assert rig.dataplane.fake_watch.own_seen[-1] == {7, 8}
    assert rig.drift.report().changes_seen == 0


def test_changes_between_requests_to_links_the_data_plane_touched_are_its_own() -> None:
    """The start-up reconcile's steps and finished deletions run outside requests."""
    rig = Rig()
    rig.dataplane.touched = {9}
    rig.drift.readable()
    assert rig.dataplane.fake_watch.own_seen[-1] == {9}


def test_repairs_wait_while_held_then_run() -> None:
    """While the start-up reconcile runs, a repair would fight it: changes stay pending."""
    rig = Rig(held=True)
    rig.change("bf-a: down")
    assert rig.drift.timeout() is None
    rig.clock.now += MAX_DELAY
    rig.drift.run_due()
    rig.drift.before_request()
    assert rig.repairs == 0
    assert rig.drift.report().changes_seen == 1
    rig.held = False
    assert rig.drift.timeout() == 0.0
    rig.drift.run_due()
    assert rig.scopes == [Scope(links=frozenset({"bf-a"}))]


def test_counts_and_one_log_line_per_repair(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    with caplog.at_level(logging.WARNING):
        rig.change("bf-a: down", "bf-a: down", "bfbr1: deleted")
        rig.clock.now += MAX_DELAY
        rig.drift.run_due()
    report = rig.drift.report()
    assert (report.changes_seen, report.changes_repaired, report.repairs) == (3, 3, 1)
    assert report.last_changes == ("bf-a: down", "bf-a: down", "bfbr1: deleted")
    lines = [r.getMessage() for r in caplog.records if "drift" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("kernel drift repaired in ")
    assert lines[0].endswith(" ms after the first change: bf-a: down; bfbr1: deleted")
    assert rig.scopes == [Scope(links=frozenset({"bf-a", "bfbr1"}))], "one repair of both"


def test_changes_are_counted_by_kind_seen_and_repaired() -> None:
    rig = Rig(fail=True)
    rig.change("bf-a: down")
    rig.clock.now += MAX_DELAY
    rig.drift.run_due()  # fails: seen, not repaired
    rig.fail = False
    rig.change("nftables: delete table inet butterfly by nft (pid 3)", "bf-a: learning on")
    rig.clock.now += 2 * MAX_DELAY
    rig.drift.run_due()
    report = rig.drift.report()
    seen, repaired = dict(report.seen_by_kind), dict(report.repaired_by_kind)
    assert set(seen) == set(repaired) == set(KINDS), "every kind, zero or not"
    assert (seen[LINK], seen[NFTABLES], seen[PORT_FLAGS], seen[LOST]) == (1, 1, 1, 0)
    assert (repaired[LINK], repaired[NFTABLES], repaired[PORT_FLAGS]) == (0, 1, 1)
    assert sum(seen.values()) == report.changes_seen
    assert sum(repaired.values()) == report.changes_repaired


def test_a_repair_looks_at_the_tables_only_when_they_changed() -> None:
    rig = Rig()
    rig.change("nftables: delete table inet butterfly by nft (pid 3)")
    rig.clock.now += MAX_DELAY
    rig.drift.run_due()
    assert rig.scopes == [Scope(tables=True)]


def test_a_failed_repair_is_counted_and_logged_with_the_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(fail=True)
    with caplog.at_level(logging.ERROR):
        rig.change("bf-a: deleted")
        rig.clock.now += MAX_DELAY
        rig.drift.run_due()
    report = rig.drift.report()
    assert (report.repairs, report.repair_failures, report.changes_repaired) == (0, 1, 0)
    assert "namespace gone" in caplog.text and "bf-a: deleted" in caplog.text


def test_a_bug_in_a_repair_is_a_failure_not_the_daemons_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig(bug=True)
    with caplog.at_level(logging.ERROR):
        rig.change("bf-a: deleted")
        rig.drift.before_request()
    assert rig.drift.report().repair_failures == 1
    assert "repair failed unexpectedly" in caplog.text


def test_a_watch_that_cannot_be_read_asks_for_everything() -> None:
    rig = Rig()

    def broken(own_links: object = frozenset()) -> list[Change]:
        raise DataplaneError("watching the kernel: Bad file descriptor")

    rig.dataplane.fake_watch.drain = broken  # type: ignore[method-assign]
    rig.drift.readable()
    assert rig.drift.report().changes_seen == 1
    rig.dataplane.fake_watch.drain = FakeWatch().drain  # type: ignore[method-assign]
    rig.clock.now += MAX_DELAY
    rig.drift.run_due()
    assert rig.scopes == [Scope(everything=True)]


def test_report_only_counts_and_logs_but_never_repairs(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig(report_only=True)
    with caplog.at_level(logging.WARNING):
        rig.change("bf-a: learning on")
        rig.drift.before_request()
        rig.clock.now += MAX_DELAY
        rig.drift.run_due()
    assert rig.repairs == 0
    report = rig.drift.report()
    assert report.report_only and report.changes_seen == 1 and report.repairs == 0
    assert dict(report.seen_by_kind)[PORT_FLAGS] == 1
    assert not any(count for _, count in report.repaired_by_kind)
    assert "not repaired): bf-a: learning on" in caplog.text


def _run(code: bytes, mark: int, ingress_ifindex: int = 7) -> tuple[int, int]:
    """Interpret the few eBPF instructions the guard uses: (return code, mark after)."""
    skb = {8: mark, 36: ingress_ifindex}
    regs = [0] * 11
    pc = 0
    while True:
        op, regs_byte, off, imm = struct.unpack_from("<BBhi", code, pc * 8)
        dst, src = regs_byte & 0xF, regs_byte >> 4
        immu = imm & 0xFFFFFFFF
        pc += 1
        if op == 0x61:  # w_dst = *(u32 *)(skb + off)
            assert src == 1
            regs[dst] = skb[off]
        elif op == 0x63:  # *(u32 *)(skb + off) = w_src
            assert dst == 1
            skb[off] = regs[src]
        elif op == 0xBC:
            regs[dst] = regs[src] & 0xFFFFFFFF
        elif op == 0x54:
            regs[dst] &= immu
        elif op == 0x44:
            regs[dst] = (regs[dst] | immu) & 0xFFFFFFFF
        elif op == 0xB7:
            regs[dst] = imm
        elif op == 0x16:
            pc += off if regs[dst] & 0xFFFFFFFF == immu else 0
        elif op == 0x56:
            pc += off if regs[dst] & 0xFFFFFFFF != immu else 0
        elif op == 0x95:
            return regs[0], skb[8]
        else:
            raise AssertionError(f"unexpected opcode {op:#x}")


NEXT_FILTER, PASS, SHOT = -1, 0, 2
OTHER = 0x1234  # bits of the mark that are not the guard's


@pytest.mark.parametrize("kind", list(GuardKind))
def test_the_guard_passes_a_proven_frame_and_clears_the_bits(kind: GuardKind) -> None:
    for sender in (OUTBOUND_OK, SENDER_OPEN):
        proven = ALL_OK | sender | OTHER
        assert _run(program(kind.mask), proven) == (PASS, OTHER)


@pytest.mark.parametrize("kind", list(GuardKind))
def test_the_guard_drops_a_frame_missing_any_bit_its_port_needs(kind: GuardKind) -> None:
    code = program(kind.mask)
    assert _run(code, 0)[0] == SHOT, "a flushed ruleset proves nothing"
    for bit in (BRIDGE_OK, INBOUND_OK, OUTBOUND_OK):
        verdict = _run(code, (ALL_OK & ~bit) | OTHER)[0]
        needed = bit != INBOUND_OK or kind is GuardKind.FILTERED
        assert verdict == (SHOT if needed else PASS), hex(bit)


def test_a_lost_out_mac_or_filtered_element_proves_no_sender() -> None:
    """What a filtered vnic's frame gets when its out_mac or filtered element is
    gone (B and I, from the tables left): neither sender bit, so every port drops."""
    for kind in GuardKind:
        assert _run(program(kind.mask), BRIDGE_OK | INBOUND_OK)[0] == SHOT


def test_the_guard_passes_what_the_host_made() -> None:
    for kind in GuardKind:
        assert _run(program(kind.mask), 0, ingress_ifindex=0) == (PASS, 0)


def test_the_sender_mark_sets_its_bit_and_keeps_the_rest() -> None:
    assert _run(sender_program(), OTHER) == (NEXT_FILTER, OTHER | SENDER_OPEN)
    assert GuardKind.OPEN.marks_senders and not GuardKind.FILTERED.marks_senders


def test_an_unfiltered_port_needs_no_inbound_proof() -> None:
    assert GuardKind.OPEN.mask == BRIDGE_OK
    assert GuardKind.FILTERED.mask == BRIDGE_OK | INBOUND_OK


def test_the_bench_window_is_the_longest_gap_around_the_change() -> None:
    stamps = [9.98, 9.99, 10.25, 10.26]
    assert gap_around(stamps, 10.0, 11.0) == pytest.approx(0.26)
    assert gap_around([], 10.0, 11.0) == pytest.approx(1.0), "nothing came back at all"


def test_the_bench_reads_repair_times_from_the_log() -> None:
    log = (
        "x WARNING butterfly.daemon.drift: kernel drift repaired in 44 ms, 50 ms after the"
        " first change: bf-srv: down\nother line\n"
    )
    assert repair_times(log) == [94.0]
