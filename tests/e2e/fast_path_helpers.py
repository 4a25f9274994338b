"""What the fast path's end-to-end tests share: flows run from a VM, raw frames sent
from one VM and looked for in another, and which path a frame took, told by the
program's own counters (``butterfly status``) and an nftables counter of the test in
the host's forward hook, which only frames crossing a bridge reach."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from butterfly.dataplane.naming import tap_name
from butterfly_lab.lab import Host, Vm

__all__ = [
    "FLOW",
    "ONE_WAY_PORT",
    "PORT",
    "TCP_FLOW",
    "TCP_PORT",
    "Switch",
    "add_probe",
    "one_way_batch",
    "one_way_group",
    "udp_frame",
]

PORT = 7000
ONE_WAY_PORT = 7100
"""Opened to srv only by :func:`one_way_group`; nothing listens, so flows to it
stay unreplied in conntrack (the ICMP errors srv answers with are related, not
replies)."""
PROBE_TABLE = "s5fastprobe"

FLOW = """
import socket, sys, time
src, dst = sys.argv[1], sys.argv[3]
sport, dport, count = int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
pause = float(sys.argv[6]) if len(sys.argv) > 6 else 0
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, sport))
s.settimeout(0.3)
got = 0
for i in range(count):
    payload = b"flow %d" % i
    s.sendto(payload, (dst, dport))
    try:
        got += s.recv(100) == payload
    except OSError:
        pass
    time.sleep(pause)
print(got)
"""
"""A UDP flow on one 5-tuple: ``count`` datagrams, each waiting for its echo."""

TCP_FLOW = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
got = 0
for i in range(int(sys.argv[3])):
    payload = b"segment %03d" % i
    s.sendall(payload)
    answer = b""
    while len(answer) < len(payload):
        chunk = s.recv(64)
        if not chunk:
            break
        answer += chunk
    got += answer == payload
s.shutdown(socket.SHUT_WR)
print(got, int(s.recv(64) == b""))
"""
"""A TCP connection: ``count`` echoes, then a close that the server's close answers."""
TCP_PORT = 8080


class Switch:
    def __init__(self, mode: str, host: Host, vms: dict[str, Vm]) -> None:
        self.mode = mode
        self.host = host
        self.vms = vms

    @property
    def fast(self) -> bool:
        return self.mode == "ebpf"

    def flow(self, vm: str, src: str, sport: int, dst: str, count: int) -> int:
        """Echoes ``vm`` got back for ``count`` datagrams from (src, sport) to dst:PORT."""
        out = self.vms[vm].exec(
            sys.executable, "-c", FLOW, src, str(sport), dst, str(PORT), str(count)
        )
        return int(out.strip())

    def tcp_flow(self, vm: str, dst: str, count: int) -> tuple[int, bool]:
        """(echoes, closed cleanly) of a TCP connection from ``vm`` to dst:TCP_PORT."""
        out = self.vms[vm].exec(sys.executable, "-c", TCP_FLOW, dst, str(TCP_PORT), str(count))
        got, closed = out.split()
        return int(got), closed == "1"

    def forwarded(self, vnic_id: str) -> int:
        """Frames the fast path forwarded from ``vnic_id`` (0 when it does not serve it)."""
        graph = self.host.cli("status")
        for line in graph.splitlines():
            if line.strip().startswith(f'"port:{vnic_id}"'):
                found = re.search(r"fast path: (\d+) frames", line)
                return int(found.group(1)) if found else 0
        raise AssertionError(f"no port {vnic_id} in the status graph:\n{graph}")

    def tunneled(self, vni: int) -> tuple[int, bool]:
        """(frames the fast path forwarded from other hosts into ``vni``, whether it
        serves the VNI's VXLAN device), from the device's node in the graph."""
        graph = self.host.cli("status")
        for line in graph.splitlines():
            if line.strip().startswith(f'"vxlan:{vni}"'):
                found = re.search(r"fast path: to and from other hosts; (\d+) frames", line)
                return (int(found.group(1)), True) if found else (0, False)
        raise AssertionError(f"no VXLAN device of {vni} in the status graph:\n{graph}")

    def twin_only(self, frame: Ether) -> tuple[set[str], bool]:
        """(what of ``frame`` tcli's twin server tsrv gets, whether srv, the
        server of the other VNI with the same MAC and address, got it too)."""
        srv = self.vms["srv"]
        assert srv.agent.call("sniff_start", ifname=tap_name("srv"))["ok"]
        seen = self.seen("tcli", "tsrv", {"twin": frame}, frame)
        capture = srv.agent.call(
            "sniff_wait", ifname=tap_name("srv"), marker=b"twin".hex(), timeout=1
        )
        return seen, bool(capture["ok"])

    def bridged(self) -> int:
        """Frames to or from UDP port PORT that crossed a bridge (the slow path)."""
        listing = json.loads(self.host.exec("nft", "-j", "list", "table", "inet", PROBE_TABLE))
        return sum(
            item["rule"]["expr"][-1]["counter"]["packets"]
            for item in listing["nftables"]
            if "rule" in item
        )

    def seen(self, sender: str, receiver: str, frames: dict[str, Ether], last: Ether) -> set[str]:
        """Which of the raw ``frames`` (by marker) ``sender`` sends reach ``receiver``;
        a legitimate frame ``last``, sent after them, closes the window."""
        rx = self.vms[receiver]
        assert rx.agent.call("sniff_start", ifname=tap_name(receiver))["ok"]
        marked = {name: bytes(frame / Raw(load=name.encode())) for name, frame in frames.items()}
        wire = [frame.hex() for frame in [*marked.values(), bytes(last / Raw(b"last-frame"))]]
        self.vms[sender].agent.call("send_frames", ifname=tap_name(sender), frames=wire)
        capture = rx.agent.call(
            "sniff_wait", ifname=tap_name(receiver), marker=b"last-frame".hex(), timeout=5
        )
        assert capture["ok"], "the legitimate frame never arrived"
        return {
            name for name in marked if any(name.encode().hex() in got for got in capture["frames"])
        }


