"""A hand-written vhost-user frontend for tests: a "guest" made of a memfd.

It speaks the protocol as QEMU does (or deliberately does not), lays out
split rings in its own shared memory, and can then send frames on the
transmit queue and collect frames from the receive queue. Fuzz tests use its
low-level pieces to send what no real frontend would.
"""

import mmap
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from butterfly.vhost.protocol import Feature, ProtocolFeature, Request

__all__ = ["Frontend", "Ring"]

HEADER = struct.Struct("<III")
DESC = struct.Struct("<QIHH")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
MEMORY_SIZE = 16 << 20
GPA_BASE = 0x40000000
UADDR_BASE = 0x7F0000000000
QUEUE_SIZE = 256
RING_BYTES = 64 << 10
"""Room for one queue's descriptor table, avail and used rings."""
DATA_BASE = 4 * RING_BYTES
DATA_SLOT = 4096 * 4


@dataclass
class Ring:
    """One split ring in the frontend's memory, driver side."""

    memory: memoryview
    offset: int
    size: int = QUEUE_SIZE
    avail_idx: int = 0
    used_seen: int = 0
    kick: int = -1
    call: int = -1
    next_desc: int = 0
    outstanding: dict[int, int] = field(default_factory=dict)

    @property
    def desc(self) -> int:
        return self.offset

    @property
    def avail(self) -> int:
        return self.offset + 16 * self.size

    @property
    def used(self) -> int:
        return (self.avail + 6 + 2 * self.size + 3) & ~3

    def set_desc(self, index: int, addr: int, length: int, flags: int, next_: int = 0) -> None:
        DESC.pack_into(self.memory, self.desc + 16 * index, addr, length, flags, next_)

    def make_available(self, head: int) -> None:
        slot = self.avail_idx % self.size
        struct.pack_into("<H", self.memory, self.avail + 4 + 2 * slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.memory, self.avail + 2, self.avail_idx)

    def used_index(self) -> int:
        value: int = struct.unpack_from("<H", self.memory, self.used + 2)[0]
        return value

    def take_used(self) -> list[tuple[int, int]]:
        done = []
        while self.used_seen != self.used_index():
            slot = self.used_seen % self.size
            done.append(struct.unpack_from("<II", self.memory, self.used + 4 + 8 * slot))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return done

    def notify(self) -> None:
        os.eventfd_write(self.kick, 1)


