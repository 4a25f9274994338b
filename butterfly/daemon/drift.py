"""Putting back what other software changes in butterfly's kernel objects.

Owns :class:`DriftRepair`, the main loop's work between API requests: it
reads the kernel's notifications (:class:`~butterfly.dataplane.watch.KernelWatch`),
and once a foreign change has settled (debounced: :data:`SETTLE` after the
last one, at most :data:`MAX_DELAY` after the first) has the data plane
repair what the changes name (their links, vnics, VNIs, or butterfly's
nftables tables; everything when notifications were lost), touching
nothing that is right. It
runs on the daemon's main thread, between requests, never during one: a
request waiting when a change is pending is answered after the repair, so
it never works on a kernel its data plane no longer knows.

Each repair is logged once, with the changes it put back, and counted
(:meth:`DriftRepair.report`). In report-only mode (``--report-drift-only``)
changes are logged and counted, never repaired.
"""

import logging
import time
from collections.abc import Callable
from typing import Protocol

from butterfly.dataplane.watch import KINDS, LOST, Change, KernelWatch, Scope
from butterfly.errors import DataplaneError
from butterfly.service.drift import DriftReport

__all__ = ["MAX_DELAY", "SETTLE", "DriftRepair", "Watchable"]

log = logging.getLogger(__name__)

SETTLE = 0.05
"""Seconds without a new change before repairing (a burst is repaired once)."""
MAX_DELAY = 0.25
"""Seconds after the first change by which the repair starts, even in a storm."""
_KEPT = 32
"""Changes kept (and shown by ``butterfly status``) of the latest batch."""


class Watchable(Protocol):
    """The data plane as drift repair needs it (the kernel one)."""

    def watch(self, *, primed_by_reconcile: bool = False) -> KernelWatch:
        """A watch of this data plane's namespace, knowing its links as they are
        (``primed_by_reconcile``: once the next reconcile has read them)."""

    def rewatch(self, watch: KernelWatch) -> None:
        """Tell ``watch`` the links as they are now (after a repair)."""

    def take_touched(self) -> set[int]:
        """The links the data plane changed since the last call."""


class DriftRepair:
    """Notices foreign changes and schedules their repair on the main loop."""

    def __init__(
        self,
        *,
        dataplane: Watchable,
        repair: Callable[[Scope], None],
        report_only: bool = False,
        clock: Callable[[], float] = time.monotonic,
        hold: Callable[[], bool] | None = None,
        primed_by_reconcile: bool = False,
    ) -> None:
        """``hold``: while it says so, changes are noted and their repair waits
        (the start-up reconcile runs between requests: a repair would fight it).
        ``primed_by_reconcile``: that reconcile's dump of every link is the
        watch's starting point (changes before it are the reconcile's)."""
        self._dataplane = dataplane
        self._hold = hold
        self._repair = repair
        self._report_only = report_only
        self._clock = clock
        self._watch = dataplane.watch(primed_by_reconcile=primed_by_reconcile)
        self._pending: list[Change] = []
        self._first = self._last = 0.0
        self._seen = self._repaired = self._repairs = self._failures = 0
        # Every kind from the start: the metrics' thread reads them meanwhile.
        self._seen_by_kind = dict.fromkeys(KINDS, 0)
        self._repaired_by_kind = dict.fromkeys(KINDS, 0)
        self._latest: tuple[str, ...] = ()
        self._latest_date: float | None = None

    def close(self) -> None:
        self._watch.close()

    # the main loop's hooks

    def filenos(self) -> tuple[int, ...]:
        return self._watch.filenos()

    def readable(self) -> None:
        """Notifications arrived while no request was being answered: ours only
        for the links the data plane changed meanwhile (the start-up
        reconcile's steps, deletions finished after their request)."""
        self._drain(self._dataplane.take_touched())

    def before_request(self) -> None:
        """A request is about to be answered: repair first what is pending."""
        self.readable()
        if self._pending and not self._report_only and not self._held():
            self._run()

    def after_request(self) -> None:
        """The request's own changes are queued by now: drain them as ours."""
        self._drain(self._dataplane.take_touched())

    def timeout(self) -> float | None:
        """Seconds until a repair is due; None when nothing is pending (or it waits)."""
        if not self._pending or self._held():
            return None
        due = min(self._last + SETTLE, self._first + MAX_DELAY)
        return max(0.0, due - self._clock())

    def run_due(self) -> None:
        if self.timeout() == 0.0:
            self._run()

    def report(self) -> DriftReport:
        return DriftReport(
            changes_seen=self._seen,
            changes_repaired=self._repaired,
            repairs=self._repairs,
            repair_failures=self._failures,
            report_only=self._report_only,
            seen_by_kind=tuple(self._seen_by_kind.items()),
            repaired_by_kind=tuple(self._repaired_by_kind.items()),
            last_changes=self._latest,
            last_change_date=self._latest_date,
        )

    # the work

    def _held(self) -> bool:
        return self._hold is not None and self._hold()

    def _drain(self, own: set[int] | frozenset[int]) -> None:
        """What arrived; a watch that cannot be read any more is a change of
        everything (the daemon must go on answering)."""
        try:
            changes = self._watch.drain(own)
        except DataplaneError as error:
            log.error("kernel drift: %s", error)
            changes = [Change(f"watch: {error}", Scope(everything=True), LOST)]
        self._note(changes)

    def _note(self, changes: list[Change]) -> None:
        if not changes:
            return
        now = self._clock()
        if not self._pending:
            self._first = now
        self._last = now
        self._seen += len(changes)
        for change in changes:
            self._seen_by_kind[change.kind] += 1
        self._pending += changes
        self._latest = tuple(change.what for change in self._pending[-_KEPT:])
        self._latest_date = time.time()

    def _run(self) -> None:
        changes, self._pending = self._pending, []
        shown = "; ".join(dict.fromkeys(change.what for change in changes))
        if self._report_only:
            log.warning("kernel drift (report only, not repaired): %s", shown)
            return
        scope = Scope()
        for change in changes:
            scope |= change.scope
        started = self._clock()
        try:
            self._repair(scope)
        except DataplaneError as error:
            self._failures += 1
            log.error("kernel drift: repair failed: %s; changes: %s", error, shown)
        except Exception:
            # A bug must not stop the daemon answering: the next change retries.
            self._failures += 1
            log.exception("kernel drift: repair failed unexpectedly; changes: %s", shown)
        else:
            self._repairs += 1
            self._repaired += len(changes)
            for change in changes:
                self._repaired_by_kind[change.kind] += 1
            log.warning(
                "kernel drift repaired in %.0f ms, %.0f ms after the first change: %s",
                (self._clock() - started) * 1e3,
                (started - self._first) * 1e3,
                shown,
            )
        # The repair's own notifications; after lost ones, the links as they are
        # (a dump: seconds with thousands of links, so only then).
        self._drain(self._dataplane.take_touched())
        if scope.everything:
            self._dataplane.rewatch(self._watch)
