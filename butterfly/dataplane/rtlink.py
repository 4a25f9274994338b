"""Reading links fast: RTM_GETLINK over a raw netlink socket, decoding only what butterfly reads.

pyroute2 decodes every attribute of every link into Python objects: about
a millisecond per link on this machine kind, so a dump of a host with
10,000 vnics and 4,096 VNIs (18,000 links) took many seconds, and every
start-up, reconcile and status did at least one. This module reads the
same messages with :mod:`struct` and keeps the few attributes
:class:`~butterfly.dataplane.netlink.Link` holds, under pyroute2's names
(so the rest of butterfly cannot tell the difference).

Owns nothing but the decoding; :mod:`butterfly.dataplane.netlink` opens it
and translates its errors. A socket works in the namespace of the thread
that opened it.
"""

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Container, Iterator
from typing import Any, NamedTuple

from butterfly.dataplane.rtchange import BLOCK, Message

__all__ = ["FdbEntry", "LinkReader", "RawLink"]

RawLink = dict[str, Any]
"""``index``, ``flags`` and the attributes by pyroute2's name (nested: dicts)."""

_NETLINK_ROUTE = 0
_RTM_NEWLINK = 16
_RTM_DELLINK = 17
_RTM_GETLINK = 18
_RTM_NEWNEIGH = 28
_RTM_GETNEIGH = 30
_RTM_NEWTFILTER = 44
_RTM_GETTFILTER = 46
_ANSWERS = {
    _RTM_GETLINK: _RTM_NEWLINK,
    _RTM_GETNEIGH: _RTM_NEWNEIGH,
    _RTM_GETTFILTER: _RTM_NEWTFILTER,
}
_TCMSG = struct.Struct("=B3xiIII")
"""A tcmsg: family, link index (:data:`~butterfly.dataplane.rtchange.BLOCK` for a
shared block's filters), handle, parent (then the block's number), info (the
filter's priority in its upper half)."""
_TCA_KIND = 1
_TCA_OPTIONS = 2
_TCA_BPF_NAME = 7
_SOL_NETLINK = 270
_NETLINK_GET_STRICT_CHK = 12
_NDMSG = struct.Struct("=B3xiHBB")
_NDA_DST = 1
_NDA_LLADDR = 2
_NDA_KINDS = frozenset({_NDA_DST, _NDA_LLADDR})
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_IFLA_EXT_MASK = 29
_RTEXT_FILTER_SKIP_STATS = 1 << 3
_HEADER = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_ATTR = struct.Struct("=HH")
_NLA_TYPE_MASK = 0x3FFF
_BUFFER = 1 << 20


def _u8(data: bytes) -> int:
    return data[0]


def _u16(data: bytes) -> int:
    return int(struct.unpack_from("=H", data)[0])


def _u32(data: bytes) -> int:
    return int(struct.unpack_from("=I", data)[0])


def _s32(data: bytes) -> int:
    return int(struct.unpack_from("=i", data)[0])


def _be16(data: bytes) -> int:
    return int(struct.unpack_from("!H", data)[0])


