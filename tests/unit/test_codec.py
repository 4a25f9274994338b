"""The envelope codec, without ZeroMQ: envelope errors, encryption errors, answers."""

import pytest

from butterfly.api.codec import REVISION, answer_frame, decode_reply, encode_request
from butterfly.api.crypto import seal, unseal
from butterfly.api.proto.encrypted_pb2 import Encrypted
from butterfly.api.proto.message0_pb2 import MessageV0
from butterfly.api.proto.message_pb2 import Error, Messages
from butterfly.errors import ClientError

KEY = bytes(range(32))


class Recorder:
    """An AnswerV0 that echoes the message id and remembers what it was asked."""

    def __init__(self) -> None:
        self.seen: list[MessageV0] = []

    def __call__(self, message: MessageV0) -> MessageV0:
        self.seen.append(message)
        reply = MessageV0(message_id=message.message_id)
        reply.response.status.status = True
        return reply


def envelope(*ids: str) -> Messages:
    out = Messages()
    for message_id in ids:
        message = out.messages.add(revision=REVISION)
        message.message_0.request.app_status = True
        message.message_0.message_id = message_id
    return out


def parse(frame: bytes) -> Messages:
    out = Messages()
    out.ParseFromString(frame)
    return out


def envelope_error(frame: bytes) -> int:
    reply = parse(frame)
    assert len(reply.messages) == 1
    assert reply.messages[0].revision == REVISION
    assert not reply.messages[0].HasField("message_0")
    return reply.messages[0].error.code


def encrypted_error(frame: bytes) -> int:
    reply = parse(frame)
    assert not reply.messages
    assert not reply.encrypted.HasField("aes256cbc_sha512")
    return reply.encrypted.error.code


def test_revision_is_upstreams_last_or_later() -> None:
    assert REVISION >= 6


@pytest.mark.parametrize("frame", [b"\xff", b"\x0a\x05ab", b"\x08", b"\x0a\x02\x08"])
def test_parse_error(frame: bytes) -> None:
    recorder = Recorder()
    assert envelope_error(answer_frame(frame, None, recorder)) == Error.PARSE_ERROR
    assert recorder.seen == []


def test_empty_frame_is_rejected() -> None:
    """The deployed daemon: an empty Messages, nothing encrypted, is REJECTED."""
    assert envelope_error(answer_frame(b"", None, Recorder())) == Error.REJECTED
    assert envelope_error(answer_frame(b"", KEY, Recorder())) == Error.REJECTED


def test_version_not_managed() -> None:
    request = Messages()
    request.messages.add(revision=0)
    assert (
        envelope_error(answer_frame(request.SerializeToString(), None, Recorder()))
        == Error.VERSION_NOT_MANAGED
    )


def test_messages_answered_in_order() -> None:
    recorder = Recorder()
    request = envelope("a", "b", "c")
    request.messages.add(revision=REVISION)  # no message_0, between answered ones
    request.messages.extend(envelope("d").messages)
    reply = parse(answer_frame(request.SerializeToString(), None, recorder))
    assert [m.message_0.message_id for m in reply.messages] == ["a", "b", "c", "", "d"]
    assert reply.messages[3].error.code == Error.VERSION_NOT_MANAGED
    assert [m.message_id for m in recorder.seen] == ["a", "b", "c", "d"]
    assert all(m.revision == REVISION for m in reply.messages)


def test_clear_request_to_keyed_daemon_is_a_clear_rejection() -> None:
    recorder = Recorder()
    frame = answer_frame(envelope("a").SerializeToString(), KEY, recorder)
    assert envelope_error(frame) == Error.REJECTED
    assert not parse(frame).HasField("encrypted")
    assert recorder.seen == []


def test_encrypted_request_without_key_is_a_clear_rejection() -> None:
    recorder = Recorder()
    frame = answer_frame(encode_request(envelope("a"), KEY), None, recorder)
    assert envelope_error(frame) == Error.REJECTED
    assert not parse(frame).HasField("encrypted")
    assert recorder.seen == []


def test_without_key_clear_messages_are_answered_even_beside_encrypted() -> None:
    """The deployed daemon looks at ``messages`` first when it has no key."""
    request = envelope("a")
    request.encrypted.aes256cbc_sha512 = b"ignored"
    reply = parse(answer_frame(request.SerializeToString(), None, Recorder()))
    assert [m.message_0.message_id for m in reply.messages] == ["a"]


