"""The start-up reconcile, run a slice at a time between requests.

At start-up the kernel is made to match the store (the data plane's
``reconcile_steps``). On a large host that takes seconds; meanwhile the API
must answer. So the daemon's request loop calls :meth:`StartupReconcile.work`
whenever no request is waiting: it runs the reconcile's steps for a short
slice and returns. A request is then answered between two steps, in the
same thread: reads see the stored state, writes are applied at once (each
atomically, as always) and the steps that follow take them into account.
:meth:`status` tells ``app_status`` whether it runs and how far it is.

Imports only the data plane's protocol types and the errors.
"""

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from butterfly.dataplane import Progress
from butterfly.errors import DataplaneError

__all__ = ["ReconcileStatus", "StartupReconcile"]

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.02
"""How long one :meth:`StartupReconcile.work` call may run steps: a request
arriving meanwhile waits at most this (plus the step under way)."""
HEAD_START_SECONDS = 0.25
"""How long the API serves alone before the first step, which reads every
link (a second or more on a big host): clients that waited for the daemon
(a ZeroMQ client tries to connect again every 100 ms) are answered first."""
_HEAD_START_NAP = 0.01


@dataclass(frozen=True, slots=True)
class ReconcileStatus:
    running: bool
    done: int
    """Objects checked (and repaired where needed) so far."""
    total: int
    seconds: float
    """Since the reconcile began (until it ended, once it has)."""
    problems: str
    """What could not be repaired (empty when everything was)."""


class StartupReconcile:
    """Drives ``steps`` (a data plane's ``reconcile_steps``) to the end, slice by slice;
    ``on_done`` is called once at the end (the daemon gives back the memory
    the reconcile's copies of the kernel's state took)."""

    def __init__(
        self,
        steps: Iterator[Progress],
        *,
        slice_seconds: float = SLICE_SECONDS,
        head_start: float = HEAD_START_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_done: Callable[[], object] | None = None,
    ) -> None:
        """``head_start``: seconds from the first :meth:`work` call (the API is
        up by then) before the first step; meanwhile each call naps briefly."""
        self._steps: Iterator[Progress] | None = steps
        self._on_done = on_done
        self._slice = slice_seconds
        self._head_start = head_start
        self._first_step: float | None = None
        self._clock = clock
        self._sleep = sleep
        self._began = clock()
        self._ended: float | None = None
        self._progress = Progress(0, 0)
        self._problems = ""

    @property
    def running(self) -> bool:
        return self._steps is not None

    def work(self) -> bool:
        """Run steps for one slice; whether any are left."""
        if self._steps is None:
            return False
        now = self._clock()
        if self._first_step is None:
            self._first_step = now + self._head_start
        if now < self._first_step:
            self._sleep(min(_HEAD_START_NAP, self._first_step - now))
            return True
        deadline = now + self._slice
        try:
            while self._clock() < deadline:
                self._progress = next(self._steps)
        except StopIteration:
            self._finish()
        except DataplaneError as error:
            # What could not be repaired (a vnic whose namespace is gone, say)
            # is logged and reported; the daemon serves all the rest.
            self._problems = str(error)
            log.error("start-up: %s", error)
            self._finish()
        return self._steps is not None

    def run_to_end(self) -> None:
        while self.work():
            pass

    def status(self) -> ReconcileStatus:
        end = self._ended if self._ended is not None else self._clock()
        return ReconcileStatus(
            running=self.running,
            done=self._progress.done,
            total=self._progress.total,
            seconds=end - self._began,
            problems=self._problems,
        )

    def close(self) -> None:
        """Stop where it is (the daemon is stopping); the next start-up goes on."""
        if self._steps is not None:
            close = getattr(self._steps, "close", None)
            if close is not None:
                close()
            self._steps = None

    def _finish(self) -> None:
        self._steps = None
        self._ended = self._clock()
        self._progress = Progress(self._progress.total, self._progress.total)
        log.info(
            "start-up reconcile done in %.1f s (%d objects checked)",
            self._ended - self._began,
            self._progress.total,
        )
        if self._on_done is not None:
            self._on_done()
