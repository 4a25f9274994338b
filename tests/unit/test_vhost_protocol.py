"""vhost-user framing: messages reassembled from a stream, descriptors attached."""

import os
import socket
import struct
from collections.abc import Iterator

import pytest

from butterfly.errors import ProtocolError
from butterfly.vhost.protocol import (
    BACKEND_FEATURES,
    MAX_PAYLOAD,
    Feature,
    MessageReader,
    Request,
    encode_reply,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _message(request: int, payload: bytes = b"", flags: int = 1) -> bytes:
    return struct.pack("<III", request, flags, len(payload)) + payload


def test_a_message_split_across_reads_is_reassembled(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    frontend, backend = pair
    reader = MessageReader(backend)
    data = _message(Request.SET_FEATURES, struct.pack("<Q", 1 << 32))
    frontend.sendall(data[:5])
    assert reader.read() == []
    frontend.sendall(data[5:] + _message(Request.GET_FEATURES, flags=0x9))
    first, second = reader.read() or []
    assert (first.request, first.payload) == (Request.SET_FEATURES, struct.pack("<Q", 1 << 32))
    assert second.request == Request.GET_FEATURES and second.need_reply


def test_descriptors_ride_with_their_message(pair: tuple[socket.socket, socket.socket]) -> None:
    frontend, backend = pair
    reader = MessageReader(backend)
    fd = os.eventfd(0)
    socket.send_fds(frontend, [_message(Request.SET_VRING_KICK, struct.pack("<Q", 1))], [fd])
    os.close(fd)
    [message] = reader.read() or []
    assert len(message.fds) == 1
    message.close_fds()


def test_descriptors_on_a_message_that_takes_none_are_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    frontend, backend = pair
    reader = MessageReader(backend)
    fd = os.eventfd(0)
    socket.send_fds(frontend, [_message(Request.GET_FEATURES)], [fd])
    [message] = reader.read() or []
    assert message.fds == []
    os.close(fd)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_message(Request.GET_FEATURES, flags=2), "header version 2"),
        (struct.pack("<III", 5, 1, MAX_PAYLOAD + 1), "exceeds"),
    ],
)
def test_malformed_headers_are_refused(
    pair: tuple[socket.socket, socket.socket], data: bytes, error: str
) -> None:
    frontend, backend = pair
    frontend.sendall(data)
    with pytest.raises(ProtocolError, match=error):
        MessageReader(backend).read()


def test_end_of_stream(pair: tuple[socket.socket, socket.socket]) -> None:
    frontend, backend = pair
    frontend.shutdown(socket.SHUT_WR)
    assert MessageReader(backend).read() is None


def test_reply_header() -> None:
    assert encode_reply(1, b"12345678") == struct.pack("<III", 1, 0x5, 8) + b"12345678"


def test_offered_features_are_an_int_with_no_unimplemented_bits() -> None:
    assert type(BACKEND_FEATURES) is int
    assert BACKEND_FEATURES & Feature.VERSION_1
    assert not BACKEND_FEATURES & (Feature.GUEST_UFO | Feature.HOST_UFO | (1 << 35))
