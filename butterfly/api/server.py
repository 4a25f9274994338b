"""The ZeroMQ REP server: one request frame in, one reply frame out.

Requests are answered one at a time, in the daemon's main thread, which is
what makes the service simple (no locking). The loop also watches a wake-up
file descriptor so that signals (SIGTERM, SIGINT) stop it promptly without
polling on a timer.
"""

import logging
import os
from collections.abc import Callable
from typing import Protocol

import zmq

from butterfly.api.codec import answer_frame
from butterfly.api.curve import CurveServer, ServerAuthenticator, allow_clients
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.errors import ConfigError

__all__ = ["DEFAULT_ENDPOINT", "MAX_FRAME_SIZE", "ApiServer", "MainLoopWork"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://0.0.0.0:9999"
MAX_FRAME_SIZE = 256 * 1024 * 1024
"""Larger frames are dropped by ZeroMQ before they reach Python."""


class MainLoopWork(Protocol):
    """Work the server's thread does between requests (the daemon's drift repair)."""

    def filenos(self) -> tuple[int, ...]:
        """Descriptors whose readability calls :meth:`readable`."""

    def readable(self) -> None: ...

    def before_request(self) -> None: ...

    def after_request(self) -> None: ...

    def timeout(self) -> float | None:
        """Seconds until :meth:`run_due` has work; None: none planned."""

    def run_due(self) -> None: ...


class ApiServer:
    def __init__(
        self,
        *,
        endpoint: str,
        key: bytes | None,
        answer: Callable[[MessageV0], MessageV0],
        curve: CurveServer | None = None,
    ) -> None:
        """``curve``: only the clients it allows get through (see :mod:`butterfly.api.curve`)."""
        self.endpoint = endpoint
        self._key = key
        self._answer = answer
        self._context = zmq.Context()
        self._socket: zmq.Socket[bytes] = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_SIZE)
        self._stopping = False
        self._authenticator: ServerAuthenticator | None = None
        try:
            if curve is not None:
                self._authenticator = ServerAuthenticator(self._context, curve)
                allow_clients(self._socket, curve)
            self._socket.bind(endpoint)
        except zmq.ZMQError as error:
            self.close()
            raise ConfigError(f"cannot listen on endpoint {endpoint!r}: {error}") from error
        except ConfigError:
            self.close()
            raise

    def reload_clients(self) -> None:
        """Read the CurveZMQ allowed clients folder again (nothing without CurveZMQ)."""
        if self._authenticator is not None:
            self._authenticator.reload()

    def stop_after_reply(self) -> None:
        """Finish the request being answered, send its reply, then stop serving."""
        self._stopping = True

    def serve(
        self,
        wakeup_fd: int | None = None,
        work: MainLoopWork | None = None,
        *,
        idle: Callable[[], bool] | None = None,
        on_signal: Callable[[int], bool] | None = None,
        tick: Callable[[], None] | None = None,
        tick_every: float | None = None,
    ) -> None:
        """Answer requests until stop_after_reply() or a signal on ``wakeup_fd``.

        ``wakeup_fd`` receives a byte per signal, its number (as
        :func:`signal.set_wakeup_fd` writes it); ``on_signal`` says whether to
        go on serving after it (default: stop). ``work`` runs on this thread
        between requests, never during one. ``idle``: background work in short
        slices (the start-up reconcile, deletions left after a reply), called
        after each request and whenever none waits, until it says nothing is
        left; a request waits at most one slice. ``tick`` runs between requests
        and at least every ``tick_every`` seconds: the watchdog's kick, which
        only a loop that still turns sends.
        """
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        if wakeup_fd is not None:
            poller.register(wakeup_fd, zmq.POLLIN)
        work_fds = work.filenos() if work is not None else ()
        for fd in work_fds:
            poller.register(fd, zmq.POLLIN)
        busy = idle is not None
        while not self._stopping:
            timeouts = [t for t in (tick_every, work.timeout() if work else None) if t is not None]
            if busy:
                timeouts.append(0.0)
            timeout_ms = int(min(timeouts) * 1000) if timeouts else None
            if timeout_ms is not None and not busy:
                timeout_ms = max(1, timeout_ms)
            events = dict(poller.poll(timeout_ms))
            if wakeup_fd is not None and wakeup_fd in events:
                signals = os.read(wakeup_fd, 512)
                if on_signal is None or not all(on_signal(number) for number in signals):
                    log.info("signal received: stopping")
                    return
            if work is not None and any(fd in events for fd in work_fds):
                work.readable()
            served = self._socket in events
            if served:
                if work is not None:
                    work.before_request()
                self._serve_one()
                if work is not None:
                    work.after_request()
            if work is not None:
                work.run_due()
            if idle is not None and (busy or served):
                busy = idle()
            if tick is not None:
                tick()

    def _serve_one(self) -> None:
        try:
            parts = self._socket.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(parts) != 1:
            log.warning("request of %d frames: answering the first one only", len(parts))
        reply = answer_frame(parts[0], self._key, self._answer)
        self._socket.send(reply)

    def close(self) -> None:
        self._socket.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()
