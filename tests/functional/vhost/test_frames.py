"""Frames and offloads through the backend, driven by the hand-written frontend."""

import os
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from butterfly.vhost import VhostUserServer
from butterfly.vhost.protocol import Feature

from .conftest import ServerFactory, TapSocket, ip, unique, wait_for
from .frontend import F_INDIRECT, Frontend

pytestmark = pytest.mark.root

GUEST_MAC = bytes.fromhex("020000000001")
HOST_MAC = bytes.fromhex("020000000002")
GUEST_IP, HOST_IP = "198.18.0.1", "198.18.0.2"
NEEDS_CSUM, GSO_TCPV4 = 1, 1

Wired = tuple[VhostUserServer, TapSocket, Frontend]


@pytest.fixture
def wire(
    server_factory: ServerFactory,
    frontend: Callable[[str], Frontend],
    tap_socket: Callable[[str], TapSocket],
) -> Callable[..., Wired]:
    """A server, a socket on its tap, and a frontend that negotiated ``features``
    (None: all the server offers)."""

    def make(features: int | None = None, **server_options: Any) -> Wired:
        server = server_factory(**server_options)
        sock = tap_socket(server.tap_name)
        fe = frontend(server.socket_path)
        fe.negotiate(features)
        return server, sock, fe

    return make


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _ipv4(protocol: int, payload_length: int) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + payload_length,
        1,
        0x4000,
        64,
        protocol,
        0,
        socket.inet_aton(GUEST_IP),
        socket.inet_aton(HOST_IP),
    )
    return header[:10] + struct.pack("!H", 0xFFFF - _checksum(header)) + header[12:]


def _pseudo_sum(protocol: int, length: int) -> int:
    """The pseudo-header sum a guest leaves in place when the device completes a checksum."""
    pseudo = socket.inet_aton(GUEST_IP) + socket.inet_aton(HOST_IP)
    return _checksum(pseudo + struct.pack("!BBH", 0, protocol, length))


def _udp_frame(payload: bytes, port: int) -> bytes:
    """A UDP frame whose checksum is left to the device (only the pseudo-header sum)."""
    length = 8 + len(payload)
    udp = struct.pack("!HHHH", 4000, port, length, _pseudo_sum(17, length)) + payload
    return HOST_MAC + GUEST_MAC + b"\x08\x00" + _ipv4(17, length) + udp


def _vnet(
    *,
    flags: int = 0,
    gso: int = 0,
    hdr_len: int = 0,
    gso_size: int = 0,
    start: int = 0,
    offset: int = 0,
) -> bytes:
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, start, offset, 0)


@pytest.fixture
def netns() -> Iterator[str]:
    name = unique("n")
    ip("netns", "add", name)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _into_netns(tap: str, netns: str) -> None:
    """The worker attached to the tap in the host namespace; the fd follows the move."""
    ip("link", "set", tap, "netns", netns)
    ip("-n", netns, "link", "set", tap, "address", HOST_MAC.hex(":"), "up")
    ip("-n", netns, "addr", "add", f"{HOST_IP}/24", "dev", tap)
    ip("-n", netns, "neigh", "add", GUEST_IP, "lladdr", GUEST_MAC.hex(":"), "dev", tap)


def _in_netns(netns: str, code: str) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "python3", "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize(
    "features",
    [None, int(Feature.VERSION_1), int(Feature.MRG_RXBUF), 0],
    ids=["all-offloads", "version-1-only", "legacy-mrg-rxbuf", "legacy"],
)
def test_frames_both_ways(
    features: int | None,
    wire: Callable[..., Wired],
) -> None:
    server, sock, fe = wire(features)
    frame = GUEST_MAC + HOST_MAC + b"\x88\xb5" + bytes(range(100))
    fe.transmit(frame, pieces=3)
    assert sock.incoming() == frame
    fe.post_receive_buffers(4)
    sock.inject(frame)
    [chain] = fe.received(1)
    assert chain[fe.header_size :] == frame
    if fe.header_size == 12:
        assert struct.unpack_from("<H", chain, 10)[0] == 1
    assert fe.rings[0].call >= 0 and os_eventfd_pending(fe.rings[0].call)
    # The worker publishes counters after the burst that moved the frame.
    wait_for(lambda: server.counters().to_guest_packets == 1, "the frame to be counted")
    counters = server.counters()
    assert counters.connected
    assert (counters.to_guest_packets, counters.from_guest_packets) == (1, 1)
    assert (counters.to_guest_bytes, counters.from_guest_bytes) == (len(frame), len(frame))


def os_eventfd_pending(fd: int) -> bool:
    try:
        return os.eventfd_read(fd) > 0
    except BlockingIOError:
        return False


def test_indirect_descriptors(
    wire: Callable[..., Wired],
) -> None:
    _, sock, fe = wire()
    frame = GUEST_MAC + HOST_MAC + b"\x88\xb5" + b"indirect".ljust(80, b"!")
    data = bytes(fe.header_size) + frame
    table_addr, table_offset = fe.data_addr(400)
    for i, piece in enumerate((data[:12], data[12:50], data[50:])):
        addr, offset = fe.data_addr(401 + i)
        fe.memory[offset : offset + len(piece)] = piece
        struct.pack_into(
            "<QIHH", fe.memory, table_offset + 16 * i, addr, len(piece), 1 if i < 2 else 0, i + 1
        )
    ring = fe.rings[1]
    ring.set_desc(0, table_addr, 48, F_INDIRECT)
    ring.make_available(0)
    ring.notify()
    assert sock.incoming() == frame


