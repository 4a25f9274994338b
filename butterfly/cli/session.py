"""The CLI's one seam to the daemon: send a frame, get the answer.

Handlers talk to an :class:`Api`; the real one, :class:`DaemonApi`, wraps
the ZeroMQ client and only connects (and loads the key) when the first
request goes out, so ``help`` needs neither a daemon nor a key. Unit tests
give handlers an in-memory Api instead.
"""

from typing import Protocol, TextIO

from butterfly.api.client import Client
from butterfly.api.crypto import load_key
from butterfly.api.curve import CurveClient, load_key_pair, load_public_key
from butterfly.api.proto.message_pb2 import Messages
from butterfly.cli.args import GlobalOptions
from butterfly.cli.output import protobuf_text

__all__ = ["Api", "DaemonApi"]

_RULER = "#########################"


class Api(Protocol):
    def send(self, request: Messages) -> Messages:
        """The daemon's answer to one frame; ClientError when there is none."""
        ...


class DaemonApi:
    def __init__(self, *, options: GlobalOptions, trace: TextIO | None = None) -> None:
        self._options = options
        self._trace = trace
        self._client: Client | None = None

    def _connect(self) -> Client:
        if self._client is None:
            options = self._options
            curve = None
            if options.curve_server_key is not None and options.curve_key is not None:
                curve = CurveClient(
                    load_public_key(options.curve_server_key, "--curve-server-key"),
                    load_key_pair(options.curve_key, "--curve-key"),
                )
            self._client = Client(
                endpoint=options.endpoint,
                key=None if options.key_path is None else load_key(options.key_path),
                timeout_ms=options.timeout_ms,
                curve=curve,
            )
        return self._client

    def _show(self, title: str, message: Messages) -> None:
        if self._trace is not None:
            self._trace.write(f"{_RULER}\n# {title}:\n{protobuf_text(message)}{_RULER}\n")

    def send(self, request: Messages) -> Messages:
        client = self._connect()
        self._show("Message to be sent", request)
        if self._trace is not None and self._options.key_path is not None:
            self._trace.write("Request is encrypted\n")
        reply = client.send(request)
        self._show("Received message", reply)
        return reply

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
