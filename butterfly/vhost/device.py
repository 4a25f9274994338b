"""The vhost-user net device: one vnic's socket, its frontend session and its frames.

Owns what happens on one vnic: the listening socket (which exists whether or
not a guest is connected), the session with at most one frontend (requests
handled as docs/interop/vhost-user.rst says, replies, REPLY_ACK), and the
packet work between the two virtqueues and the tap: queue 0 (receive) is
filled from the tap, queue 1 (transmit) is written to it. The virtio-net
header passes through unchanged in both directions because the tap is set to
the same header size, so TSO segments and checksums left to the device cross
as one frame and the kernel finishes them. The per-frame work runs in one of
two loops (:mod:`butterfly.vhost.fastloop`): the C extension, a burst per
call, or the Python methods below, its fallback and reference.

A frontend that breaks the protocol or its rings is disconnected with a log
line on ``butterfly.vhost``; nothing it sends can raise past this module.
The event loop belongs to the worker: this module only asks it (through
:class:`Poller`) to watch descriptors and to come back when work remains.
"""

import contextlib
import functools
import logging
import os
import select
import socket
import stat
import struct
from collections.abc import Callable
from typing import ClassVar, Protocol

from butterfly.errors import ButterflyError, DataplaneError, ProtocolError

from . import fastloop
from . import tap as taps
from .memory import GuestMemory, decode_memory_table
from .protocol import (
    BACKEND_FEATURES,
    BACKEND_PROTOCOL_FEATURES,
    OFFLOAD_FEATURES,
    Feature,
    Message,
    MessageReader,
    ProtocolFeature,
    Request,
    encode_reply,
)
from .virtqueue import MAX_CHAIN_BYTES, Virtqueue

__all__ = ["NetDevice", "Poller"]

log = logging.getLogger("butterfly.vhost")

BURST = 256
"""Frames per ring per turn: large enough to amortise the per-turn work, small
enough that other vnics of the worker (and its control channel) wait little."""

_RX, _TX = 0, 1
_U64 = struct.Struct("<Q")
_STATE = struct.Struct("<II")
_ADDR = struct.Struct("<IIQQQQ")
_NUM_BUFFERS_ONE = b"\x01\x00"
_VRING_NOFD = 0x100
_READ_BUFFER = 12 + 65536 + 256
# counter indices, in counters.VnicCounters order
_CONNECTED, _TG_PKTS, _TG_BYTES, _TG_DROP, _FG_PKTS, _FG_BYTES, _FG_DROP, _DISCONNECTS = range(8)


class Poller(Protocol):
    """The worker's event loop, as a device sees it."""

    def watch(self, fd: int, events: int, callback: Callable[[int], None]) -> None: ...

    def modify(self, fd: int, events: int) -> None: ...

    def unwatch(self, fd: int) -> None: ...

    def again(self, device: "NetDevice") -> None:
        """Call ``device.run()`` on the next turn without waiting for an event."""


