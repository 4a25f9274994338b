"""The start-up reconcile driver: slices, progress, problems (pure logic, a fake clock)."""

from collections.abc import Iterator

from butterfly.dataplane import Progress
from butterfly.errors import DataplaneError
from butterfly.service.startup import StartupReconcile


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def steps(clock: Clock, count: int, *, fail: bool = False) -> Iterator[Progress]:
    for done in range(1, count + 1):
        clock.now += 0.01
        yield Progress(done, count)
    if fail:
        raise DataplaneError("reconcile: nic 'gone': path 'ns' is not a network namespace")


def test_work_runs_one_slice_at_a_time_and_reports_progress() -> None:
    clock = Clock()
    startup = StartupReconcile(steps(clock, 10), slice_seconds=0.03, head_start=0, clock=clock)
    assert startup.status().running and startup.status().done == 0
    assert startup.work()
    status = startup.status()
    assert status.running and status.done == 3 and status.total == 10
    while startup.work():
        pass
    status = startup.status()
    assert not status.running and status.done == status.total == 10
    assert status.seconds == clock.now and not status.problems
    clock.now += 5
    assert startup.status().seconds == status.seconds, "the duration stops with the reconcile"
    assert not startup.work()


def test_what_could_not_be_repaired_is_reported_and_the_rest_done() -> None:
    clock = Clock()
    startup = StartupReconcile(steps(clock, 4, fail=True), head_start=0, clock=clock)
    startup.run_to_end()
    status = startup.status()
    assert not status.running and status.done == 4
    assert "nic 'gone'" in status.problems


def test_closing_stops_the_steps() -> None:
    clock = Clock()
    made = steps(clock, 100)
    startup = StartupReconcile(made, slice_seconds=0.02, head_start=0, clock=clock)
    startup.work()
    startup.close()
    assert not startup.running and next(made, None) is None


def test_the_end_is_announced_once() -> None:
    clock = Clock()
    ended: list[float] = []
    startup = StartupReconcile(
        steps(clock, 3), head_start=0, clock=clock, on_done=lambda: ended.append(clock.now)
    )
    startup.run_to_end()
    assert not startup.work()
    assert ended == [startup.status().seconds]


def test_the_api_serves_alone_for_a_head_start() -> None:
    """Clients that waited for the daemon come before the first (longest) step."""
    clock = Clock()
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        clock.now += seconds

    clock.now = 7.0  # the API binds some time after the driver is made
    startup = StartupReconcile(steps(clock, 3), head_start=0.05, clock=clock, sleep=sleep)
    assert startup.work() and startup.status().done == 0 and naps == [0.01]
    while startup.status().done == 0:
        startup.work()
    assert abs(sum(naps) - 0.05) < 1e-9 and max(naps) <= 0.01