def test_encryption_inside_encryption_is_rejected_inside() -> None:
    recorder = Recorder()
    inner = Messages()
    inner.encrypted.aes256cbc_sha512 = seal(envelope("a").SerializeToString(), KEY)
    reply = parse(answer_frame(encode_request(inner, KEY), KEY, recorder))
    assert not reply.messages
    content = parse(unseal(reply.encrypted.aes256cbc_sha512, KEY))
    assert [(m.revision, m.error.code) for m in content.messages] == [(REVISION, Error.REJECTED)]
    assert recorder.seen == []


def test_encrypted_without_blob_is_not_supported() -> None:
    request = Messages()
    request.encrypted.SetInParent()
    assert (
        encrypted_error(answer_frame(request.SerializeToString(), KEY, Recorder()))
        == Encrypted.Error.NOT_SUPPORTED
    )


@pytest.mark.parametrize("blob", [b"", bytes(96), bytes(100)], ids=["empty", "zeros", "ragged"])
def test_bad_blob_is_rejected(blob: bytes) -> None:
    request = Messages()
    request.encrypted.aes256cbc_sha512 = blob
    assert (
        encrypted_error(answer_frame(request.SerializeToString(), KEY, Recorder()))
        == Encrypted.Error.REJECTED
    )


def test_wrong_key_is_rejected() -> None:
    frame = encode_request(envelope("a"), bytes(32))
    assert encrypted_error(answer_frame(frame, KEY, Recorder())) == Encrypted.Error.REJECTED


def test_encrypted_round_trip() -> None:
    recorder = Recorder()
    frame = answer_frame(encode_request(envelope("x", "y"), KEY), KEY, recorder)
    raw = parse(frame)
    assert not raw.messages and raw.encrypted.HasField("aes256cbc_sha512")
    reply = decode_reply(frame, KEY)
    assert [m.message_0.message_id for m in reply.messages] == ["x", "y"]


def test_encrypted_garbage_content_gets_an_encrypted_parse_error() -> None:
    request = Messages()
    request.encrypted.aes256cbc_sha512 = seal(b"\xff\xff", KEY)
    reply = parse(answer_frame(request.SerializeToString(), KEY, Recorder()))
    inner = parse(unseal(reply.encrypted.aes256cbc_sha512, KEY))
    assert inner.messages[0].error.code == Error.PARSE_ERROR


def test_encrypted_empty_content_gets_an_encrypted_empty_request() -> None:
    reply = parse(answer_frame(encode_request(Messages(), KEY), KEY, Recorder()))
    inner = parse(unseal(reply.encrypted.aes256cbc_sha512, KEY))
    assert inner.messages[0].error.code == Error.EMPTY_REQUEST


def test_a_bug_in_a_handler_still_gets_an_answer() -> None:
    def broken(message: MessageV0) -> MessageV0:
        raise RuntimeError("bug")

    assert (
        envelope_error(answer_frame(envelope("a").SerializeToString(), None, broken))
        == Error.INTERNAL_ERROR
    )
    frame = answer_frame(encode_request(envelope("a"), KEY), KEY, broken)
    assert encrypted_error(frame) == Encrypted.Error.INTERNAL_ERROR


# the client side


def test_encode_request_clear_is_the_envelope() -> None:
    assert encode_request(envelope("a"), None) == envelope("a").SerializeToString()


def test_decode_reply_errors() -> None:
    with pytest.raises(ClientError, match="not a protobuf Messages frame"):
        decode_reply(b"\xff", None)
    rejected = Messages()
    rejected.encrypted.error.code = Encrypted.Error.REJECTED
    with pytest.raises(ClientError, match=r"REJECTED \(wrong key"):
        decode_reply(rejected.SerializeToString(), KEY)
    unsupported = Messages()
    unsupported.encrypted.error.code = Encrypted.Error.NOT_SUPPORTED
    with pytest.raises(ClientError, match=r"NOT_SUPPORTED \(no encrypted content"):
        decode_reply(unsupported.SerializeToString(), KEY)
    refused = answer_frame(envelope("a").SerializeToString(), KEY, Recorder())
    with pytest.raises(ClientError, match=r"REJECTED \(the daemon requires a key"):
        decode_reply(refused, None)
    refused = answer_frame(encode_request(envelope("a"), KEY), None, Recorder())
    with pytest.raises(ClientError, match=r"REJECTED \(the daemon has no key"):
        decode_reply(refused, KEY)
    with pytest.raises(ClientError, match="could not read the request: PARSE_ERROR"):
        decode_reply(answer_frame(b"\xff", None, Recorder()), None)
    sealed = answer_frame(encode_request(envelope("a"), KEY), KEY, Recorder())
    with pytest.raises(ClientError, match="no key was given"):
        decode_reply(sealed, None)
    with pytest.raises(ClientError, match="cannot decrypt"):
        decode_reply(sealed, bytes(32))
