"""Talking to systemd as a ``Type=notify`` service: readiness, status, watchdog.

The notify protocol is one datagram per message on the AF_UNIX socket named
by ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading
``@``), holding newline-separated ``KEY=VALUE`` assignments (``READY=1``,
``STATUS=...``, ``WATCHDOG=1``, ``RELOADING=1``, ``STOPPING=1``). It is
small enough that libsystemd is not needed. Without ``$NOTIFY_SOCKET`` (not
run by systemd) every call does nothing.

The watchdog is kicked by :meth:`Notifier.tick`, which the daemon's main
loop calls between requests, never from a thread of its own: a main loop
that hangs stops kicking, and systemd restarts the daemon.

The variables are removed from the environment once read, so that the
processes the daemon starts (vhost-user workers, tracers) do not talk to
systemd in its name. Imports nothing of butterfly.
"""

import logging
import os
import socket
import time
from collections.abc import MutableMapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


def _address(name: str) -> str | None:
    """The socket address of ``$NOTIFY_SOCKET``; None for a kind we cannot reach."""
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None


def _watchdog_interval(environ: MutableMapping[str, str]) -> float | None:
    """Half the watchdog period in seconds (systemd's advice), or None without one.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is for: another
    process's watchdog is not ours to kick.
    """
    usec = environ.pop("WATCHDOG_USEC", None)
    pid = environ.pop("WATCHDOG_PID", None)
    if usec is None or (pid is not None and pid.strip() != str(os.getpid())):
        return None
    try:
        period = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number: no watchdog", usec)
        return None
    return period / 2e6 if period > 0 else None


class Notifier:
    """sd_notify for one daemon; ``environ`` defaults to the process's environment."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.pop("NOTIFY_SOCKET", None)
        self.watchdog_interval = _watchdog_interval(env)
        """Seconds between two kicks; None when systemd set no watchdog."""
        self._address = None if name is None else _address(name)
        if name is not None and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket: not notifying systemd", name)
        self._socket: socket.socket | None = None
        if self._address is not None:
            # Non-blocking: a full queue on systemd's side loses one message
            # (logged) rather than stalling the API's loop.
            self._socket = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )
        if self._socket is None:
            self.watchdog_interval = None
        self._last_kick = 0.0

    @property
    def enabled(self) -> bool:
        """Whether systemd listens (the daemon was started as a notify service)."""
        return self._socket is not None

    def notify(self, **fields: str) -> None:
        """One datagram of ``KEY=VALUE`` lines; a failure is logged, never raised:
        systemd gone away must not take the switch down."""
        if self._socket is None or self._address is None:
            return
        text = "".join(f"{key}={value}\n" for key, value in fields.items())
        try:
            self._socket.sendto(text.encode("utf-8", "replace"), self._address)
        except OSError as error:
            log.warning("cannot notify systemd (%s): %s", ", ".join(fields), error)

    def status(self, text: str) -> None:
        """What ``systemctl status`` shows on its Status: line."""
        self.notify(STATUS=text.replace("\n", " "))

    def ready(self, status: str) -> None:
        self.notify(READY="1", STATUS=status.replace("\n", " "))
        self._last_kick = time.monotonic()

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (253 and later) tell this reload from an older one.
        self.notify(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def stopping(self) -> None:
        self.notify(STOPPING="1", STATUS="stopping")

    def tick(self) -> None:
        """Kick the watchdog if half its period went by since the last kick."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        # Half an interval: the main loop wakes at least once per interval, so
        # two kicks are never more than an interval (half the period) apart.
        if now - self._last_kick >= self.watchdog_interval / 2:
            self._last_kick = now
            self.notify(WATCHDOG="1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