def udp_frame(src_mac: str, src: str, sport: int, dst_mac: str, dst: str) -> Ether:
    return Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / UDP(sport=sport, dport=PORT)


@contextmanager
def one_way_group(host: Host, member: str) -> Iterator[None]:
    """``host``'s srv also uses group ``oneway``: UDP ONE_WAY_PORT in from group
    ``clients``, whose member is ``member``; taken away after."""
    host.cli(
        "sg", "add", "oneway", "clients",
        "+", "sg", "member", "add", "clients", member,
        "+", "sg", "rule", "add", "oneway", "--ip-proto", "udp", "--port", str(ONE_WAY_PORT),
        "--sg-members", "clients",
    )  # fmt: skip
    host.cli("nic", "sg", "set", "srv", "udp", "oneway")
    try:
        yield
    finally:
        host.cli("nic", "sg", "set", "srv", "udp")
        host.cli("sg", "del", "oneway", "clients")


def one_way_batch(
    switch: Switch,
    sport: int,
    tag: str,
    count: int = 5,
    *,
    src: tuple[str, str],
    dst: tuple[str, str],
) -> set[str]:
    """Which of ``count`` datagrams of one unreplied flow from cli (``src``: MAC,
    address) to srv's (``dst``) ONE_WAY_PORT reach srv; a datagram of cli's to
    srv's open port, from the next source port, closes the window."""
    frames = {
        f"{tag}-{i}": Ether(src=src[0], dst=dst[0])
        / IP(src=src[1], dst=dst[1])
        / UDP(sport=sport, dport=ONE_WAY_PORT)
        for i in range(count)
    }
    return switch.seen("cli", "srv", frames, udp_frame(src[0], src[1], sport + 1, *dst))


def add_probe(host: Host) -> None:
    """The nftables counter :meth:`Switch.bridged` reads, in ``host``'s forward hook."""
    host.exec("nft", "add", "table", "inet", PROBE_TABLE)
    host.exec(
        "nft", "add", "chain", "inet", PROBE_TABLE, "probe",
        "{ type filter hook forward priority 10; }",
    )  # fmt: skip
    for direction in ("dport", "sport"):
        host.exec(
            "nft", "add", "rule", "inet", PROBE_TABLE, "probe", "udp", direction, str(PORT),
            "counter",
        )  # fmt: skip
