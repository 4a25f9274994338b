"""Deleting links in a thread, while no request is being answered.

Deleting a link holds the kernel's RTNL lock for ~5 ms on this 2-vCPU VM,
mostly waiting for RCU grace periods taken link by link, even within one
group deletion (perf, sched_switch: ``synchronize_rcu_expedited`` in
``tun_net_uninit`` per tap and in ``del_nbp`` per bridge port,
``rcu_barrier`` in ``br_multicast_dev_del`` per bridge). Every netlink call
of a request (a link's creation or lookup, a tap's ``TUNSETPERSIST``) waits
behind it: with deletions right after each request, ``strace -T`` at 10
vnics showed a ``nic_add`` after a ``nic_del`` spend 10-24 ms in such waits
(its p50 16.5 ms for 7.1 ms of CPU). Three kinds of links come here, once the
request that left them unused has succeeded:

* a removed port, already down, off its bridge and renamed aside
  (:func:`~butterfly.dataplane.naming.retired_name`): nothing will ever
  use it again;
* a VNI's bridge and VXLAN device (down), under their own names: a later
  request that wants the VNI again first waits for their deletion
  (:meth:`wait`), which then starts at once, then makes them anew;
* a spare bridge (:meth:`keep`, see :mod:`butterfly.dataplane.vni`): a new
  VNI may still take it back (:meth:`reclaim`), so it is deleted only once
  the API has been quiet :data:`SPARE_IDLE_SECONDS`, never from the end of
  a request: a host at rest keeps none.

A thread of its own deletes them on its own netlink socket (opened by the
creator, in the creator's namespace), never while a request is being
applied (the data plane applies them inside :meth:`busy`): once the API has
been quiet for :data:`IDLE_SECONDS`, or when a request ends after the
oldest has waited :data:`MAX_DELAY_SECONDS` (the next request then waits
for that deletion: ~16 ms a bridge, well under 1 ms a tap or VXLAN device
in a small namespace, more with thousands of VXLAN devices), or at once for
what a caller waits for. Each batch is one group deletion (:data:`DOOMED_GROUP`). A deletion a
crash or ``kill -9`` leaves undone is a leftover that the next reconcile
removes (the links are butterfly's, unwanted by the state).
"""

import errno
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from butterfly.dataplane import rtchange
from butterfly.dataplane.rtlink import LinkReader

__all__ = ["IDLE_SECONDS", "MAX_DELAY_SECONDS", "SPARE_IDLE_SECONDS", "LinkDeleter"]

log = logging.getLogger(__name__)

_STOP_SECONDS = 5.0
DOOMED_GROUP = 0xBF0DE1E7
"""The link group (``ip link ... group``) of the links being deleted together."""
_WAIT_SECONDS = 10.0
IDLE_SECONDS = 0.1
"""How long no request must have run before the thread deletes: longer than
the gap between an orchestrator's requests sent back to back."""
SPARE_IDLE_SECONDS = 1.0
"""How long the API must have been quiet before the spare bridges go."""
MAX_DELAY_SECONDS = 5.0
"""How long a link waits for a quiet API at most: then it is deleted from the
end of the next request, however busy the API (bounds the links left in the
kernel, and so one group deletion's length)."""