class Frontend:
    """A frontend connected to one backend socket."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.memfd = os.memfd_create("vhost-test-guest")
        os.ftruncate(self.memfd, MEMORY_SIZE)
        self._map = mmap.mmap(self.memfd, MEMORY_SIZE)
        self.memory = memoryview(self._map)
        self.rings = [Ring(self.memory, 0), Ring(self.memory, RING_BYTES)]
        self.features = 0

    def close(self) -> None:
        if self.memfd < 0:
            return
        self.sock.close()
        for ring in self.rings:
            for fd in (ring.kick, ring.call):
                if fd >= 0:
                    os.close(fd)
            ring.kick = ring.call = -1
        self.memory.release()
        self._map.close()
        os.close(self.memfd)
        self.memfd = -1

    # --- messages ---------------------------------------------------------

    def send(
        self, request: int, payload: bytes = b"", fds: list[int] | None = None, flags: int = 0x1
    ) -> None:
        data = HEADER.pack(request, flags, len(payload)) + payload
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)

    def receive(self) -> tuple[int, bytes]:
        header = self._exactly(HEADER.size)
        request, flags, size = HEADER.unpack(header)
        assert flags & 0x4, "reply flag missing"
        return request, self._exactly(size)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("backend closed the connection")
            data += chunk
        return data

    def get_u64(self, request: int) -> int:
        self.send(request)
        code, payload = self.receive()
        assert code == request
        value: int = struct.unpack("<Q", payload)[0]
        return value

    def set_u64(self, request: int, value: int, ack: bool = False) -> None:
        self.send(request, struct.pack("<Q", value), flags=0x9 if ack else 0x1)
        if ack:
            assert self.receive() == (request, struct.pack("<Q", 0))

    def mem_table_payload(self, regions: list[tuple[int, int, int, int]] | None = None) -> bytes:
        regions = regions or [(GPA_BASE, MEMORY_SIZE, UADDR_BASE, 0)]
        body = b"".join(struct.pack("<QQQQ", *r) for r in regions)
        return struct.pack("<II", len(regions), 0) + body

    def is_connected(self) -> bool:
        """False once the backend has closed the connection."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            self.sock.settimeout(10.0)

    # --- the usual start-up, as QEMU does it ----------------------------

    def negotiate(self, features: int | None = None) -> None:
        self.send(Request.SET_OWNER)
        offered = self.get_u64(Request.GET_FEATURES)
        wanted = offered if features is None else features & offered
        wanted |= offered & Feature.PROTOCOL_FEATURES
        self.features = wanted
        self.set_u64(Request.SET_FEATURES, wanted)
        protocol = self.get_u64(Request.GET_PROTOCOL_FEATURES)
        self.set_u64(Request.SET_PROTOCOL_FEATURES, protocol & ProtocolFeature.REPLY_ACK)
        self.send(Request.SET_MEM_TABLE, self.mem_table_payload(), [self.memfd], flags=0x9)
        assert self.receive() == (Request.SET_MEM_TABLE, struct.pack("<Q", 0))
        for index, ring in enumerate(self.rings):
            self.send(Request.SET_VRING_NUM, struct.pack("<II", index, ring.size))
            self.send(Request.SET_VRING_BASE, struct.pack("<II", index, 0))
            self.send(
                Request.SET_VRING_ADDR,
                struct.pack(
                    "<IIQQQQ",
                    index,
                    0,
                    UADDR_BASE + ring.desc,
                    UADDR_BASE + ring.used,
                    UADDR_BASE + ring.avail,
                    0,
                ),
            )
            ring.call = os.eventfd(0, os.EFD_NONBLOCK)
            self.send(Request.SET_VRING_CALL, struct.pack("<Q", index), [ring.call])
            ring.kick = os.eventfd(0, os.EFD_NONBLOCK)
            self.send(Request.SET_VRING_KICK, struct.pack("<Q", index), [ring.kick])
            self.send(Request.SET_VRING_ENABLE, struct.pack("<II", index, 1), flags=0x9)
            assert self.receive()[0] == Request.SET_VRING_ENABLE

    @property
    def header_size(self) -> int:
        return 12 if self.features & (Feature.VERSION_1 | Feature.MRG_RXBUF) else 10

    # --- frames -------------------------------------------------------------

    def data_addr(self, slot: int) -> tuple[int, int]:
        """Guest address and memory offset of data slot ``slot``."""
        offset = DATA_BASE + slot * DATA_SLOT
        return GPA_BASE + offset, offset

    def transmit(self, frame: bytes, vnet_header: bytes | None = None, pieces: int = 1) -> None:
        """Queue ``frame`` (header prepended) on the transmit ring, in ``pieces`` descriptors."""
        ring = self.rings[1]
        header = vnet_header if vnet_header is not None else bytes(self.header_size)
        data = header + frame
        head = ring.next_desc
        step = -(-len(data) // pieces)
        chunks = [data[i : i + step] for i in range(0, len(data), step)]
        for i, chunk in enumerate(chunks):
            index = (head + i) % ring.size
            addr, offset = self.data_addr(QUEUE_SIZE + index)
            self.memory[offset : offset + len(chunk)] = chunk
            last = i == len(chunks) - 1
            ring.set_desc(index, addr, len(chunk), 0 if last else F_NEXT, (index + 1) % ring.size)
        ring.next_desc = (head + len(chunks)) % ring.size
        ring.make_available(head)
        ring.notify()

    def wait_used(
        self, ring_index: int, count: int, timeout: float = 10.0
    ) -> list[tuple[int, int]]:
        ring = self.rings[ring_index]
        done: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while len(done) < count:
            done += ring.take_used()
            if len(done) >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"ring {ring_index}: {len(done)} of {count} used")
            time.sleep(0.005)
        return done

    def post_receive_buffers(self, count: int, size: int = 2048) -> None:
        ring = self.rings[0]
        for _ in range(count):
            index = ring.next_desc
            addr, _ = self.data_addr(index)
            ring.set_desc(index, addr, size, F_WRITE)
            ring.outstanding[index] = size
            ring.next_desc = (index + 1) % ring.size
            ring.make_available(index)
        ring.notify()

    def drain_received(self, idle: float = 1.0) -> list[bytes]:
        """Every frame the backend delivers, a ring of buffers at a time, until
        none comes for ``idle`` seconds; each chain as written."""
        ring = self.rings[0]
        chunks: list[bytes] = []
        waiting = 0
        deadline = time.monotonic() + idle
        while time.monotonic() < deadline:
            if not waiting:
                self.post_receive_buffers(ring.size)
                waiting = ring.size
            used = ring.take_used()
            for head, length in used:
                _, offset = self.data_addr(head)
                chunks.append(bytes(self.memory[offset : offset + length]))
            if used:
                waiting -= len(used)
                deadline = time.monotonic() + idle
            else:
                time.sleep(0.005)
        return chunks

    def received(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """``count`` used receive chains, each as written (vnet header included)."""
        chunks = []
        for head, length in self.wait_used(0, count, timeout):
            _, offset = self.data_addr(head)
            chunks.append(bytes(self.memory[offset : offset + length]))
        return chunks
