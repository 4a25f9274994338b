"""A vnic's firewall sessions, and the blob ``nic_export`` carries them in.

A live migration moves a VM to another host while its connections go on;
the stateful filtering there must already know them, or the replies that
only an established connection admits are dropped. ``nic_export`` answers a
vnic's sessions (its conntrack entries, in its VNI's zone) as a blob in
``fw_data.data``; ``nic_import`` loads such a blob into the same vnic on the
destination host, before the VM resumes there.

The blob, format version 1 (:data:`FORMAT_VERSION`)::

    bytes 0-7    magic, ASCII "BFLYSESS"
    byte  8      format version (1)
    bytes 9-40   SHA-256 digest of the payload
    bytes 41-    payload: a UTF-8 JSON object
                 {"vni": 42, "nic": "vnic_1", "sessions": [SESSION, ...]}

    SESSION  {"protocol": 6, "original": TUPLE, "reply": TUPLE,
              "status": 14, "timeout": 431999,            (seconds left)
              "tcp": {"state": 3, "wscale_original": 7, "wscale_reply": 7,
                      "flags_original": 35, "flags_reply": 35}}  (TCP only)
    TUPLE    {"src": "10.0.0.1", "dst": "10.0.0.2",
              "sport": 1000, "dport": 80,                 (when the protocol has ports)
              "icmp_id": 5, "icmp_type": 8, "icmp_code": 0}  (ICMP, ICMPv6)

``status`` holds the kernel's IPS_* bits and ``tcp.state`` its TCP
conntrack state numbers (both from ``linux/netfilter/nf_conntrack_*.h``).
A reader refuses any other magic or version, a digest that does not match
(a corrupted or truncated blob) and any value out of range, naming what is
wrong. This module is pure: the data plane reads and writes the kernel.
"""

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from butterfly.errors import BadSessions, shown
from butterfly.model.addresses import canonical_ip, ip_version

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "FlowTuple",
    "Session",
    "SessionExport",
    "TcpInfo",
    "decode_sessions",
    "encode_sessions",
]

MAGIC = b"BFLYSESS"
FORMAT_VERSION = 1
_DIGEST = 32
_HEADER = len(MAGIC) + 1 + _DIGEST
_MAX_TIMEOUT = 2**32 - 1
_OPTIONAL_TUPLE_FIELDS = {
    "sport": 0xFFFF,
    "dport": 0xFFFF,
    "icmp_id": 0xFFFF,
    "icmp_type": 0xFF,
    "icmp_code": 0xFF,
}


@dataclass(frozen=True, slots=True)
class FlowTuple:
    """One direction of a session, as conntrack keys it."""

    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """What conntrack tracks of a TCP session beyond its addresses."""

    state: int
    wscale_original: int = 0
    wscale_reply: int = 0
    flags_original: int = 0
    flags_reply: int = 0


@dataclass(frozen=True, slots=True)
class Session:
    protocol: int
    original: FlowTuple
    reply: FlowTuple
    status: int
    timeout: int
    tcp: TcpInfo | None = None

    @property
    def version(self) -> int:
        """4 or 6: the IP version of its addresses."""
        return ip_version(self.original.src)

    def involves(self, ips: Iterable[str]) -> bool:
        """True when one of ``ips`` (canonical) is an end of the session."""
        ends = {self.original.src, self.original.dst, self.reply.src, self.reply.dst}
        return not ends.isdisjoint(ips)


@dataclass(frozen=True, slots=True)
class SessionExport:
    """What a blob holds: the sessions of vnic ``nic_id``, of VNI ``vni``."""

    vni: int
    nic_id: str
    sessions: tuple[Session, ...]


def _tuple_json(flow: FlowTuple) -> dict[str, Any]:
    out: dict[str, Any] = {"src": flow.src, "dst": flow.dst}
    for name in _OPTIONAL_TUPLE_FIELDS:
        value = getattr(flow, name)
        if value is not None:
            out[name] = value
    return out


def _session_json(session: Session) -> dict[str, Any]:
    out: dict[str, Any] = {
        "protocol": session.protocol,
        "original": _tuple_json(session.original),
        "reply": _tuple_json(session.reply),
        "status": session.status,
        "timeout": session.timeout,
    }
    if session.tcp is not None:
        out["tcp"] = {
            "state": session.tcp.state,
            "wscale_original": session.tcp.wscale_original,
            "wscale_reply": session.tcp.wscale_reply,
            "flags_original": session.tcp.flags_original,
            "flags_reply": session.tcp.flags_reply,
        }
    return out