class NetDevice:
    """One vnic: its socket, tap, frontend session and rings."""

    def __init__(
        self,
        *,
        vnic: str,
        socket_path: str,
        tap_name: str,
        poller: Poller,
        publish_counters: Callable[[list[int]], None],
        counters: list[int] | None = None,
        offload: bool = True,
        loop: str = "python",
    ) -> None:
        """``counters`` continue where a previous worker left them (it died).
        ``offload``: False offers the guest no checksum or segmentation offload,
        so every frame crosses whole and checksummed, both ways. ``loop``: "c"
        or "python", as :func:`butterfly.vhost.fastloop.resolve` chose."""
        self.vnic = vnic
        self.socket_path = socket_path
        self.tap_name = tap_name
        self._poller = poller
        self._publish_counters = publish_counters
        self.counters = [0] * 8 if counters is None else list(counters)
        self.counters[_CONNECTED] = 0
        self._tap = -1
        self._listener: socket.socket | None = None
        self._socket_file: tuple[int, int] | None = None
        self._conn: socket.socket | None = None
        self._reader: MessageReader | None = None
        self._memory: GuestMemory | None = None
        self._queues = [Virtqueue(_RX), Virtqueue(_TX)]
        self._offered = BACKEND_FEATURES if offload else BACKEND_FEATURES & ~OFFLOAD_FEATURES
        self._features = 0
        self._protocol_features = 0
        self._header = 12
        self._mrg = False
        self._tap_events = 0
        self._tap_failed = False
        self._scratch = memoryview(bytearray(_READ_BUFFER))
        self.loop = loop
        self._work = (
            (self._transmit_c, self._receive_c) if loop == "c" else (self._transmit, self._receive)
        )

    # --- lifecycle ------------------------------------------------------

    def start(self) -> None:
        """Attach to the tap and listen; the socket is then there for a guest to come."""
        self._tap = taps.open_tap(self.tap_name)
        try:
            self._listener = self._listen()
        except BaseException:
            os.close(self._tap)
            self._tap = -1
            raise
        self._poller.watch(self._listener.fileno(), select.EPOLLIN, self._guarded(self._on_accept))
        self._watch_tap(select.EPOLLIN)
        log.info(
            "vnic %s: serving vhost-user on %s for tap %s (%s loop)",
            self.vnic,
            self.socket_path,
            self.tap_name,
            self.loop,
        )

    def _listen(self) -> socket.socket:
        try:
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise DataplaneError(f"vhost: socket path {self.socket_path}: {e.strerror}") from None
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            listener.bind(self.socket_path)
            listener.listen(4)
            made = os.lstat(self.socket_path)
        except OSError as e:
            listener.close()
            raise DataplaneError(
                f"vhost: cannot listen on socket {self.socket_path}: {e.strerror}"
            ) from None
        self._socket_file = (made.st_dev, made.st_ino)
        return listener

    def stop(self) -> None:
        """Disconnect the frontend, remove the socket and let go of the tap."""
        self._disconnect(None)
        if self._listener is not None:
            self._poller.unwatch(self._listener.fileno())
            self._listener.close()
            self._listener = None
            self._unlink_socket()
        if self._tap >= 0:
            self._watch_tap(0)
            os.close(self._tap)
            self._tap = -1
        log.info("vnic %s: stopped serving %s", self.vnic, self.socket_path)

    def _unlink_socket(self) -> None:
        """Remove our socket file, but not one that replaced it: a worker of the
        previous daemon may exit after the new daemon's worker made its own."""
        with contextlib.suppress(FileNotFoundError):
            found = os.lstat(self.socket_path)
            if (found.st_dev, found.st_ino) == self._socket_file:
                os.unlink(self.socket_path)
        self._socket_file = None

    def _on_accept(self, _events: int) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._conn is not None:
            log.warning("vnic %s: refused a second frontend while one is connected", self.vnic)
            conn.close()
            return
        conn.setblocking(False)
        self._conn = conn
        self._reader = MessageReader(conn)
        self._poller.watch(conn.fileno(), select.EPOLLIN, self._guarded(self._on_message))
        self.counters[_CONNECTED] = 1
        self._publish_counters(self.counters)
        log.info("vnic %s: frontend connected", self.vnic)

    def _disconnect(self, error: Exception | None) -> None:
        """Forget the frontend; the listening socket and the tap stay."""
        if self._conn is None:
            return
        if error is not None:
            log.warning("vnic %s: disconnecting frontend: %s", self.vnic, error)
            self.counters[_DISCONNECTS] += 1
        else:
            log.info("vnic %s: frontend disconnected", self.vnic)
        for queue in self._queues:
            if queue.kick_fd >= 0 and queue.started:
                self._poller.unwatch(queue.kick_fd)
            queue.reset()
        if self._memory is not None:
            self._memory.close()
            self._memory = None
        self._poller.unwatch(self._conn.fileno())
        assert self._reader is not None
        self._reader.close()
        self._conn.close()
        self._conn = None
        self._reader = None
        self._features = 0
        self._protocol_features = 0
        if not self._tap_failed:
            try:
                taps.set_guest_features(self._tap, 0)
            except OSError as e:
                self._tap_gone(e)
        self._watch_tap(select.EPOLLIN)
        self.counters[_CONNECTED] = 0
        self._publish_counters(self.counters)

    # --- the session ----------------------------------------------------

    def _on_message(self, _events: int) -> None:
        assert self._reader is not None
        messages: list[Message] | None = []
        try:
            messages = self._reader.read()
            if messages is None:
                self._disconnect(None)
                return
            for message in messages:
                self._handle(message)
        except (ButterflyError, OSError, ValueError) as e:
            for message in messages or ():
                message.close_fds()
            self._disconnect(e)
        self._publish_counters(self.counters)

    def _handle(self, message: Message) -> None:
        request = message.request
        handler = self._HANDLERS.get(request)
        if handler is None:
            message.close_fds()
            raise ProtocolError(f"vhost-user: unsupported {message.name()}")
        reply = handler(self, message)
        if reply is not None:
            self._send(request, reply)
        elif message.need_reply and self._protocol_features & ProtocolFeature.REPLY_ACK:
            self._send(request, _U64.pack(0))

    def _send(self, request: int, payload: bytes) -> None:
        assert self._conn is not None
        data = encode_reply(request, payload)
        try:
            sent = self._conn.send(data)
        except BlockingIOError:
            sent = 0
        if sent != len(data):
            raise ProtocolError("vhost-user: frontend does not read its replies")

    def _payload(self, message: Message, layout: struct.Struct) -> tuple[int, ...]:
        if len(message.payload) < layout.size:
            raise ProtocolError(
                f"vhost-user: {message.name()} payload of {len(message.payload)} bytes, "
                f"expected {layout.size}"
            )
        return layout.unpack_from(message.payload)

    def _queue(self, message: Message, index: int) -> Virtqueue:
        if index >= len(self._queues):
            raise ProtocolError(
                f"vhost-user: {message.name()} for vring {index}; this device has "
                f"{len(self._queues)}"
            )
        return self._queues[index]

    def _get_features(self, _message: Message) -> bytes:
        return _U64.pack(self._offered)

    def _set_features(self, message: Message) -> None:
        (features,) = self._payload(message, _U64)
        if features & ~self._offered:
            raise ProtocolError(
                f"vhost-user: SET_FEATURES {features:#x} has bits never offered "
                f"({features & ~self._offered:#x})"
            )
        self._features = features
        self._header = taps.header_size(features)
        self._mrg = bool(features & Feature.MRG_RXBUF)
        for queue in self._queues:
            queue.event_idx = bool(features & Feature.RING_EVENT_IDX)
            queue.indirect = bool(features & Feature.RING_INDIRECT_DESC)
            if not features & Feature.PROTOCOL_FEATURES:
                queue.enabled = True
        try:
            if not self._tap_failed:
                taps.set_guest_features(self._tap, features)
        except OSError as e:
            raise DataplaneError(
                f"vhost: tap {self.tap_name} refused offloads for features {features:#x}: {e}"
            ) from None
        self._kick_all()

    def _set_owner(self, _message: Message) -> None:
        return None

    def _reset_owner(self, _message: Message) -> None:
        for queue in self._queues:
            if queue.kick_fd >= 0 and queue.started:
                self._poller.unwatch(queue.kick_fd)
            queue.reset()
        self._features = 0

    def _get_protocol_features(self, _message: Message) -> bytes:
        return _U64.pack(BACKEND_PROTOCOL_FEATURES)

    def _set_protocol_features(self, message: Message) -> None:
        (features,) = self._payload(message, _U64)
        if features & ~BACKEND_PROTOCOL_FEATURES:
            raise ProtocolError(
                f"vhost-user: SET_PROTOCOL_FEATURES {features:#x} has bits never offered"
            )
        self._protocol_features = features

    def _get_queue_num(self, _message: Message) -> bytes:
        return _U64.pack(1)

    def _set_mem_table(self, message: Message) -> None:
        fds, message.fds = message.fds, []
        try:
            regions = decode_memory_table(message.payload)
        except ProtocolError:
            for fd in fds:
                os.close(fd)
            raise
        memory = GuestMemory(regions, fds)
        old, self._memory = self._memory, memory
        for queue in self._queues:
            queue.map(memory)
        if old is not None:
            old.close()
        self._kick_all()

    def _set_vring_num(self, message: Message) -> None:
        index, num = self._payload(message, _STATE)
        self._queue(message, index).set_size(num)

    def _set_vring_addr(self, message: Message) -> None:
        index, _flags, desc, used, avail, _log = self._payload(message, _ADDR)
        queue = self._queue(message, index)
        queue.addresses = (desc, avail, used)
        queue.map(self._memory)
        self._kick_all()

    def _set_vring_base(self, message: Message) -> None:
        index, base = self._payload(message, _STATE)
        self._queue(message, index).set_base(base)

    def _get_vring_base(self, message: Message) -> bytes:
        index, _ = self._payload(message, _STATE)
        queue = self._queue(message, index)
        if queue.started and queue.kick_fd >= 0:
            self._poller.unwatch(queue.kick_fd)
        return _STATE.pack(index, queue.stop())

    def _eventfd(self, message: Message) -> tuple[Virtqueue, int]:
        (value,) = self._payload(message, _U64)
        queue = self._queue(message, value & 0xFF)
        if value & _VRING_NOFD:
            message.close_fds()
            return queue, -1
        if len(message.fds) != 1:
            raise ProtocolError(
                f"vhost-user: {message.name()} for vring {value & 0xFF} came with "
                f"{len(message.fds)} fds, expected 1"
            )
        fd = message.fds.pop()
        os.set_blocking(fd, False)
        return queue, fd

    def _set_vring_kick(self, message: Message) -> None:
        queue, fd = self._eventfd(message)
        if fd < 0:
            raise ProtocolError(f"vhost-user: vring {queue.index} without a kick fd (polling)")
        if queue.kick_fd >= 0:
            if queue.started:
                self._poller.unwatch(queue.kick_fd)
            os.close(queue.kick_fd)
        queue.kick_fd = fd
        queue.start()
        try:
            self._poller.watch(
                fd, select.EPOLLIN, self._guarded(functools.partial(self._on_kick, queue))
            )
        except OSError as e:
            queue.started = False
            raise ProtocolError(f"vhost-user: vring {queue.index} kick fd: {e.strerror}") from None
        self._kick_all()

    def _set_vring_call(self, message: Message) -> None:
        queue, fd = self._eventfd(message)
        if queue.call_fd >= 0:
            os.close(queue.call_fd)
        queue.call_fd = fd

    def _set_vring_err(self, message: Message) -> None:
        queue, fd = self._eventfd(message)
        if queue.err_fd >= 0:
            os.close(queue.err_fd)
        queue.err_fd = fd

    def _set_vring_enable(self, message: Message) -> None:
        # QEMU sends it before SET_FEATURES (once protocol features are
        # exchanged), so it cannot be refused for want of PROTOCOL_FEATURES.
        index, enable = self._payload(message, _STATE)
        self._queue(message, index).enabled = bool(enable)
        self._kick_all()

    _HANDLERS: ClassVar[dict[int, Callable[["NetDevice", Message], bytes | None]]] = {
        Request.GET_FEATURES: _get_features,
        Request.SET_FEATURES: _set_features,
        Request.SET_OWNER: _set_owner,
        Request.RESET_OWNER: _reset_owner,
        Request.SET_MEM_TABLE: _set_mem_table,
        Request.SET_VRING_NUM: _set_vring_num,
        Request.SET_VRING_ADDR: _set_vring_addr,
        Request.SET_VRING_BASE: _set_vring_base,
        Request.GET_VRING_BASE: _get_vring_base,
        Request.SET_VRING_KICK: _set_vring_kick,
        Request.SET_VRING_CALL: _set_vring_call,
        Request.SET_VRING_ERR: _set_vring_err,
        Request.GET_PROTOCOL_FEATURES: _get_protocol_features,
        Request.SET_PROTOCOL_FEATURES: _set_protocol_features,
        Request.GET_QUEUE_NUM: _get_queue_num,
        Request.SET_VRING_ENABLE: _set_vring_enable,
    }

    # --- packets ----------------------------------------------------------

    def _watch_tap(self, events: int) -> None:
        """Read the tap only while someone can take its frames; otherwise the
        kernel queues (and then drops) them, which is the backpressure we want."""
        if self._tap < 0 or events == self._tap_events or (events and self._tap_failed):
            return
        if self._tap_events == 0:
            self._poller.watch(self._tap, events, self._guarded(self._on_tap))
        elif events == 0:
            self._poller.unwatch(self._tap)
        else:
            self._poller.modify(self._tap, events)
        self._tap_events = events

    def _kick_all(self) -> None:
        """A ring may have become ready: look at it without waiting for a kick."""
        self._watch_tap(select.EPOLLIN)
        self._poller.again(self)

    def _on_kick(self, queue: Virtqueue, events: int) -> None:
        if events & (select.EPOLLHUP | select.EPOLLERR):
            self._disconnect(ProtocolError(f"vhost-user: vring {queue.index} kick fd hung up"))
            return
        try:
            value = os.read(queue.kick_fd, 8)
        except BlockingIOError:
            value = b"kick"
        except OSError as e:
            self._disconnect(ProtocolError(f"vhost-user: vring {queue.index} kick fd: {e}"))
            return
        if not value:
            self._disconnect(ProtocolError(f"vhost-user: vring {queue.index} kick fd at EOF"))
            return
        if queue.index == _RX:
            self._watch_tap(select.EPOLLIN)
        self.run()

    def _on_tap(self, events: int) -> None:
        if events & (select.EPOLLERR | select.EPOLLHUP):
            self._tap_gone(OSError("the tap reports an error"))
            return
        self.run()

    def _tap_gone(self, error: OSError) -> None:
        """The tap was deleted under us (or broke): stop reading it, keep the socket.

        Only stop() or a new add() (with a new tap) recovers; a tap in error
        would otherwise wake the worker forever.
        """
        if not self._tap_failed:
            log.error(
                "vnic %s: tap %s unusable, no longer read: %s", self.vnic, self.tap_name, error
            )
        self._watch_tap(0)
        self._tap_failed = True

    def run(self) -> None:
        """One turn of packet work on both rings; asks to come back if work remains."""
        self._guarded(self._run)(0)

    def _guarded(self, callback: Callable[[int], None]) -> Callable[[int], None]:
        """Whatever a frontend manages to provoke ends its session, never the worker
        (which serves other vnics too): even errors this module did not foresee."""

        def guarded(events: int) -> None:
            try:
                callback(events)
            except Exception as e:
                log.exception("vnic %s: unexpected error", self.vnic)
                try:
                    self._disconnect(e)
                except Exception:
                    log.exception("vnic %s: cannot disconnect the frontend", self.vnic)

        return guarded

    def _run(self, _events: int) -> None:
        try:
            transmit, receive = self._work
            more = transmit()
            more = receive() or more
        except (ButterflyError, OSError) as e:
            self._disconnect(e)
            more = False
        self._publish_counters(self.counters)
        if more:
            self._poller.again(self)

    def _transmit(self) -> bool:
        """Guest to tap: one writev per frame, straight from guest memory."""
        queue = self._queues[_TX]
        if self._conn is None or not queue.ready:
            return False
        queue.suppress_kicks()
        since = queue.used_idx
        tap = self._tap
        header = self._header
        readable = queue.readable
        write = os.write
        writev = os.writev
        packets = octets = dropped = 0
        budget = BURST
        while budget:
            heads = queue.heads(min(queue.pending(), budget))
            if not heads:
                break
            for head in heads:
                buffers, length = readable(head)
                try:
                    if len(buffers) == 1:
                        write(tap, buffers[0])
                    else:
                        writev(tap, buffers)
                    octets += length
                except OSError:
                    dropped += 1
            queue.put_used_read(heads)
            queue.consume(len(heads))
            budget -= len(heads)
            packets += len(heads)
        packets -= dropped
        octets -= packets * header
        queue.publish(since)
        counters = self.counters
        counters[_FG_PKTS] += packets
        counters[_FG_BYTES] += octets
        counters[_FG_DROP] += dropped
        if not budget:
            return True
        return queue.await_kick()

    def _transmit_c(self) -> bool:
        """:meth:`_transmit` in the C loop."""
        queue = self._queues[_TX]
        if self._conn is None or not queue.ready:
            return False
        assert self._memory is not None
        burst = fastloop.transmit(
            queue, self._memory, tap=self._tap, header=self._header, budget=BURST
        )
        counters = self.counters
        counters[_FG_PKTS] += burst.packets
        counters[_FG_BYTES] += burst.octets
        counters[_FG_DROP] += burst.dropped
        return burst.more

    def _receive_c(self) -> bool:
        """:meth:`_receive` in the C loop."""
        queue = self._queues[_RX]
        if self._conn is None or not queue.ready:
            return self._drain()
        assert self._memory is not None
        burst = fastloop.receive(
            queue,
            self._memory,
            tap=self._tap,
            header=self._header,
            budget=BURST,
            mergeable=self._mrg,
            scratch=self._scratch,
        )
        if burst.tap_errno:
            self._tap_gone(OSError(burst.tap_errno, os.strerror(burst.tap_errno)))
        elif burst.no_buffers:
            self._watch_tap(0)
        counters = self.counters
        counters[_TG_PKTS] += burst.packets
        counters[_TG_BYTES] += burst.octets
        counters[_TG_DROP] += burst.dropped
        return burst.more

    def _receive(self) -> bool:
        """Tap to guest: each frame read straight into the guest's buffers."""
        queue = self._queues[_RX]
        if self._conn is None or not queue.ready:
            return self._drain()
        since = queue.used_idx
        tap = self._tap
        readv = os.readv
        writable = queue.writable
        scratch = self._scratch
        set_num_buffers = self._header == 12
        packets = octets = dropped = 0
        budget = BURST
        while budget:
            heads = queue.heads(min(queue.pending(), budget))
            if not heads:
                if queue.await_kick():
                    continue
                self._watch_tap(0)
                break
            used: list[tuple[int, int]] = []
            overflow = None
            for head in heads:
                buffers, capacity = writable(head, MAX_CHAIN_BYTES)
                buffers.append(scratch)
                try:
                    length = readv(tap, buffers)
                except BlockingIOError:
                    break
                except OSError as e:
                    self._tap_gone(e)
                    break
                if length > capacity:
                    overflow = (buffers, capacity, length)
                    break
                if set_num_buffers:
                    first = buffers[0]
                    if len(first) >= 12:
                        first[10:12] = _NUM_BUFFERS_ONE
                    else:
                        _set_num_buffers(buffers, 1)
                used.append((head, length))
                octets += length
            queue.put_used_many(used)
            queue.consume(len(used))
            packets += len(used)
            budget -= len(used)
            if overflow is not None:
                budget -= 1
                buffers, capacity, length = overflow
                if self._mrg and self._spread(queue, buffers, capacity, length):
                    packets += 1
                    octets += length
                else:
                    dropped += 1
            elif len(used) < len(heads):
                break
        queue.publish(since)
        counters = self.counters
        counters[_TG_PKTS] += packets
        counters[_TG_BYTES] += octets - packets * self._header
        counters[_TG_DROP] += dropped
        return budget <= 0

    def _spread(
        self,
        queue: Virtqueue,
        first: list[memoryview],
        capacity: int,
        length: int,
    ) -> bool:
        """Continue a frame that overflowed its first chain into the next ones
        (MRG_RXBUF); False, consuming nothing, when the guest has too few."""
        rest = self._scratch[: length - capacity]
        available = queue.pending()
        used = [(queue.peek(0), capacity)]
        offset = 0
        while offset < len(rest):
            if len(used) == available:
                return False
            head = queue.peek(len(used))
            buffers, _room = queue.writable(head, len(rest) - offset)
            start = offset
            for buffer in buffers:
                take = min(len(buffer), len(rest) - offset)
                buffer[:take] = rest[offset : offset + take]
                offset += take
            used.append((head, offset - start))
        _set_num_buffers(first, len(used))
        queue.put_used_many(used)
        queue.consume(len(used))
        return True

    def _drain(self) -> bool:
        """No guest to take the tap's frames: read and count them as dropped,
        so that the tap keeps no stale queue for the next guest."""
        if self._tap_events == 0:
            return False
        dropped = 0
        for _ in range(BURST):
            try:
                os.readv(self._tap, [self._scratch])
            except BlockingIOError:
                break
            except OSError as e:
                self._tap_gone(e)
                break
            dropped += 1
        self.counters[_TG_DROP] += dropped
        return dropped == BURST


def _set_num_buffers(buffers: list[memoryview], count: int) -> None:
    """num_buffers is bytes 10-11 of the header, which may span buffers."""
    value = _NUM_BUFFERS_ONE if count == 1 else struct.pack("<H", count)
    first = buffers[0]
    if len(first) >= 12:
        first[10:12] = value
        return
    position = 0
    for buffer in buffers:
        for i in range(len(buffer)):
            if 10 <= position + i < 12:
                buffer[i] = value[position + i - 10]
        position += len(buffer)
        if position >= 12:
            return
