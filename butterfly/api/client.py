"""A ZeroMQ REQ client of the butterfly API (used by the CLI and the tests).

A REQ socket that timed out is unusable (its state machine waits for the
lost reply), so each call that times out closes its socket and the next
call opens a fresh one.
"""

import zmq

from butterfly.api.codec import REVISION, decode_reply, encode_request
from butterfly.api.curve import CurveClient
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Messages
from butterfly.errors import ClientError

__all__ = ["DEFAULT_ENDPOINT", "Client"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:9999"


class Client:
    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        key: bytes | None = None,
        timeout_ms: int = 10_000,
        curve: CurveClient | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._key = key
        self._curve = curve
        self._timeout_ms = timeout_ms
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None

    def _connect(self) -> "zmq.Socket[bytes]":
        if self._socket is None:
            socket: zmq.Socket[bytes] = self._context.socket(zmq.REQ)
            socket.setsockopt(zmq.LINGER, 0)
            if self._curve is not None:
                socket.curve_serverkey = self._curve.server_public
                socket.curve_publickey = self._curve.keys.public
                socket.curve_secretkey = self._curve.keys.secret
            try:
                socket.connect(self.endpoint)
            except zmq.ZMQError as error:
                socket.close()
                raise ClientError(f"bad endpoint {self.endpoint!r}: {error}") from error
            self._socket = socket
        return self._socket

    def send_frame(self, frame: bytes) -> bytes:
        """One raw frame out, one raw frame back."""
        socket = self._connect()
        try:
            socket.send(frame)
            if not socket.poll(self._timeout_ms, zmq.POLLIN):
                hint = " or it refused our CurveZMQ key" if self._curve is not None else ""
                raise ClientError(
                    f"cannot reach butterflyd at {self.endpoint}"
                    f" (no answer within {self._timeout_ms} ms{hint})"
                )
            return socket.recv()
        except (ClientError, zmq.ZMQError) as error:
            self.close()
            if isinstance(error, ClientError):
                raise
            raise ClientError(f"cannot reach butterflyd at {self.endpoint}: {error}") from error

    def send(self, request: Messages) -> Messages:
        return decode_reply(self.send_frame(encode_request(request, self._key)), self._key)

    def call(self, request: MessageV0.Request, message_id: str | None = None) -> MessageV0:
        """One request, its answer (status may be false: the caller checks)."""
        envelope = Messages()
        message = envelope.messages.add(revision=REVISION)
        message.message_0.request.CopyFrom(request)
        if message_id is not None:
            message.message_0.message_id = message_id
        reply = self.send(envelope)
        if len(reply.messages) != 1 or not reply.messages[0].HasField("message_0"):
            raise ClientError("the daemon's reply does not hold exactly one answer")
        return reply.messages[0].message_0

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
