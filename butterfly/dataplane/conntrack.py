"""Conntrack entries of a zone, read and written over ctnetlink (pyroute2).

Owns the kernel side of ``nic_export`` / ``nic_import``: the sessions of a
vnic are the entries of its VNI's conntrack zone that have one of its
addresses at an end (no NAT here, so the reply tuple is the original one
reversed). Loading is atomic: entries already there are left as they are,
and if the kernel refuses one, the entries this call added are deleted
again before DataplaneError is raised. pyroute2's NetlinkError never leaves
this module.
"""

import errno
import logging
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from pyroute2 import NFCTSocket
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from butterfly.errors import DataplaneError
from butterfly.model.addresses import canonical_ip, ip_version
from butterfly.model.sessions import FlowTuple, Session, TcpInfo

__all__ = ["LOADED_STATUS", "Conntrack"]

log = logging.getLogger(__name__)

IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
LOADED_STATUS = IPS_SEEN_REPLY | IPS_ASSURED
"""The status bits a loaded entry takes from the export (the kernel owns the others)."""

_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_ICMP = {socket.IPPROTO_ICMP: "CTA_PROTO_ICMP", socket.IPPROTO_ICMPV6: "CTA_PROTO_ICMPV6"}
_TCP_STATE = "CTA_PROTOINFO_TCP_STATE"


class Conntrack:
    """The conntrack table of the network namespace it is created in."""

    def __init__(self) -> None:
        self._sockets: dict[int, Any] = {}

    def _socket(self, family: int) -> Any:
        if family not in self._sockets:
            try:
                self._sockets[family] = NFCTSocket(nfgen_family=family)
            except (OSError, NetlinkError) as error:
                raise DataplaneError(f"conntrack: cannot open ctnetlink: {error}") from error
        return self._sockets[family]

    def sessions(self, zone: int, ips: Iterable[str]) -> tuple[Session, ...]:
        """The entries of ``zone`` with one of ``ips`` at an end."""
        wanted = set(ips)
        found: list[Session] = []
        for version, family in _FAMILIES.items():
            if not any(ip_version(ip) == version for ip in wanted):
                continue
            try:
                entries = list(self._socket(family).dump(zone=zone))
            except NetlinkError as error:
                raise DataplaneError(f"conntrack: cannot list zone {zone}: {error}") from error
            for entry in entries:
                if (entry.get_attr("CTA_ZONE") or 0) != zone:  # the kernel omits zone 0
                    continue
                session = _session(entry)
                if session is not None and session.involves(wanted):
                    found.append(session)
        return tuple(found)

    def load(self, zone: int, sessions: Sequence[Session]) -> int:
        """Add ``sessions`` to ``zone``; how many were new. All or nothing."""
        added: list[Session] = []
        try:
            for session in sessions:
                if self._add(zone, session):
                    added.append(session)
        except DataplaneError:
            for session in reversed(added):
                self._delete(zone, session)
            raise
        return len(added)

    def _add(self, zone: int, session: Session) -> bool:
        family = _FAMILIES[session.version]
        arguments: dict[str, Any] = {
            "tuple_orig": _attr_tuple(family, session.protocol, session.original),
            "tuple_reply": _attr_tuple(family, session.protocol, session.reply),
            "zone": zone,
            "timeout": session.timeout,
            # An entry made over ctnetlink is confirmed at once; a status
            # without that bit asks to clear it, which the kernel refuses (EBUSY).
            "status": session.status & LOADED_STATUS | IPS_CONFIRMED,
        }
        if session.tcp is not None:
            arguments["protoinfo"] = _protoinfo(session.tcp)
        try:
            self._socket(family).entry("add", **arguments)
        except NetlinkError as error:
            if error.code == errno.EEXIST:
                return False
            raise DataplaneError(
                f"conntrack: zone {zone}: the kernel refused session {_shown(session)}: {error}"
            ) from error
        return True

    def _delete(self, zone: int, session: Session) -> None:
        family = _FAMILIES[session.version]
        try:
            self._socket(family).entry(
                "del", tuple_orig=_attr_tuple(family, session.protocol, session.original), zone=zone
            )
        except NetlinkError as error:
            log.warning("conntrack: zone %d: cannot undo %s: %s", zone, _shown(session), error)

    def close(self) -> None:
        for one in self._sockets.values():
            one.close()
        self._sockets.clear()


