"""The vhost-user wire protocol: message codes, feature bits and framing.

Owns the bytes on the unix socket between a frontend (QEMU, DPDK's
virtio-user) and this backend: the 12-byte header, the payload layouts this
backend understands, the file descriptors that travel with messages
(SCM_RIGHTS) and the feature bits it offers. It knows nothing of guest
memory or rings; it must not import the rest of butterfly except ``errors``.

Reference: QEMU's docs/interop/vhost-user.rst and the virtio 1.1
specification (section 5.1, network device).
"""

import array
import enum
import os
import socket
import struct
from dataclasses import dataclass, field

from butterfly.errors import ProtocolError

__all__ = [
    "BACKEND_FEATURES",
    "BACKEND_PROTOCOL_FEATURES",
    "MAX_PAYLOAD",
    "MAX_REGIONS",
    "OFFLOAD_FEATURES",
    "Feature",
    "Message",
    "MessageReader",
    "ProtocolFeature",
    "Request",
    "encode_reply",
    "fd_carrying",
]


class Request(enum.IntEnum):
    """Frontend-to-backend requests this backend recognises."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18


class Feature(enum.IntFlag):
    """Virtio-net and transport feature bits (virtio 1.1, 5.1.3 and 6)."""

    CSUM = 1 << 0
    GUEST_CSUM = 1 << 1
    GUEST_TSO4 = 1 << 7
    GUEST_TSO6 = 1 << 8
    GUEST_ECN = 1 << 9
    GUEST_UFO = 1 << 10
    HOST_TSO4 = 1 << 11
    HOST_TSO6 = 1 << 12
    HOST_ECN = 1 << 13
    HOST_UFO = 1 << 14
    MRG_RXBUF = 1 << 15
    RING_INDIRECT_DESC = 1 << 28
    RING_EVENT_IDX = 1 << 29
    PROTOCOL_FEATURES = 1 << 30
    VERSION_1 = 1 << 32


class ProtocolFeature(enum.IntFlag):
    """vhost-user protocol feature bits (VHOST_USER_PROTOCOL_F_*)."""

    MQ = 1 << 0
    LOG_SHMFD = 1 << 1
    RARP = 1 << 2
    REPLY_ACK = 1 << 3


# UFO is left out on purpose: Linux taps refuse TUN_F_UFO, so the kernel could
# never hand such a frame over, and offering HOST_UFO alone is a feature
# nobody would exercise. Everything here is implemented by the net device.
BACKEND_FEATURES = int(
    Feature.CSUM
    | Feature.GUEST_CSUM
    | Feature.GUEST_TSO4
    | Feature.GUEST_TSO6
    | Feature.GUEST_ECN
    | Feature.HOST_TSO4
    | Feature.HOST_TSO6
    | Feature.HOST_ECN
    | Feature.MRG_RXBUF
    | Feature.RING_INDIRECT_DESC
    | Feature.RING_EVENT_IDX
    | Feature.PROTOCOL_FEATURES
    | Feature.VERSION_1
)
OFFLOAD_FEATURES = int(
    Feature.CSUM
    | Feature.GUEST_CSUM
    | Feature.GUEST_TSO4
    | Feature.GUEST_TSO6
    | Feature.GUEST_ECN
    | Feature.HOST_TSO4
    | Feature.HOST_TSO6
    | Feature.HOST_ECN
)
"""The checksum and segmentation offloads, which --no-offload withholds from guests."""
# MQ is offered so that GET_QUEUE_NUM can tell the truth: one queue pair.
BACKEND_PROTOCOL_FEATURES = int(ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK)

MAX_REGIONS = 8
"""VHOST_MEMORY_BASELINE_NREGIONS: the most regions one SET_MEM_TABLE carries."""

MAX_PAYLOAD = 8 + MAX_REGIONS * 32
"""The largest payload of any request above (SET_MEM_TABLE's)."""

_HEADER = struct.Struct("<III")
_VERSION = 0x1
_FLAG_REPLY = 0x4
_FLAG_NEED_REPLY = 0x8
_MAX_FDS = MAX_REGIONS
_RECV_SIZE = 4096
_FD_REQUESTS = frozenset(
    {
        Request.SET_MEM_TABLE,
        Request.SET_LOG_BASE,
        Request.SET_LOG_FD,
        Request.SET_VRING_KICK,
        Request.SET_VRING_CALL,
        Request.SET_VRING_ERR,
    }
)


def fd_carrying(request: int) -> bool:
    """Whether ``request`` may come with file descriptors attached."""
    return request in _FD_REQUESTS


@dataclass(slots=True)
class Message:
    """One request as received; ``fds`` are owned by whoever handles it."""

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & _FLAG_NEED_REPLY)

    def name(self) -> str:
        try:
            return Request(self.request).name
        except ValueError:
            return f"request {self.request}"

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def encode_reply(request: int, payload: bytes) -> bytes:
    return _HEADER.pack(request, _VERSION | _FLAG_REPLY, len(payload)) + payload


class MessageReader:
    """Reassembles requests from a non-blocking stream socket.

    A frontend that sends half a message and stops must not stall the worker
    (which serves other vnics), so bytes are buffered until a whole message
    is there instead of being read with a blocking call.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._fds: list[int] = []

    def read(self) -> list[Message] | None:
        """The messages completed by what the socket holds now; None at EOF.

        Descriptors ride with the message whose bytes carried them: the
        kernel never merges a descriptor-carrying write with later ones in
        one read, so they belong to the last message completed by the read.
        """
        fdsize = array.array("i").itemsize * _MAX_FDS
        try:
            data, ancdata, msg_flags, _ = self._sock.recvmsg(_RECV_SIZE, socket.CMSG_SPACE(fdsize))
        except BlockingIOError:
            return []
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                self._fds.extend(fds)
        if msg_flags & socket.MSG_CTRUNC:
            self.close()
            raise ProtocolError("vhost-user: too many file descriptors with one message")
        if not data:
            return None
        self._buffer += data
        messages = self._parse()
        if self._fds and messages and fd_carrying(messages[-1].request):
            messages[-1].fds, self._fds = self._fds, []
        if not self._buffer:
            self._close_fds()
        return messages

    def _parse(self) -> list[Message]:
        messages = []
        while len(self._buffer) >= _HEADER.size:
            request, flags, size = _HEADER.unpack_from(self._buffer)
            if size > MAX_PAYLOAD:
                raise ProtocolError(
                    f"vhost-user: {Message(request, flags, b'').name()} payload size "
                    f"{size} exceeds {MAX_PAYLOAD}"
                )
            if flags & 0x3 != _VERSION:
                raise ProtocolError(f"vhost-user: header version {flags & 0x3}, expected 1")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            messages.append(Message(request, flags, bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return messages

    def _close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def close(self) -> None:
        self._close_fds()
        self._buffer.clear()
