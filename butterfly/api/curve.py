"""CurveZMQ for the API: who may talk to the daemon, and the keys to say so.

With CurveZMQ (ZeroMQ's own authenticated encryption, through pyzmq) a
client must know the daemon's public key and hold a key pair whose public
half the daemon lists in its allowed clients folder. ZeroMQ's ZAP handler
(:mod:`zmq.auth`, in a thread of its own) checks the client's key during the
handshake: an unknown client never gets a request through to the daemon,
which does no work for it. Every message of a session is encrypted with keys
of that session and a nonce that only grows, so a captured frame sent again,
on the same connection or another, is not a valid message.

Keys are the files ZeroMQ's tools write (:func:`zmq.auth.create_certificates`):
``NAME.key`` holds the public key, ``NAME.key_secret`` the public and the
secret key. The AES option of the original protocol is independent: both can
be on.
"""

import logging
import os
from dataclasses import dataclass

import zmq
import zmq.auth

from butterfly.errors import ConfigError

__all__ = [
    "ZAP_DOMAIN",
    "CurveClient",
    "CurveServer",
    "KeyPair",
    "ServerAuthenticator",
    "allow_clients",
    "generate",
    "load_key_pair",
    "load_public_key",
]

ZAP_DOMAIN = "butterfly"


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes
    secret: bytes
    """Both Z85-encoded, as ZeroMQ's socket options take them."""


@dataclass(frozen=True, slots=True)
class CurveServer:
    keys: KeyPair
    allowed_clients_dir: str


@dataclass(frozen=True, slots=True)
class CurveClient:
    server_public: bytes
    keys: KeyPair


def _load(path: str, what: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{what} {path}: not a ZeroMQ key file: {error}") from error
    return public, secret


def load_key_pair(path: str, what: str = "curve key") -> KeyPair:
    """The key pair of a ``.key_secret`` file."""
    public, secret = _load(path, what)
    if not secret:
        raise ConfigError(f"{what} {path}: holds no secret key (give the .key_secret file)")
    return KeyPair(public, secret)


def load_public_key(path: str, what: str = "curve server key") -> bytes:
    """The public key of a ``.key`` (or ``.key_secret``) file."""
    return _load(path, what)[0]


def generate(directory: str, name: str) -> tuple[str, str]:
    """A new key pair as ``DIRECTORY/NAME.key`` and ``NAME.key_secret`` (mode 0600);
    the two paths. An existing pair is never overwritten."""
    public_path = os.path.join(directory, f"{name}.key")
    secret_path = public_path + "_secret"
    for path in (public_path, secret_path):
        if os.path.exists(path):
            raise ConfigError(f"curve keygen: {path} exists; not replacing a key")
    os.makedirs(directory, exist_ok=True)
    public_path, secret_path = zmq.auth.create_certificates(directory, name)
    os.chmod(secret_path, 0o600)
    return public_path, secret_path


def allow_clients(socket: "zmq.Socket[bytes]", server: CurveServer) -> None:
    """Make ``socket`` a CurveZMQ server checking clients in :data:`ZAP_DOMAIN`;
    before it binds."""
    socket.curve_secretkey = server.keys.secret
    socket.curve_publickey = server.keys.public
    socket.curve_server = True
    socket.zap_domain = ZAP_DOMAIN.encode()


class ServerAuthenticator:
    """ZeroMQ's ZAP handler in a thread, admitting the keys of the allowed folder."""

    def __init__(self, context: "zmq.Context[zmq.Socket[bytes]]", server: CurveServer) -> None:
        if not os.path.isdir(server.allowed_clients_dir):
            raise ConfigError(f"curve allowed clients {server.allowed_clients_dir}: not a folder")
        self._server = server
        # Imported here: it brings asyncio (~0.5 s of a daemon's start-up), and
        # only a daemon with CurveZMQ uses it.
        from zmq.auth.thread import ThreadAuthenticator  # noqa: PLC0415

        # Refused clients are logged at debug level (pyzmq's choice).
        self._auth: ThreadAuthenticator = ThreadAuthenticator(
            context, log=logging.getLogger(__name__)
        )
        self._auth.start()
        self.reload()

    def reload(self) -> None:
        """Read the allowed folder again (a key added or removed since)."""
        self._auth.configure_curve(domain=ZAP_DOMAIN, location=self._server.allowed_clients_dir)

    def stop(self) -> None:
        self._auth.stop()
