"""Deleting links in a thread, so that no request waits for it.

The kernel takes ~25 ms to delete a link, nearly all of it waiting for
the packet path's readers to let go (an RCU grace period, after the RTNL
lock is released: other netlink requests go on meanwhile), not computing.
Two kinds of links come here, once the request that left them unused has
succeeded:

* a removed port, already down, off its bridge and renamed aside
  (:func:`~butterfly.dataplane.naming.retired_name`): nothing will ever
  use it again;
* a VNI's bridge and VXLAN device, under their own names: a later request
  that wants the VNI again first waits for their deletion (:meth:`wait`),
  then makes them anew.

A thread of its own deletes them, in order, on its own netlink socket
(opened by the creator, in the creator's namespace). It takes every link
queued meanwhile at once: each is put in a group of its own
(:data:`DOOMED_GROUP`), and one deletion of that group waits for the
readers once for all (requests that remove links back to back would
otherwise queue deletions faster than one per ~25 ms can follow). A
deletion a crash leaves undone is a leftover that the next reconcile
removes.
"""

import errno
import logging
import queue
import threading
from collections.abc import Collection

from butterfly.dataplane import rtchange
from butterfly.dataplane.rtlink import LinkReader

__all__ = ["LinkDeleter"]

log = logging.getLogger(__name__)

_STOP_SECONDS = 5.0
DOOMED_GROUP = 0xBF0DE1E7
"""The link group (``ip link ... group``) of the links being deleted together."""
_WAIT_SECONDS = 10.0


class LinkDeleter:
    """Deletes links by ifindex, in order, in a daemon thread started on first use."""

    def __init__(self) -> None:
        self._reader = LinkReader()
        self._queue: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Condition()
        self._deleting: set[int] = set()
        self._deleted: set[int] = set()

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
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="butterfly-delete", daemon=True)
            self._thread.start()
        with self._lock:
            self._deleting.add(index)
        self._queue.put((name, index))

    def pending(self, indexes: Collection[int]) -> bool:
        """Whether any of these links is still queued or being deleted."""
        with self._lock:
            return not self._deleting.isdisjoint(indexes)

    def wait(self, indexes: Collection[int] | None = None) -> bool:
        """Wait until none of these links (None: no link) is queued or being
        deleted any more, for a few seconds at most: whether that happened."""
        wanted = None if indexes is None else set(indexes)

        def done() -> bool:
            return not self._deleting if wanted is None else self._deleting.isdisjoint(wanted)

        with self._lock:
            return self._lock.wait_for(done, _WAIT_SECONDS)

    def _run(self) -> None:
        stopping = False
        while not stopping and (item := self._queue.get()) is not None:
            batch = [item]
            while not self._queue.empty():
                more = self._queue.get()
                if more is None:
                    stopping = True
                    break
                batch.append(more)
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
        """Finish the deletions queued (for a few seconds at most), then close."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(_STOP_SECONDS)
        if self._thread is None or not self._thread.is_alive():
            self._reader.close()