def _text(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def _mac(data: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in data)


def _ip(data: bytes) -> str:
    return str(ipaddress.ip_address(data))


Decoder = Callable[[bytes], Any]

_VXLAN: dict[int, tuple[str, Decoder]] = {
    1: ("IFLA_VXLAN_ID", _u32),
    2: ("IFLA_VXLAN_GROUP", _ip),
    3: ("IFLA_VXLAN_LINK", _u32),
    4: ("IFLA_VXLAN_LOCAL", _ip),
    7: ("IFLA_VXLAN_LEARNING", _u8),
    15: ("IFLA_VXLAN_PORT", _be16),
    16: ("IFLA_VXLAN_GROUP6", _ip),
    17: ("IFLA_VXLAN_LOCAL6", _ip),
}
_BRIDGE: dict[int, tuple[str, Decoder]] = {
    1: ("IFLA_BR_FORWARD_DELAY", _u32),
    5: ("IFLA_BR_STP_STATE", _u32),
    9: ("IFLA_BR_GROUP_FWD_MASK", _u16),
    23: ("IFLA_BR_MCAST_SNOOPING", _u8),
    36: ("IFLA_BR_NF_CALL_IPTABLES", _u8),
    37: ("IFLA_BR_NF_CALL_IP6TABLES", _u8),
}
_BRIDGE_PORT: dict[int, tuple[str, Decoder]] = {
    8: ("IFLA_BRPORT_LEARNING", _u8),
    9: ("IFLA_BRPORT_UNICAST_FLOOD", _u8),
    32: ("IFLA_BRPORT_NEIGH_SUPPRESS", _u8),
    39: ("IFLA_BRPORT_LOCKED", _u8),
}
_KIND_DATA = {"vxlan": _VXLAN, "bridge": _BRIDGE}
_LINKINFO_KINDS = frozenset({1, 2, 4, 5})
"""IFLA_INFO_KIND, _DATA, _SLAVE_KIND, _SLAVE_DATA."""


def _attributes(
    data: bytes, offset: int, end: int, wanted: Container[int]
) -> Iterator[tuple[int, bytes]]:
    """The attributes of kinds ``wanted`` (only those are copied out: a link
    carries some fifty, among them kilobytes of IPv6 settings)."""
    unpack = _ATTR.unpack_from
    while offset + 4 <= end:
        length, kind = unpack(data, offset)
        if length < 4:
            return
        kind &= _NLA_TYPE_MASK
        if kind in wanted:
            yield kind, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def _known(data: bytes, table: dict[int, tuple[str, Decoder]]) -> dict[str, Any]:
    found = {}
    for kind, value in _attributes(data, 0, len(data), table):
        name, decode = table[kind]
        found[name] = decode(value)
    return found


def _linkinfo(data: bytes) -> dict[str, Any]:
    nested = dict(_attributes(data, 0, len(data), _LINKINFO_KINDS))
    kind = _text(nested[1]) if 1 in nested else ""
    slave_kind = _text(nested[4]) if 4 in nested else ""
    info: dict[str, Any] = {"IFLA_INFO_KIND": kind}
    if 2 in nested and kind in _KIND_DATA:
        info["IFLA_INFO_DATA"] = _known(nested[2], _KIND_DATA[kind])
    if 5 in nested and slave_kind == "bridge":
        info["IFLA_INFO_SLAVE_DATA"] = _known(nested[5], _BRIDGE_PORT)
    return info


def _stats64(data: bytes) -> dict[str, int]:
    rx_bytes, tx_bytes = struct.unpack_from("=QQ", data, 16)
    return {"rx_bytes": int(rx_bytes), "tx_bytes": int(tx_bytes)}


_LINK: dict[int, tuple[str, Decoder]] = {
    1: ("IFLA_ADDRESS", _mac),
    3: ("IFLA_IFNAME", _text),
    4: ("IFLA_MTU", _u32),
    10: ("IFLA_MASTER", _u32),
    13: ("IFLA_TXQLEN", _u32),
    18: ("IFLA_LINKINFO", _linkinfo),
    20: ("IFLA_IFALIAS", _text),
    23: ("IFLA_STATS64", _stats64),
    37: ("IFLA_LINK_NETNSID", _s32),
}
_IFNAME_ONLY = frozenset({3})
"""IFLA_IFNAME."""


class FdbEntry(NamedTuple):
    """A bridge or VXLAN forwarding entry (``bridge fdb show``)."""

    ifindex: int
    mac: str
    state: int
    flags: int
    dst: str | None
    """The remote VTEP, for a VXLAN device's entries."""


def _fdb_entry(data: bytes, offset: int, end: int) -> FdbEntry:
    _, ifindex, state, flags, _ = _NDMSG.unpack_from(data, offset)
    mac, dst = "", None
    for kind, value in _attributes(data, offset + _NDMSG.size, end, _NDA_KINDS):
        if kind == _NDA_LLADDR:
            mac = _mac(value)
        elif kind == _NDA_DST:
            dst = _ip(value)
    return FdbEntry(ifindex, mac, state, flags, dst)


def _decode(data: bytes, offset: int, end: int) -> RawLink:
    _, _, index, flags, _ = _IFINFO.unpack_from(data, offset)
    link: RawLink = {"index": index, "flags": flags}
    for kind, value in _attributes(data, offset + _IFINFO.size, end, _LINK):
        name, decode = _LINK[kind]
        link[name] = decode(value)
    return link


class LinkReader:
    """One NETLINK_ROUTE socket for reading links and sending the changes
    :mod:`butterfly.dataplane.rtchange` encodes (not thread-safe)."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        # Lets the kernel filter forwarding entries by port, as ``bridge fdb show dev``.
        self._socket.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        self._socket.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._socket.close()

    def dump(self) -> list[RawLink]:
        """Every link of the namespace (without their byte counters)."""
        mask = struct.pack("=HHI", 8, _IFLA_EXT_MASK, _RTEXT_FILTER_SKIP_STATS)
        return [
            _decode(data, offset, end)
            for data, offset, end in self._request(
                _RTM_GETLINK, _NLM_F_REQUEST | _NLM_F_DUMP, _link_header(), mask
            )
        ]

    def names(self) -> list[str]:
        """The name of every link of the namespace: what a dump costs the kernel,
        without decoding the rest of each link (tens of microseconds each)."""
        mask = struct.pack("=HHI", 8, _IFLA_EXT_MASK, _RTEXT_FILTER_SKIP_STATS)
        names = []
        for data, offset, end in self._request(
            _RTM_GETLINK, _NLM_F_REQUEST | _NLM_F_DUMP, _link_header(), mask
        ):
            for _, value in _attributes(data, offset + _IFINFO.size, end, _IFNAME_ONLY):
                names.append(_text(value))
                break
        return names

    def fdb(self, ifindex: int = 0) -> list[FdbEntry]:
        """The forwarding entries of device ``ifindex`` (a bridge port or a VXLAN
        device), or of every device (0)."""
        header = _NDMSG.pack(socket.AF_BRIDGE, ifindex, 0, 0, 0)
        return [
            _fdb_entry(data, offset, end)
            for data, offset, end in self._request(
                _RTM_GETNEIGH, _NLM_F_REQUEST | _NLM_F_DUMP, header, b""
            )
        ]

    def fdb_entry(self, message: Message) -> FdbEntry | None:
        """The forwarding entry ``message`` looks up
        (:func:`~butterfly.dataplane.rtchange.fdb_lookup`); None when there is none."""
        found = self._one(message.kind, message.flags, message.body, b"", errno.ENOENT)
        return _fdb_entry(*found) if found else None

    def get(self, name: str = "", *, index: int = 0) -> RawLink | None:
        """The link called ``name`` (or numbered ``index``), with its counters;
        None when there is none."""
        attribute = b""
        if name:
            encoded = name.encode() + b"\0"
            attribute = struct.pack("=HH", 4 + len(encoded), 3) + encoded
            attribute += b"\0" * (-len(attribute) % 4)
        header = _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        flags = _NLM_F_REQUEST | _NLM_F_ACK
        found = self._one(_RTM_GETLINK, flags, header, attribute, errno.ENODEV)
        return _decode(*found) if found else None

    def _one(
        self, kind: int, flags: int, header: bytes, attributes: bytes, missing: int
    ) -> tuple[bytes, int, int] | None:
        """The first answer of a request for one object; None when the kernel
        answers ``missing`` (its errno for "no such object")."""
        try:
            found = list(self._request(kind, flags, header, attributes))
        except OSError as exc:
            if exc.errno == missing:
                return None
            raise
        return found[0] if found else None

    def delete(self, index: int) -> None:
        """Delete link ``index`` (waits while the kernel lets go of it: ~25 ms)."""
        header = _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
        for _ in self._request(_RTM_DELLINK, _NLM_F_REQUEST | _NLM_F_ACK, header, b""):
            pass

    def change(self, message: Message) -> None:
        """Send a change (:mod:`butterfly.dataplane.rtchange`) and wait for its
        acknowledgement; OSError with the kernel's errno when refused."""
        for _ in self._request(message.kind, message.flags, message.body, b""):
            pass

    def filter_block(self, message: Message) -> int | None:
        """The shared block whose filters ``message`` dumps through a link
        (:func:`~butterfly.dataplane.rtchange.filters`): its number, 0 when the
        filters are the link's own, None when there are none."""
        block = None
        for data, offset, _ in self._request(message.kind, message.flags, message.body, b""):
            _, index, _, parent, _ = _TCMSG.unpack_from(data, offset)
            block = parent if index == BLOCK else 0
        return block

    def filters(self, message: Message) -> dict[int, str]:
        """The filters ``message`` dumps (:func:`~butterfly.dataplane.rtchange.filters`),
        by priority: the name of an eBPF program there, "" for any other filter."""
        found: dict[int, str] = {}
        for data, offset, end in self._request(message.kind, message.flags, message.body, b""):
            prio = _TCMSG.unpack_from(data, offset)[4] >> 16
            wanted = (_TCA_KIND, _TCA_OPTIONS)
            attributes = dict(_attributes(data, offset + _TCMSG.size, end, wanted))
            bpf = _text(attributes.get(_TCA_KIND, b"")) == "bpf"
            options = attributes.get(_TCA_OPTIONS, b"") if bpf else b""
            name = next(
                (_text(v) for _, v in _attributes(options, 0, len(options), (_TCA_BPF_NAME,))), ""
            )
            if name or prio not in found:
                found[prio] = name
        return found

    def _request(
        self, kind: int, flags: int, header: bytes, attributes: bytes
    ) -> Iterator[tuple[bytes, int, int]]:
        """The answers' (data, start, end) of their bodies, until done or acknowledged."""
        self._seq += 1
        body = header + attributes
        self._socket.send(_HEADER.pack(_HEADER.size + len(body), kind, flags, self._seq, 0) + body)
        answer = _ANSWERS.get(kind)
        while True:
            data = self._socket.recv(_BUFFER)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, got, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    return
                if seq == self._seq:
                    if got == _NLMSG_DONE:
                        return
                    if got == _NLMSG_ERROR:
                        code = -_s32(data[offset + _HEADER.size : offset + _HEADER.size + 4])
                        if code:
                            raise OSError(code, os.strerror(code))
                        return
                    if got == answer:
                        yield data, offset + _HEADER.size, offset + length
                offset += (length + 3) & ~3


def _link_header() -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
