"""The ZeroMQ REP server: one request frame in, one reply frame out.

Requests are answered one at a time, in the daemon's main thread, which is
what makes the service simple (no locking). The loop also watches a wake-up
file descriptor so that signals (SIGTERM, SIGINT) stop it promptly without
polling on a timer.
"""

import logging
import os
from collections.abc import Callable

import zmq

from butterfly.api.codec import answer_frame
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.errors import ConfigError

__all__ = ["DEFAULT_ENDPOINT", "MAX_FRAME_SIZE", "ApiServer"]

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://0.0.0.0:9999"
MAX_FRAME_SIZE = 256 * 1024 * 1024
"""Larger frames are dropped by ZeroMQ before they reach Python."""


class ApiServer:
    def __init__(
        self,
        *,
        endpoint: str,
        key: bytes | None,
        answer: Callable[[MessageV0], MessageV0],
    ) -> None:
        self.endpoint = endpoint
        self._key = key
        self._answer = answer
        self._context = zmq.Context()
        self._socket: zmq.Socket[bytes] = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_SIZE)
        self._stopping = False
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as error:
            self.close()
            raise ConfigError(f"cannot listen on endpoint {endpoint!r}: {error}") from error

    def stop_after_reply(self) -> None:
        """Finish the request being answered, send its reply, then stop serving."""
        self._stopping = True

    def serve(
        self, wakeup_fd: int | None = None, on_signal: Callable[[int], bool] | None = None
    ) -> None:
        """Answer requests until stop_after_reply() or a signal arrives on ``wakeup_fd``
        (``signal.set_wakeup_fd``: a byte per signal, its number). ``on_signal`` is
        given each such number and says whether to stop; without it, any does."""
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        if wakeup_fd is not None:
            poller.register(wakeup_fd, zmq.POLLIN)
        while not self._stopping:
            events = dict(poller.poll())
            if wakeup_fd is not None and wakeup_fd in events:
                received = os.read(wakeup_fd, 512)
                stops = [on_signal is None or on_signal(signum) for signum in received]
                if any(stops):
                    log.info("signal received: stopping")
                    return
            if self._socket in events:
                self._serve_one()

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
        self._context.term()