def test_large_frame_spreads_over_merged_buffers(
    wire: Callable[..., Wired],
) -> None:
    _, sock, fe = wire(mtu=9000)
    fe.post_receive_buffers(16, size=2048)
    frame = GUEST_MAC + HOST_MAC + b"\x88\xb5" + bytes(i % 251 for i in range(8986))
    sock.inject(frame)
    chains = fe.received(5)
    assert struct.unpack_from("<H", chains[0], 10)[0] == 5
    assert b"".join(chains)[12:] == frame


def test_large_frame_without_merged_buffers_is_dropped(
    wire: Callable[..., Wired],
) -> None:
    server, sock, fe = wire(int(Feature.VERSION_1), mtu=9000)
    fe.post_receive_buffers(16, size=2048)
    sock.inject(GUEST_MAC + HOST_MAC + b"\x88\xb5" + bytes(8986))
    wait_for(lambda: server.counters().to_guest_dropped == 1, "the drop to be counted")
    small = GUEST_MAC + HOST_MAC + b"\x88\xb5" + b"small".ljust(50)
    sock.inject(small)
    assert fe.received(1)[0][12:] == small


def test_frames_without_a_guest_are_counted(
    server_factory: ServerFactory,
    frontend: Callable[[str], Frontend],
    tap_socket: Callable[[str], TapSocket],
) -> None:
    server = server_factory()
    sock = tap_socket(server.tap_name)
    for _ in range(10):
        sock.inject(GUEST_MAC + HOST_MAC + b"\x88\xb5" + bytes(50))
    wait_for(lambda: server.counters().to_guest_dropped == 10, "10 dropped frames")
    assert not server.counters().connected


def test_tso_segment_reaches_the_kernel_as_one_frame(
    wire: Callable[..., Wired],
) -> None:
    server, sock, fe = wire()
    assert fe.features & Feature.HOST_TSO4
    payload = bytes(i % 256 for i in range(60000))
    tcp_length = 20 + len(payload)
    tcp = struct.pack(
        "!HHIIBBHHH", 4000, 5001, 1, 1, 5 << 4, 0x18, 65535, _pseudo_sum(6, tcp_length), 0
    )
    frame = HOST_MAC + GUEST_MAC + b"\x08\x00" + _ipv4(6, tcp_length) + tcp + payload
    header = _vnet(flags=NEEDS_CSUM, gso=GSO_TCPV4, hdr_len=54, gso_size=1448, start=34, offset=16)
    fe.transmit(frame, header, pieces=5)
    got = sock.incoming()
    assert len(got) == len(frame) > 1500
    assert got[54:] == payload
    assert server.counters().from_guest_dropped == 0


def test_checksum_left_to_the_device_is_completed(
    server_factory: ServerFactory, frontend: Callable[[str], Frontend], netns: str
) -> None:
    server = server_factory()
    fe = frontend(server.socket_path)
    fe.negotiate()
    _into_netns(server.tap_name, netns)
    receiver = _in_netns(
        netns,
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('{HOST_IP}', 9999)); s.settimeout(10); print('ready', flush=True); "
        "print(s.recv(100).decode(), flush=True)",
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        # Same partial checksum: refused without the flag, completed with it.
        fe.transmit(_udp_frame(b"no-flag", 9999), _vnet())
        fe.transmit(_udp_frame(b"needs-csum", 9999), _vnet(flags=NEEDS_CSUM, start=34, offset=6))
        assert receiver.stdout.readline().strip() == "needs-csum"
    finally:
        receiver.kill()
        receiver.communicate()


def _is_udp(chain: bytes) -> bool:
    """An IPv4 UDP frame behind a 12-byte vnet header (the netns also sends IPv6)."""
    return chain[24:26] == b"\x08\x00" and chain[12 + 23] == 17


@pytest.mark.parametrize("guest_csum", [True, False], ids=["guest-csum", "no-guest-csum"])
def test_kernel_offloads_follow_the_guest_features(
    guest_csum: bool, server_factory: ServerFactory, frontend: Callable[[str], Frontend], netns: str
) -> None:
    server = server_factory()
    fe = frontend(server.socket_path)
    offered_offloads = Feature.GUEST_CSUM | Feature.GUEST_TSO4 | Feature.GUEST_TSO6
    features = Feature.VERSION_1 | Feature.MRG_RXBUF | (offered_offloads if guest_csum else 0)
    fe.negotiate(int(features))
    fe.post_receive_buffers(64)
    _into_netns(server.tap_name, netns)
    sender = _in_netns(
        netns,
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.sendto(b'to the guest', ('{GUEST_IP}', 7777))",
    )
    output, _ = sender.communicate(timeout=10)
    assert sender.returncode == 0, output
    frames: list[bytes] = []
    while not any(_is_udp(f) for f in frames):
        frames += fe.received(1)
    frame = next(f for f in frames if _is_udp(f))
    flags = frame[0]
    udp = frame[12 + 34 :]
    assert udp.endswith(b"to the guest")
    if guest_csum:
        assert flags & NEEDS_CSUM
    else:
        assert not flags & NEEDS_CSUM
        pseudo = socket.inet_aton(HOST_IP) + socket.inet_aton(GUEST_IP)
        total = _checksum(pseudo + struct.pack("!BBH", 0, 17, len(udp)) + udp)
        assert total == 0xFFFF, "the kernel completed the checksum for this guest"
