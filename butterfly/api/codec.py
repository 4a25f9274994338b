"""Frames on the wire: the ``proto.Messages`` envelope, encrypted or not.

The server side (:func:`answer_frame`) never raises on any bytes: every
frame gets a reply frame, with the envelope-level error codes of the
specification for what cannot be answered message by message. The client
side (:func:`encode_request`, :func:`decode_reply`) raises ClientError.
"""

import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError

from butterfly.api.crypto import seal, unseal
from butterfly.api.proto.encrypted_pb2 import Encrypted
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Error, Messages
from butterfly.errors import ClientError, ProtocolError

__all__ = [
    "REVISION",
    "answer_frame",
    "decode_reply",
    "encode_request",
]

log = logging.getLogger(__name__)

REVISION = 6
"""The protocol revision we answer: upstream's last (see the specification)."""

AnswerV0 = Callable[[MessageV0], MessageV0]


def _envelope_error(code: "Error.Code.ValueType") -> Messages:
    reply = Messages()
    reply.messages.add(revision=REVISION).error.code = code
    return reply


def _encrypted_error(code: "Encrypted.Error.Code.ValueType") -> bytes:
    reply = Messages()
    reply.encrypted.error.code = code
    return reply.SerializeToString()


def _parse(frame: bytes) -> Messages | None:
    messages = Messages()
    try:
        messages.ParseFromString(frame)
    except (DecodeError, RuntimeError, ValueError):
        return None
    if not messages.IsInitialized():
        # Python's protobuf parses messages lacking required fields; the
        # deployed C++ peers refuse them, and so do we.
        return None
    return messages


def _answer_messages(request: Messages, answer: AnswerV0) -> Messages:
    if not request.messages:
        return _envelope_error(Error.EMPTY_REQUEST)
    reply = Messages()
    for message in request.messages:
        out = reply.messages.add(revision=REVISION)
        if message.HasField("message_0"):
            out.message_0.CopyFrom(answer(message.message_0))
        else:
            out.error.code = Error.VERSION_NOT_MANAGED
    return reply


def answer_frame(frame: bytes, key: bytes | None, answer: AnswerV0) -> bytes:
    """The reply frame to one request frame, whatever its bytes."""
    try:
        return _answer_frame(frame, key, answer)
    except Exception:
        # A bug, not the client's fault: answer it rather than stop serving.
        log.exception("internal error while answering a frame of %d bytes", len(frame))
        if key is not None:
            return _encrypted_error(Encrypted.Error.INTERNAL_ERROR)
        return _envelope_error(Error.INTERNAL_ERROR).SerializeToString()


def _answer_frame(frame: bytes, key: bytes | None, answer: AnswerV0) -> bytes:
    """The refusals are the deployed daemon's, shape for shape (clients match
    on them): see the specification's encryption section."""
    request = _parse(frame)
    if request is None:
        return _envelope_error(Error.PARSE_ERROR).SerializeToString()
    if key is None:
        if request.messages:
            return _answer_messages(request, answer).SerializeToString()
        if request.HasField("encrypted"):
            log.warning("rejected an encrypted request: this daemon has no key")
        return _envelope_error(Error.REJECTED).SerializeToString()
    if not request.HasField("encrypted"):
        log.warning("rejected a clear request: this daemon requires encryption")
        return _envelope_error(Error.REJECTED).SerializeToString()
    if not request.encrypted.HasField("aes256cbc_sha512"):
        return _encrypted_error(Encrypted.Error.NOT_SUPPORTED)
    try:
        content = unseal(request.encrypted.aes256cbc_sha512, key)
    except ProtocolError as error:
        log.warning("rejected an encrypted request: %s", error)
        return _encrypted_error(Encrypted.Error.REJECTED)
    sealed = Messages()
    sealed.encrypted.aes256cbc_sha512 = seal(_answer_sealed(content, answer), key)
    return sealed.SerializeToString()


def _answer_sealed(content: bytes, answer: AnswerV0) -> bytes:
    """The clear reply to a decrypted frame (encryption inside it is refused)."""
    inner = _parse(content)
    if inner is None:
        return _envelope_error(Error.PARSE_ERROR).SerializeToString()
    if inner.HasField("encrypted"):
        log.warning("rejected an encrypted request inside an encrypted one")
        return _envelope_error(Error.REJECTED).SerializeToString()
    return _answer_messages(inner, answer).SerializeToString()


def encode_request(request: Messages, key: bytes | None) -> bytes:
    """A client's request frame."""
    if key is None:
        return request.SerializeToString()
    sealed = Messages()
    sealed.encrypted.aes256cbc_sha512 = seal(request.SerializeToString(), key)
    return sealed.SerializeToString()


def decode_reply(frame: bytes, key: bytes | None) -> Messages:
    """The daemon's reply, decrypted; ClientError when it is not a usable reply."""
    reply = clear = _parse(frame)
    if reply is None:
        raise ClientError("the daemon's reply is not a protobuf Messages frame")
    if reply.HasField("encrypted"):
        encrypted = reply.encrypted
        if encrypted.HasField("error"):
            code = Encrypted.Error.Code.Name(encrypted.error.code)
            hint = {
                "REJECTED": " (wrong key)",
                "NOT_SUPPORTED": " (no encrypted content in the request)",
            }.get(code, "")
            raise ClientError(f"the daemon refused the request: encryption {code}{hint}")
        if key is None:
            raise ClientError("the daemon answered encrypted but no key was given")
        try:
            content = unseal(encrypted.aes256cbc_sha512, key)
        except ProtocolError as error:
            raise ClientError(f"cannot decrypt the daemon's reply: {error}") from error
        reply = _parse(content)
        if reply is None:
            raise ClientError("the daemon's decrypted reply is not a Messages frame")
    for message in reply.messages:
        if message.HasField("error"):
            code = Error.Code.Name(message.error.code)
            if message.error.code != Error.REJECTED or reply is not clear:
                raise ClientError(f"the daemon could not read the request: {code}")
            hint = "has no key: drop -k/--key" if key else "requires a key: give -k/--key"
            raise ClientError(f"the daemon refused the request: REJECTED (the daemon {hint})")
    return reply
