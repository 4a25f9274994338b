"""The notify protocol's environment handling (pure: no socket is written to)."""

import os
import socket
from pathlib import Path

import pytest

from butterfly.daemon.systemd import Notifier


def test_without_notify_socket_nothing_is_enabled() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("no one listens")  # does nothing, raises nothing
    notifier.tick()


def test_the_variables_leave_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children (vhost-user workers, tracers) must not speak to systemd as the daemon."""
    monkeypatch.setenv("NOTIFY_SOCKET", "@bf-unit-test")
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    try:
        assert notifier.enabled
        assert notifier.watchdog_interval == pytest.approx(1.0)
        assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "3000000"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], interval: float | None) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/bf-unit-test", **environ})
    try:
        assert notifier.watchdog_interval == interval
    finally:
        notifier.close()


def test_a_socket_that_is_not_unix_is_not_used() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None


def test_a_listener_that_does_not_read_never_blocks_the_daemon(tmp_path: Path) -> None:
    """systemd busy: the queue fills, messages are lost (logged), the loop goes on."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as deaf:
        deaf.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path})
        try:
            for index in range(1000):  # far more than the socket's queue holds
                notifier.status(f"message {index}")
        finally:
            notifier.close()
