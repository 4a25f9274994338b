"""The AES-256 encryption of frames, as deployed Butterfly peers do it.

The format (shared/protocol.md, "Encryption"): 16-byte IV in clear, then
SHA-512(content) || content || PKCS7 padding, run through AES-256-CBC. The
deployed peers run the CBC transform *backwards*: the sender applies the
decryption transform and the receiver the encryption transform. That is why
:func:`seal` uses a decryptor and :func:`unseal` an encryptor; a test checks
a fixed vector of the deployed client, not only a round trip.
"""

import base64
import binascii
import hashlib
import hmac
import os
from typing import TYPE_CHECKING

from butterfly.errors import ConfigError, ProtocolError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import CipherContext

__all__ = ["KEY_SIZE", "load_key", "seal", "unseal"]

KEY_SIZE = 32
_IV_SIZE = 16
_BLOCK = 16
_DIGEST_SIZE = 64


def load_key(path: str) -> bytes:
    """The 32-byte key from a file holding it in base64 (``openssl rand -base64 32``)."""
    try:
        with open(path, "rb") as file:
            text = file.read()
    except OSError as error:
        raise ConfigError(f"key file {path}: cannot be read: {error.strerror}") from error
    try:
        key = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ConfigError(f"key file {path}: is not base64: {error}") from error
    if len(key) != KEY_SIZE:
        raise ConfigError(
            f"key file {path}: decodes to {len(key)} bytes, an AES-256 key needs {KEY_SIZE}"
        )
    return key


def _aes_cbc(key: bytes, iv: bytes, *, decrypt: bool) -> "CipherContext":
    """Imports cryptography on the first encrypted frame: most daemons and
    clients talk in clear text, and its import (16-60 ms) would otherwise come
    before a restarted daemon's first answer."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415

    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    return cipher.decryptor() if decrypt else cipher.encryptor()


def seal(content: bytes, key: bytes, iv: bytes | None = None) -> bytes:
    """The ``aes256cbc_sha512`` blob carrying ``content``."""
    iv = os.urandom(_IV_SIZE) if iv is None else iv
    pad = _BLOCK - (_DIGEST_SIZE + len(content)) % _BLOCK
    plain = hashlib.sha512(content).digest() + content + bytes([pad]) * pad
    transform = _aes_cbc(key, iv, decrypt=True)
    return iv + transform.update(plain) + transform.finalize()


def unseal(blob: bytes, key: bytes) -> bytes:
    """The content of a blob; ProtocolError when it is malformed or forged."""
    if len(blob) < _IV_SIZE + _DIGEST_SIZE + _BLOCK or len(blob) % _BLOCK:
        raise ProtocolError(f"encrypted blob of {len(blob)} bytes is not a whole number of blocks")
    iv, body = blob[:_IV_SIZE], blob[_IV_SIZE:]
    transform = _aes_cbc(key, iv, decrypt=False)
    plain = transform.update(body) + transform.finalize()
    pad = plain[-1]
    if not 1 <= pad <= _BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise ProtocolError("encrypted blob has bad padding (wrong key?)")
    digest, content = plain[:_DIGEST_SIZE], plain[_DIGEST_SIZE:-pad]
    if not hmac.compare_digest(digest, hashlib.sha512(content).digest()):
        raise ProtocolError("encrypted blob has a wrong SHA-512 digest (wrong key?)")
    return content
