"""A VM's hands in the labs (:mod:`butterfly_lab.lab`): runs inside a netns, obeys JSON lines.

Started as ``ip netns exec NS python .../butterfly_lab/agent.py``; each line on stdin is one
command, answered by one JSON line on stdout. It serves (TCP and UDP echo
servers), probes (TCP connect and echo, UDP echo, ICMP echo), keeps TCP
connections open across data plane changes, and sends and captures raw
frames (anti-spoofing attacks). Every wait is bounded by the command's
timeout. Only the standard library: it starts fast.
"""

import json
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_held: dict[int, socket.socket] = {}
_sniffers: dict[str, "Sniffer"] = {}


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _echo_tcp(conn: socket.socket) -> None:
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            conn.sendall(data)


def _serve_tcp(server: socket.socket) -> None:
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_echo_tcp, args=(conn,), daemon=True).start()


def _serve_udp(server: socket.socket) -> None:
    while True:
        data, peer = server.recvfrom(65536)
        server.sendto(data, peer)


def listen(proto: str, port: int, family: int) -> dict[str, Any]:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    server = socket.socket(af, kind)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if af == socket.AF_INET6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    server.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", port))
    if proto == "tcp":
        server.listen(64)
        threading.Thread(target=_serve_tcp, args=(server,), daemon=True).start()
    else:
        threading.Thread(target=_serve_udp, args=(server,), daemon=True).start()
    return {"ok": True}


def connect(proto: str, host: str, port: int, timeout: float) -> dict[str, Any]:
    payload = os.urandom(16)
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(_family(host), kind) as sock:
        sock.settimeout(timeout)
        try:
            if proto == "udp":
                sock.connect((host, port))
            if proto == "tcp":
                sock.connect((host, port))
                sock.sendall(payload)
                answer = sock.recv(64)
            else:
                sock.sendto(payload, (host, port))
                answer = sock.recv(64)
        except OSError as exc:
            return {"ok": False, "error": str(exc)}
    return {"ok": answer == payload, "error": "" if answer == payload else "bad echo"}


def hold(host: str, port: int, timeout: float, sport: int = 0) -> dict[str, Any]:
    """Open a TCP connection kept for later ``echo`` commands."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(timeout)
    try:
        if sport:
            sock.bind(("::" if ":" in host else "0.0.0.0", sport))
        sock.connect((host, port))
    except OSError as exc:
        sock.close()
        return {"ok": False, "error": str(exc)}
    _held[sock.fileno()] = sock
    return {"ok": True, "id": sock.fileno()}


def echo(conn_id: int, timeout: float) -> dict[str, Any]:
    sock = _held[conn_id]
    sock.settimeout(timeout)
    payload = os.urandom(16)
    try:
        sock.sendall(payload)
        answer = b""
        while len(answer) < len(payload):
            chunk = sock.recv(64)
            if not chunk:
                break
            answer += chunk
    except OSError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": answer == payload, "error": ""}


def internet_checksum(data: bytes) -> int:
    """RFC 1071, for ICMP here and for IPv4 headers in the benchmarks."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp(host: str, timeout: float) -> dict[str, Any]:
    """One ICMP or ICMPv6 echo; ok when the matching reply comes back."""
    v6 = ":" in host
    # A fresh identifier per probe: conntrack keys ICMP echoes on it, and a probe must
    # be a new flow, not an echo of an earlier one that a stateful filter still knows.
    ident = int.from_bytes(os.urandom(2), "big")
    seq = int(time.monotonic() * 1000) & 0xFFFF
    kind = 128 if v6 else 8
    body = os.urandom(8)
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    packet = header + body
    if not v6:
        packet = struct.pack("!BBHHH", kind, 0, internet_checksum(packet), ident, seq) + body
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    with socket.socket(_family(host), socket.SOCK_RAW, proto) as sock:
        sock.sendto(packet, (host, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data = sock.recv(2048)
            reply = data if v6 else data[(data[0] & 0x0F) * 4 :]
            if len(reply) >= 8:
                rtype, _, _, rid, rseq = struct.unpack("!BBHHH", reply[:8])
                if rtype == (129 if v6 else 0) and rid == ident and rseq == seq:
                    return {"ok": True}
    return {"ok": False, "error": "no echo reply"}


class Sniffer:
    """Every frame an interface receives, while it runs."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind((ifname, 0))
        self.frames: list[str] = []
        self.running = True
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while self.running:
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if ready:
                data, address = self.sock.recvfrom(65536)
                if address[2] != socket.PACKET_OUTGOING:
                    self.frames.append(data.hex())


def send_frames(ifname: str, frames: list[str]) -> dict[str, Any]:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((ifname, 0))
        for frame in frames:
            sock.send(bytes.fromhex(frame))
    return {"ok": True}


def sniff_start(ifname: str) -> dict[str, Any]:
    _sniffers[ifname] = Sniffer(ifname)
    return {"ok": True}


def sniff_wait(ifname: str, marker: str, timeout: float) -> dict[str, Any]:
    """Wait for a frame holding ``marker`` (hex); then answer every frame seen."""
    sniffer = _sniffers[ifname]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(marker in frame for frame in sniffer.frames):
            break
        time.sleep(0.02)
    sniffer.running = False
    frames = list(sniffer.frames)
    del _sniffers[ifname]
    return {"ok": any(marker in frame for frame in frames), "frames": frames}


COMMANDS: dict[str, Callable[..., dict[str, Any]]] = {
    "listen": listen,
    "connect": connect,
    "hold": hold,
    "echo": echo,
    "icmp": icmp,
    "send_frames": send_frames,
    "sniff_start": sniff_start,
    "sniff_wait": sniff_wait,
}


def main() -> None:
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        command = COMMANDS[request.pop("op")]
        try:
            answer = command(**request)
        except Exception as exc:  # answered, the test decides
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
