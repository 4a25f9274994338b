"""Deleting retired ports in a thread, so that no request waits for it.

The kernel takes ~25 ms to delete a link, nearly all of it waiting for
the packet path's readers to let go (an RCU grace period), not computing.
A port a request removed is already down, off its bridge and renamed aside
(:func:`~butterfly.dataplane.naming.retired_name`) before the reply; nothing
will ever use it again, so a thread of its own deletes it meanwhile, on its
own netlink socket (opened by the creator, in the creator's namespace).

Only retired ports come here: a VNI's bridge or VXLAN device may be wanted
again by the next request, so the data plane deletes those itself, between
requests. A deletion a crash leaves undone is a leftover that the next
reconcile removes.
"""

import errno
import logging
import queue
import threading

from butterfly.dataplane.rtlink import LinkReader

__all__ = ["PortDeleter"]

log = logging.getLogger(__name__)

_STOP_SECONDS = 5.0


class PortDeleter:
    """Deletes links by ifindex, in order, in a daemon thread started on first use."""

    def __init__(self) -> None:
        self._reader = LinkReader()
        self._queue: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
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

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, index = item
            try:
                self._reader.delete(index)
            except OSError as exc:
                if exc.errno != errno.ENODEV:
                    log.error("deleting %s: %s; the next reconcile removes it", name, exc)
            with self._lock:
                self._deleting.discard(index)
                self._deleted.add(index)

    def close(self) -> None:
        """Finish the deletions queued (for a few seconds at most), then close."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(_STOP_SECONDS)
        if self._thread is None or not self._thread.is_alive():
            self._reader.close()