def encode_sessions(export: SessionExport) -> bytes:
    """The blob of ``export`` (format version 1)."""
    payload = json.dumps(
        {
            "vni": export.vni,
            "nic": export.nic_id,
            "sessions": [_session_json(session) for session in export.sessions],
        },
        separators=(",", ":"),
    ).encode()
    return MAGIC + bytes([FORMAT_VERSION]) + hashlib.sha256(payload).digest() + payload


def decode_sessions(data: bytes) -> SessionExport:
    """The sessions a blob holds; BadSessions naming what is wrong with it."""
    if len(data) < _HEADER:
        raise BadSessions(f"the blob is truncated: {len(data)} bytes, shorter than its header")
    if data[: len(MAGIC)] != MAGIC:
        raise BadSessions("the blob is not a butterfly session export (wrong magic)")
    version = data[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise BadSessions(
            f"the blob is format version {version}; this daemon reads version {FORMAT_VERSION}"
        )
    digest, payload = data[len(MAGIC) + 1 : _HEADER], data[_HEADER:]
    if hashlib.sha256(payload).digest() != digest:
        raise BadSessions("the blob is corrupted or truncated (its digest does not match)")
    try:
        document = json.loads(payload)
    except ValueError as error:
        raise BadSessions(f"the blob's payload is not JSON: {error}") from error
    return _export(document)


def _field(obj: Any, name: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise BadSessions(f"{where}: {name} is missing")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise BadSessions(f"{where}: {name} is not {kind.__name__}")
    return value


def _number(obj: Any, name: str, high: int, where: str) -> int:
    value: int = _field(obj, name, int, where)
    if not 0 <= value <= high:
        raise BadSessions(f"{where}: {name} {value} is out of range 0-{high}")
    return value


def _export(document: Any) -> SessionExport:
    vni = _number(document, "vni", (1 << 24) - 1, "blob")
    nic_id: str = _field(document, "nic", str, "blob")
    items: list[Any] = _field(document, "sessions", list, "blob")
    sessions = tuple(_session(item, f"session {index}") for index, item in enumerate(items))
    return SessionExport(vni=vni, nic_id=nic_id, sessions=sessions)


def _session(item: Any, where: str) -> Session:
    original = _tuple(_field(item, "original", dict, where), f"{where} original")
    reply = _tuple(_field(item, "reply", dict, where), f"{where} reply")
    families = {
        ip_version(address) for address in (original.src, original.dst, reply.src, reply.dst)
    }
    if len(families) != 1:
        raise BadSessions(f"{where}: its addresses mix IPv4 and IPv6")
    protocol = _number(item, "protocol", 255, where)
    tcp = None
    if "tcp" in item:
        info = _field(item, "tcp", dict, where)
        tcp = TcpInfo(
            state=_number(info, "state", 0xFF, f"{where} tcp"),
            wscale_original=_number(info, "wscale_original", 0xFF, f"{where} tcp"),
            wscale_reply=_number(info, "wscale_reply", 0xFF, f"{where} tcp"),
            flags_original=_number(info, "flags_original", 0xFF, f"{where} tcp"),
            flags_reply=_number(info, "flags_reply", 0xFF, f"{where} tcp"),
        )
    return Session(
        protocol=protocol,
        original=original,
        reply=reply,
        status=_number(item, "status", 0xFFFFFFFF, where),
        timeout=_number(item, "timeout", _MAX_TIMEOUT, where),
        tcp=tcp,
    )


def _tuple(obj: dict[str, Any], where: str) -> FlowTuple:
    addresses = []
    for name in ("src", "dst"):
        text: str = _field(obj, name, str, where)
        canonical = canonical_ip(text)
        if canonical is None:
            raise BadSessions(f"{where}: {name} {shown(text)} is not an IP address")
        addresses.append(canonical)
    optional = {
        name: _number(obj, name, high, where)
        for name, high in _OPTIONAL_TUPLE_FIELDS.items()
        if name in obj
    }
    return FlowTuple(addresses[0], addresses[1], **optional)