class LinkDeleter:
    """Deletes links by ifindex, in a daemon thread started on first use.

    ``idle``, ``max_delay``, ``spare_idle``: see :data:`IDLE_SECONDS`,
    :data:`MAX_DELAY_SECONDS`, :data:`SPARE_IDLE_SECONDS`.
    """

    def __init__(
        self,
        *,
        idle: float = IDLE_SECONDS,
        max_delay: float = MAX_DELAY_SECONDS,
        spare_idle: float = SPARE_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader = LinkReader()
        self._idle = idle
        self._max_delay = max_delay
        self._spare_idle = spare_idle
        self._kept: dict[int, str] = {}
        """Spare links by index: deleted only after a long quiet (:meth:`keep`)."""
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._lock = threading.Condition()
        self._queued: list[tuple[str, int, float]] = []
        """Name, index and when queued, oldest first."""
        self._busy = 0
        self._quiet_since = clock()
        self._awaited: list[set[int] | None] = []
        """What callers wait for (None: every link queued)."""
        self._stopping = False
        self._overdue = False
        """The queued links are deleted now, between two requests or not."""
        self._deleting: set[int] = set()
        self._deleted: set[int] = set()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """A request is being applied: deletions wait until it is done and
        the API has been quiet for a while (unless someone waits for them)."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._quiet_since = now = self._clock()
                if self._queued and self._queued[0][2] + self._max_delay <= now:
                    # Decided here: the thread may only run once the next request has begun.
                    self._overdue = True
                self._lock.notify_all()

    def take_deleted(self) -> set[int]:
        """The links queued or being deleted, and those deleted since the last
        call: the kernel's notifications of their deletion are butterfly's own
        (each index is still named once after its deletion, whose notification
        is queued before the deletion returns)."""
        with self._lock:
            taken = self._deleting | self._deleted
            self._deleted = set()
        return taken

    def delete(self, name: str, index: int) -> None:
        self._start()
        with self._lock:
            self._queued.append((name, index, self._clock()))
            self._deleting.add(index)
            self._lock.notify_all()

    def _start(self) -> None:
        """The thread, on first use."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="butterfly-delete", daemon=True)
            self._thread.start()

    def keep(self, name: str, index: int) -> None:
        """Delete this link once the API has been quiet a long while, unless
        :meth:`reclaim` takes it back first."""
        self._start()
        with self._lock:
            self._kept[index] = name
            self._lock.notify_all()

    def keeps(self, index: int) -> bool:
        """Whether a kept link still waits (neither reclaimed nor deleted)."""
        with self._lock:
            return index in self._kept

    def reclaim(self, index: int) -> bool:
        """Take a kept link back: whether it was still waiting (not being deleted)."""
        with self._lock:
            return self._kept.pop(index, None) is not None

    def pending(self, indexes: Collection[int]) -> bool:
        """Whether any of these links is still queued or being deleted."""
        with self._lock:
            return not self._deleting.isdisjoint(indexes)

    def wait(self, indexes: Collection[int] | None = None) -> bool:
        """Have these links (None: every link queued) deleted now and wait
        until they are, for a few seconds at most: whether that happened."""
        wanted = None if indexes is None else set(indexes)

        def done() -> bool:
            return not self._deleting if wanted is None else self._deleting.isdisjoint(wanted)

        with self._lock:
            if done():
                return True
            self._awaited.append(wanted)
            self._lock.notify_all()
            try:
                return self._lock.wait_for(done, _WAIT_SECONDS)
            finally:
                self._awaited.remove(wanted)

    def _urgent(self) -> list[tuple[str, int, float]]:
        """The queued links a caller waits for (all of them while closing)."""
        if self._stopping or None in self._awaited:
            return self._queued
        if not self._awaited:
            return []
        wanted = set().union(*(indexes for indexes in self._awaited if indexes is not None))
        return [item for item in self._queued if item[1] in wanted]

    def _due_in(self) -> float | None:
        """Seconds until queued links are due (0: now; None: not before a
        change, such as a queued link, the end of a request or a waiter)."""
        if self._kept and self._all_wanted():
            return 0.0
        if self._queued and (self._urgent() or self._overdue):
            return 0.0
        if self._busy:
            return None
        dues = []
        if self._queued:
            dues.append(min(self._queued[0][2] + self._max_delay, self._quiet_since + self._idle))
        if self._kept:
            dues.append(self._quiet_since + self._spare_idle)
        if not dues:
            return None
        return max(0.0, min(dues) - self._clock())

    def _all_wanted(self) -> bool:
        """Everything, kept links too, is to go now: closing, or a caller waits for all."""
        return self._stopping or None in self._awaited

    def _take(self) -> list[tuple[str, int]]:
        """The links to delete now: only those callers wait for, if any (a
        request wanting a VNI again waits for its two devices, not for every
        port removed meanwhile), else all; the kept ones after a long quiet."""
        chosen = self._urgent() or self._queued
        self._overdue = False
        if chosen is self._queued:
            self._queued = []
        else:
            taken = {index for _, index, _ in chosen}
            self._queued = [item for item in self._queued if item[1] not in taken]
        batch = [(name, index) for name, index, _ in chosen]
        quiet = not self._busy and self._clock() >= self._quiet_since + self._spare_idle
        if self._kept and (quiet or self._all_wanted()):
            batch += [(name, index) for index, name in self._kept.items()]
            self._deleting.update(self._kept)
            self._kept = {}
        return batch

    def _run(self) -> None:
        while True:
            with self._lock:
                while (due := self._due_in()) != 0.0:
                    if due is None and self._stopping:
                        return
                    self._lock.wait(due)
                batch = self._take()
            if not batch:
                continue
            try:
                self._delete(batch)
            finally:
                with self._lock:
                    for _, index in batch:
                        self._deleting.discard(index)
                        self._deleted.add(index)
                    self._lock.notify_all()

    def _delete(self, batch: list[tuple[str, int]]) -> None:
        if len(batch) == 1:
            self._delete_one(*batch[0])
            return
        grouped = []
        for name, index in batch:
            try:
                self._reader.change(rtchange.set_link(index, group=DOOMED_GROUP))
                grouped.append((name, index))
            except OSError as exc:
                if exc.errno != errno.ENODEV:
                    self._delete_one(name, index)
        if not grouped:
            return
        try:
            self._reader.change(rtchange.delete_group(DOOMED_GROUP))
        except OSError as exc:
            log.warning("deleting %d links at once: %s; one by one", len(grouped), exc)
            for name, index in grouped:
                self._delete_one(name, index)

    def _delete_one(self, name: str, index: int) -> None:
        try:
            self._reader.delete(index)
        except OSError as exc:
            if exc.errno != errno.ENODEV:
                log.error("deleting %s: %s; the next reconcile removes it", name, exc)

    def close(self) -> None:
        """Delete the links queued now (for a few seconds at most), then close."""
        if self._thread is not None:
            with self._lock:
                self._stopping = True
                self._lock.notify_all()
            self._thread.join(_STOP_SECONDS)
        if self._thread is None or not self._thread.is_alive():
            self._reader.close()
