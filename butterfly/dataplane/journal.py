"""All-or-nothing kernel changes: an undo log, and the seam tests inject faults through.

Netlink changes are not transactional, so every data plane request runs its
steps through a :class:`Journal`: each step that succeeds records how to undo
itself, and a failure anywhere undoes the recorded steps in reverse order
before the error goes up as :class:`~butterfly.errors.DataplaneError`. The
nftables transaction is one step (nft applies it atomically); its undo is
the reverse transaction.

A :data:`FaultHook` is called with each step's name just before the step
runs; raising from it makes that step fail, which is how tests prove that a
failure at any point leaves the kernel as it was. Production passes none.
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from butterfly.errors import DataplaneError

__all__ = ["FaultHook", "Journal", "best_effort", "journal", "step"]

log = logging.getLogger(__name__)

T = TypeVar("T")

FaultHook = Callable[[str], None]
"""Called with a step's name before the step; raises to make it fail."""


class Journal:
    """The undo log of one request."""

    def __init__(self, fault_hook: FaultHook | None) -> None:
        self._fault_hook = fault_hook
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._after: list[tuple[str, Callable[[], None]]] = []

    def step(self, name: str, do: Callable[[], T], undo: Callable[[], None] | None = None) -> T:
        """Run ``do`` (after the fault hook); remember ``undo`` if it succeeds."""
        if self._fault_hook is not None:
            self._fault_hook(name)
        result = do()
        if undo is not None:
            self._undo.append((name, undo))
        return result

    def on_rollback(self, name: str, undo: Callable[[], None]) -> None:
        """Remember ``undo`` for a change already made outside :meth:`step`."""
        self._undo.append((name, undo))

    def after_success(self, name: str, action: Callable[[], None]) -> None:
        """Run ``action`` once every step has succeeded: for what cannot be
        undone (deleting a link), so that a failure never needs to undo it."""
        self._after.append((name, action))

    def finish(self) -> None:
        """Run the after-success actions; a failure there is logged, not raised:
        the request did succeed, and reconcile removes what is left over."""
        for name, action in self._after:
            try:
                action()
            except Exception as exc:
                log.error("%s failed after the request succeeded: %s", name, exc)
        self._after.clear()

    def rollback(self) -> list[str]:
        """Undo every recorded step, newest first; the steps that could not be undone."""
        failed = []
        for name, undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:  # keep undoing the others
                log.error("undoing %s failed: %s", name, exc)
                failed.append(f"{name} ({exc})")
        self._undo.clear()
        return failed


@contextmanager
def journal(what: str, fault_hook: FaultHook | None) -> Iterator[Journal]:
    """A journal for the request on ``what`` (e.g. "nic 'vnic_1'").

    On any exception the journal is rolled back; a DataplaneError is
    re-raised naming ``what``, anything else unchanged.
    """
    entries = Journal(fault_hook)
    try:
        yield entries
        entries.finish()
    except BaseException as exc:
        failed = entries.rollback()
        if not isinstance(exc, DataplaneError):
            raise
        message = str(exc) if str(exc).startswith(what) else f"{what}: {exc}"
        if failed:
            message += "; rollback incomplete, reconcile will repair: " + ", ".join(failed)
        raise DataplaneError(message) from exc


def step(
    j: Journal | None, name: str, do: Callable[[], None], undo: Callable[[], None] | None = None
) -> None:
    """A journaled step, or a plain one during reconcile (which repairs, not undoes)."""
    if j is None:
        do()
    else:
        j.step(name, do, undo)


def best_effort(problems: list[str], what: str, work: Callable[[], object]) -> None:
    """``work()``, its DataplaneError logged and added to ``problems`` naming
    ``what``: a reconcile repairs all it can before it reports."""
    try:
        work()
    except DataplaneError as exc:
        log.error("reconcile: %s: %s", what, exc)
        problems.append(str(exc) if str(exc).startswith(what) else f"{what}: {exc}")