def _shown(session: Session) -> str:
    flow = session.original
    return f"protocol {session.protocol} {flow.src} -> {flow.dst}"


def _attr_tuple(family: int, protocol: int, flow: FlowTuple) -> NFCTAttrTuple:
    return NFCTAttrTuple(
        family=family,
        saddr=flow.src,
        daddr=flow.dst,
        proto=protocol,
        sport=flow.sport,
        dport=flow.dport,
        icmp_id=flow.icmp_id,
        icmp_type=flow.icmp_type,
        icmp_code=flow.icmp_code,
    )


def _protoinfo(tcp: TcpInfo) -> dict[str, Any]:
    """The TCP state, window scales and flags (as (flags, mask): set them all)."""
    return {
        "attrs": [
            (
                "CTA_PROTOINFO_TCP",
                {
                    "attrs": [
                        (_TCP_STATE, tcp.state),
                        ("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL", tcp.wscale_original),
                        ("CTA_PROTOINFO_TCP_WSCALE_REPLY", tcp.wscale_reply),
                        ("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", (tcp.flags_original, 0xFF)),
                        ("CTA_PROTOINFO_TCP_FLAGS_REPLY", (tcp.flags_reply, 0xFF)),
                    ]
                },
            )
        ]
    }


def _flow(nla: Any) -> FlowTuple | None:
    ip = nla.get_attr("CTA_TUPLE_IP")
    proto = nla.get_attr("CTA_TUPLE_PROTO")
    if ip is None or proto is None:
        return None
    src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
    dst = ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST")
    src, dst = canonical_ip(src or ""), canonical_ip(dst or "")
    if src is None or dst is None:
        return None
    icmp = _ICMP.get(proto.get_attr("CTA_PROTO_NUM"))
    if icmp is not None:
        return FlowTuple(
            src,
            dst,
            icmp_id=proto.get_attr(f"{icmp}_ID"),
            icmp_type=proto.get_attr(f"{icmp}_TYPE"),
            icmp_code=proto.get_attr(f"{icmp}_CODE"),
        )
    return FlowTuple(
        src,
        dst,
        sport=proto.get_attr("CTA_PROTO_SRC_PORT"),
        dport=proto.get_attr("CTA_PROTO_DST_PORT"),
    )


def _session(entry: Any) -> Session | None:
    """A dumped entry as a Session; None for what cannot be moved (no tuples)."""
    original_nla = entry.get_attr("CTA_TUPLE_ORIG")
    reply_nla = entry.get_attr("CTA_TUPLE_REPLY")
    if original_nla is None or reply_nla is None:
        return None
    original, reply = _flow(original_nla), _flow(reply_nla)
    if original is None or reply is None:
        return None
    tcp = None
    protoinfo = entry.get_attr("CTA_PROTOINFO")
    info = protoinfo.get_attr("CTA_PROTOINFO_TCP") if protoinfo is not None else None
    if info is not None:
        tcp = TcpInfo(
            state=info.get_attr(_TCP_STATE) or 0,
            wscale_original=info.get_attr("CTA_PROTOINFO_TCP_WSCALE_ORIGINAL") or 0,
            wscale_reply=info.get_attr("CTA_PROTOINFO_TCP_WSCALE_REPLY") or 0,
            flags_original=(info.get_attr("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL") or (0, 0))[0],
            flags_reply=(info.get_attr("CTA_PROTOINFO_TCP_FLAGS_REPLY") or (0, 0))[0],
        )
    return Session(
        protocol=original_nla.get_attr("CTA_TUPLE_PROTO").get_attr("CTA_PROTO_NUM"),
        original=original,
        reply=reply,
        status=entry.get_attr("CTA_STATUS") or 0,
        timeout=entry.get_attr("CTA_TIMEOUT") or 0,
        tcp=tcp,
    )
