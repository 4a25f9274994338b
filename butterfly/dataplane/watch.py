"""Noticing what another actor changed in butterfly's kernel objects.

Owns :class:`KernelWatch`: two netlink sockets subscribed to the kernel's
notifications (rtnetlink's link and neighbour groups; nfnetlink's nftables
group, what ``nft monitor`` reads), decoded here with ``struct`` so that
they are plain file descriptors a poll loop can wait on, with no thread and
no event loop of their own. :meth:`KernelWatch.drain` turns what arrived
into one line per foreign change ("bf-a: mtu 1450 -> 1400", "nftables:
delete table inet butterfly by nft (pid 4242)"); it knows nothing of the
desired state: a change is anything that moves one of butterfly's objects
away from how butterfly last left it.

Telling butterfly's own changes from the others':

- nftables: every transaction ends with a NEWGEN notification naming the
  thread that committed it; one of this process's threads is butterfly.
- links, forwarding entries, a port's qdisc and the guard's tc blocks: the kernel
  sends a change's notifications before it acknowledges the request, so
  once a data plane call returned, its echo is already queued; the caller
  drains then and names the links its own calls touched
  (:meth:`~butterfly.dataplane.netlink.Netlink.take_touched`).
  A foreign change to one of those very links during that very call is
  taken for butterfly's own (a window of one request, on one link).

A socket that overflowed lost notifications: that is reported as a change
(the caller then repairs everything, which is what it would do anyway).
Must not import the model: it watches kernel objects, not vnics.
"""

import errno
import os
import socket
import struct
from collections.abc import Container, Iterable
from dataclasses import dataclass, replace

from butterfly.dataplane.guard import ANCHORS, GuardKind
from butterfly.dataplane.kernel_errors import explain
from butterfly.dataplane.naming import (
    LINK_ALIAS,
    TABLE,
    VXLAN_PREFIX,
    is_butterfly_link,
    is_butterfly_name,
    vni_of,
)
from butterfly.dataplane.netlink import Link
from butterfly.dataplane.rtchange import BLOCK
from butterfly.errors import DataplaneError

__all__ = ["Change", "KernelWatch", "LinkState", "Scope"]

_NETLINK_ROUTE = 0
_NETLINK_NETFILTER = 12
_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_RTMGRP_LINK = 0x1
_RTMGRP_NEIGH = 0x4
_RTMGRP_TC = 0x8
_NFNLGRP_NFTABLES = 7
_RCVBUF = 8 * 1024 * 1024

_NLMSG_HDR = struct.Struct("=IHHII")
_NLA_HDR = struct.Struct("=HH")
_IFINFO = struct.Struct("=BxHiII")
_LINK_HEADER = struct.Struct(f"={_NLMSG_HDR.size}xBxxxi")
"""A link message's family and index, read past its netlink header."""
_NDMSG = struct.Struct("=BxxxiHBB")
_TCMSG = struct.Struct("=Bxxxi4xI")
"""A tcmsg's family, link index and parent (a shared block's number, for :data:`BLOCK`)."""
_NLMSG_ERROR = 2
_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWNEIGH, _RTM_DELNEIGH = 16, 17, 28, 29
_RTM_TC = {37: "qdisc deleted", 44: "tc filter added", 45: "tc filter deleted"}
"""Changes of a port's qdisc (its binding to the guard's blocks) and of the
blocks' filters (a new clsact is harmless)."""
_GUARD_BLOCKS = frozenset(number for kind in GuardKind for number in kind.blocks)
_AF_BRIDGE = 7
_IFF_UP = 0x1
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_MASTER = 1, 3, 4, 10
_IFLA_PROTINFO, _IFLA_LINKINFO, _IFLA_IFALIAS = 12, 18, 20
_IFLA_INFO_SLAVE_DATA = 5
_BRPORT_FLAGS = {8: "learning", 9: "unicast flooding", 39: "locking"}
"""IFLA_BRPORT_LEARNING, _UNICAST_FLOOD, _LOCKED: what the data plane sets."""
_NDA_DST, _NDA_LLADDR = 1, 2
_NUD_NOARP, _NUD_PERMANENT = 0x40, 0x80
_NTF_EXT_LEARNED = 0x10
"""An entry another program (FRR's zebra) learned: never ours to repair."""
_ZERO_MAC = "00:00:00:00:00:00"

_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_NEWGEN = 15
_NFT_VERBS = {
    0: "add table",
    2: "delete table",
    3: "add chain",
    5: "delete chain",
    6: "add rule to",
    8: "delete rule of",
    9: "add set",
    11: "delete set",
    12: "add elements to",
    14: "delete elements of",
    18: "add counter",
    20: "delete counter",
}
_NFT_NAMED = {3: 3, 5: 3, 6: 2, 8: 2, 9: 2, 11: 2, 12: 2, 14: 2, 18: 2, 20: 2}
"""Message type -> the attribute naming the chain or set (1 is always the table)."""
_NFPROTO = {1: "inet", 5: "netdev", 7: "bridge"}
"""Families of butterfly's tables (netdev: the sniffing copies)."""
_SHOWN = 4
"""Changes of one nftables transaction shown before "and N more"."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a repair must look at: a whole reconcile costs seconds with
    thousands of vnics, the objects a change names far less."""

    links: frozenset[str] = frozenset()
    """Links by name (before and after a rename): their vnic, or their VNI."""
    tables: bool = False
    """butterfly's nftables tables."""
    everything: bool = False

    def __or__(self, other: "Scope") -> "Scope":
        return Scope(
            self.links | other.links,
            self.tables or other.tables,
            self.everything or other.everything,
        )


NFTABLES, LINK, PORT_FLAGS, FORWARDING_ENTRY, PORT_GUARD, LOST = KINDS = (
    "nftables",
    "link",
    "port_flags",
    "forwarding_entry",
    "port_guard",
    "notifications_lost",
)
"""What a change was made to, as the metrics count them: butterfly's nftables
objects; a link (deleted, renamed, MTU, master, up or down, appeared); a
bridge port's flags; a static or flooding forwarding entry; a port guard's
tc qdisc or filter; or unknown (notifications lost, the watch unreadable)."""


@dataclass(frozen=True, slots=True)
class Change:
    """One foreign change: a line for the log, and what to repair."""

    what: str
    scope: Scope
    kind: str
    """One of :data:`KINDS`."""


def _on(kind: str, what: str, *links: str) -> Change:
    return Change(what, Scope(links=frozenset(links)), kind)


@dataclass(frozen=True, slots=True)
class LinkState:
    """What of a link butterfly sets, so a notification that changes none of
    it (carrier, statistics, a guest attaching) is not a change."""

    name: str
    mtu: int | None
    master: int | None
    up: bool
    port: tuple[bool, bool, bool] | None
    """learning, unicast flooding, locked; None when not a bridge port."""

    @classmethod
    def of(cls, link: Link) -> "LinkState":
        port = None
        if link.port:
            port = (
                bool(link.port.get("IFLA_BRPORT_LEARNING", 1)),
                bool(link.port.get("IFLA_BRPORT_UNICAST_FLOOD", 1)),
                bool(link.port.get("IFLA_BRPORT_LOCKED", 0)),
            )
        return cls(link.name, link.mtu, link.master, link.up, port)


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    found = {}
    while offset + _NLA_HDR.size <= len(data):
        length, kind = _NLA_HDR.unpack_from(data, offset)
        if length < _NLA_HDR.size:
            break
        found[kind & 0x3FFF] = data[offset + _NLA_HDR.size : offset + length]
        offset += (length + 3) & ~3
    return found


def _text(value: bytes | None) -> str | None:
    return value.split(b"\0", 1)[0].decode(errors="replace") if value is not None else None


def _u32(value: bytes | None) -> int | None:
    return struct.unpack("=I", value[:4])[0] if value is not None and len(value) >= 4 else None


def _mac(value: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in value) if value else "?"


def _port_flags(nested: bytes | None) -> tuple[bool, bool, bool] | None:
    if nested is None:
        return None
    attrs = _attrs(nested)
    defaults = {8: True, 9: True, 39: False}
    return tuple(bool(attrs[k][0]) if attrs.get(k) else defaults[k] for k in _BRPORT_FLAGS)  # type: ignore[return-value]


def _open(protocol: int, groups: int) -> socket.socket:
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, protocol
    )
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, _RCVBUF)  # SO_RCVBUFFORCE (root)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


class KernelWatch:
    """Notifications about butterfly's links, forwarding entries and nftables
    tables, in the network namespace of the thread that builds it."""

    def __init__(
        self,
        links: Iterable[Link] | None,
        *,
        evpn: bool = False,
        local_macs: Container[tuple[int, str]] = frozenset(),
    ) -> None:
        """``evpn``: FRR owns the VXLAN devices' entries (flooding and remote
        MACs), so their changes are not drift, except FRR withdrawing one of
        ``local_macs`` ((VNI, MAC) of vnics with a port here), which gives
        that MAC back to its port. ``links`` None: :meth:`prime` comes later
        (from a reconcile's own dump of every link, seconds on a big host);
        until then notifications are dropped, since that reconcile covers them."""
        try:
            self._rtnl = _open(_NETLINK_ROUTE, _RTMGRP_LINK | _RTMGRP_NEIGH | _RTMGRP_TC)
            try:
                self._nft = _open(_NETLINK_NETFILTER, 0)
                self._nft.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NFNLGRP_NFTABLES)
            except BaseException:
                self._rtnl.close()
                raise
        except OSError as exc:
            raise DataplaneError(explain("watching the kernel", exc.errno)) from exc
        self._evpn = evpn
        self._local_macs = local_macs
        self._links: dict[int, LinkState] = {}
        self._pending_nft: list[str] = []
        self._primed = False
        if links is not None:
            self.prime(links)

    def prime(self, links: Iterable[Link]) -> None:
        """Start again from these links (a dump taken after a repair)."""
        self._primed = True
        self._links = {
            link.index: LinkState.of(link)
            for link in links
            if is_butterfly_link(link.name, link.alias)
        }

    def filenos(self) -> tuple[int, int]:
        return self._rtnl.fileno(), self._nft.fileno()

    def close(self) -> None:
        self._rtnl.close()
        self._nft.close()

    def drain(self, own_links: set[int] | frozenset[int] = frozenset()) -> list[Change]:
        """Read every queued notification; the foreign changes, one line each.

        Notifications about ``own_links`` (the links butterfly just changed)
        only update what is known of them.
        """
        # A bridge follows its ports (its MTU, its carrier): changing a port
        # changes its bridge, which the kernel reports as the bridge's change.
        own = set(own_links)
        own |= {known.master for i in own_links if (known := self._links.get(i)) and known.master}
        changes: list[Change] = []
        latest: dict[tuple[int, int], bytes] = {}
        """The last link message of each of butterfly's own links (by family and
        index): only their final state is learned, and a request announces
        each of its links five to ten times."""
        for data in self._read(self._rtnl, changes, "links"):
            if not self._primed:
                continue
            kind = _NLMSG_HDR.unpack_from(data)[1]
            if kind in (_RTM_NEWLINK, _RTM_DELLINK) and len(data) >= _LINK_HEADER.size:
                family, index = _LINK_HEADER.unpack_from(data)
                if index in own and kind == _RTM_NEWLINK:
                    latest.pop((family, index), None)
                    latest[(family, index)] = data
                    continue
                # What came before a deletion (of the link, or of it as a port) is moot.
                for stale in (family,) if family == _AF_BRIDGE else (family, _AF_BRIDGE):
                    latest.pop((stale, index), None)
            self._route_message(data, own, changes)
        for data in latest.values():
            self._route_message(data, own, changes)
        for data in self._read(self._nft, changes, "nftables"):
            if self._primed:
                self._nft_message(data, changes)
        return changes if self._primed else []

    @staticmethod
    def _read(sock: socket.socket, changes: list[Change], what: str) -> Iterable[bytes]:
        while True:
            try:
                buffer = sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    lost = f"{what}: notifications lost (socket overflow)"
                    changes.append(Change(lost, Scope(everything=True), LOST))
                    continue
                raise DataplaneError(f"watching the kernel: {exc.strerror}") from exc
            offset = 0
            while offset + _NLMSG_HDR.size <= len(buffer):
                length = _NLMSG_HDR.unpack_from(buffer, offset)[0]
                if length < _NLMSG_HDR.size:
                    break
                yield buffer[offset : offset + length]
                offset += (length + 3) & ~3

    # links and forwarding entries

    def _route_message(
        self, data: bytes, own: set[int] | frozenset[int], out: list[Change]
    ) -> None:
        kind = _NLMSG_HDR.unpack_from(data)[1]
        body = data[_NLMSG_HDR.size :]
        if kind in (_RTM_NEWLINK, _RTM_DELLINK) and len(body) >= _IFINFO.size:
            self._link_message(kind, body, own, out)
        elif kind in (_RTM_NEWNEIGH, _RTM_DELNEIGH) and len(body) >= _NDMSG.size:
            self._neigh_message(kind, body, own, out)
        elif kind in _RTM_TC and len(body) >= _TCMSG.size:
            _family, index, parent = _TCMSG.unpack_from(body)
            if index == BLOCK and parent in _GUARD_BLOCKS and BLOCK not in own:
                out.append(_on(PORT_GUARD, f"tc block {parent}: {_RTM_TC[kind]}", *ANCHORS))
            elif index in self._links and index not in own:
                name = self._links[index].name
                out.append(_on(PORT_GUARD, f"{name}: {_RTM_TC[kind]}", name))

    def _link_message(
        self, kind: int, body: bytes, own: set[int] | frozenset[int], out: list[Change]
    ) -> None:
        family, _type, index, flags, _change = _IFINFO.unpack_from(body)
        attrs = _attrs(body, _IFINFO.size)
        known = self._links.get(index)
        name = _text(attrs.get(_IFLA_IFNAME)) or (known.name if known else f"#{index}")
        alias = _text(attrs.get(_IFLA_IFALIAS))
        # A link butterfly just made: its alias comes in a second change, which the
        # kernel announces only for a link that is up (not the guard's anchors).
        if known is None and not (
            is_butterfly_link(name, alias)
            or (alias or "").startswith(LINK_ALIAS + " ")
            or (index in own and is_butterfly_name(name))
        ):
            return
        if family == _AF_BRIDGE:
            if known is None:
                return
            if kind == _RTM_DELLINK:
                now = replace(known, master=None, port=None)
            else:
                now = replace(
                    known,
                    master=_u32(attrs.get(_IFLA_MASTER)),
                    port=_port_flags(attrs.get(_IFLA_PROTINFO)) or known.port,
                )
        elif kind == _RTM_DELLINK:
            self._links.pop(index, None)
            if index not in own and known is not None:
                out.append(_on(LINK, f"{known.name}: deleted", known.name))
            return
        else:
            info = _attrs(attrs.get(_IFLA_LINKINFO, b""))
            now = LinkState(
                name=name,
                mtu=_u32(attrs.get(_IFLA_MTU)),
                master=_u32(attrs.get(_IFLA_MASTER)),
                up=bool(flags & _IFF_UP),
                port=_port_flags(info.get(_IFLA_INFO_SLAVE_DATA)),
            )
        self._links[index] = now
        if index in own or now == known:
            return
        if known is None:
            out.append(Change(f"{name}: appeared", Scope(everything=True), LINK))
        else:
            out.extend(
                _on(kind, line, known.name, now.name)
                for kind, line in self._differences(known, now)
            )

    def _differences(self, before: LinkState, after: LinkState) -> list[tuple[str, str]]:
        """(kind, line) of each difference."""
        name = before.name
        found = []
        if after.name != before.name:
            found.append((LINK, f"{name}: renamed to {after.name}"))
        if after.mtu != before.mtu:
            found.append((LINK, f"{name}: mtu {before.mtu} -> {after.mtu}"))
        if after.master != before.master:
            master = f"{self._name(before.master)} -> {self._name(after.master)}"
            found.append((LINK, f"{name}: master {master}"))
        if after.up != before.up:
            found.append((LINK, f"{name}: {'up' if after.up else 'down'}"))
        if after.port != before.port and before.port is not None and after.port is not None:
            for what, old, new in zip(_BRPORT_FLAGS.values(), before.port, after.port, strict=True):
                if old != new:
                    found.append((PORT_FLAGS, f"{name}: {what} {'on' if new else 'off'}"))
        return found

    def _name(self, index: int | None) -> str:
        if index is None:
            return "none"
        known = self._links.get(index)
        return known.name if known else f"#{index}"

    def _neigh_message(
        self, kind: int, body: bytes, own: set[int] | frozenset[int], out: list[Change]
    ) -> None:
        family, index, state, flags, _type = _NDMSG.unpack_from(body)
        if family != _AF_BRIDGE or index in own or index not in self._links:
            return
        attrs = _attrs(body, _NDMSG.size)
        mac = _mac(attrs.get(_NDA_LLADDR))
        port = self._links[index].name
        removed = kind == _RTM_DELNEIGH
        if self._evpn and port.startswith(VXLAN_PREFIX):
            # Every entry of a VXLAN device is zebra's (it adds a remote MAC as
            # a static one, then marks it extern_learn).
            if removed and _NDA_DST not in attrs and (vni_of(port), mac) in self._local_macs:
                out.append(_on(FORWARDING_ENTRY, f"{port}: FRR withdrew {mac} (a vnic's)", port))
            return
        if flags & _NTF_EXT_LEARNED:
            return
        if mac == _ZERO_MAC and _NDA_DST in attrs:
            peer = _peer(attrs[_NDA_DST])
            out.append(
                _on(
                    FORWARDING_ENTRY,
                    f"{port}: flooding peer {peer} {'removed' if removed else 'added'}",
                    port,
                )
            )
        elif state & _NUD_NOARP and not state & _NUD_PERMANENT:
            out.append(
                _on(
                    FORWARDING_ENTRY,
                    f"{port}: static entry {mac} {'removed' if removed else 'added'}",
                    port,
                )
            )

    # nftables

    def _nft_message(self, data: bytes, out: list[Change]) -> None:
        kind = _NLMSG_HDR.unpack_from(data)[1]
        if kind >> 8 != _NFNL_SUBSYS_NFTABLES:
            return
        message = kind & 0xFF
        body = data[_NLMSG_HDR.size :]
        if len(body) < 4:
            return
        attrs = _attrs(body, 4)
        if message == _NFT_MSG_NEWGEN:
            pid = _u32(attrs.get(2))
            pid = socket.ntohl(pid) if pid is not None else None
            changes, self._pending_nft = self._pending_nft, []
            if changes and (pid is None or not os.path.exists(f"/proc/self/task/{pid}")):
                by = f"{_text(attrs.get(3)) or '?'} (pid {pid})"
                changes = sorted(dict.fromkeys(changes), key=_weight)
                shown = ", ".join(changes[:_SHOWN])
                more = f" and {len(changes) - _SHOWN} more" if len(changes) > _SHOWN else ""
                out.append(Change(f"nftables: {shown}{more} by {by}", Scope(tables=True), NFTABLES))
            return
        family = _NFPROTO.get(body[0])
        if family is None or _text(attrs.get(1)) != TABLE:
            return
        named = _text(attrs.get(_NFT_NAMED.get(message, -1)))
        if named is not None and named.startswith("__"):
            return  # a rule's anonymous set: the rule's own change says it
        verb = _NFT_VERBS.get(message, f"change {message} to")
        change = f"{verb} {family} {TABLE}" + (f" {named}" if named else "")
        self._pending_nft.append(change)


def _weight(change: str) -> int:
    """Tables first, then chains, sets, rules, elements: the biggest news first."""
    return next((i for i, word in enumerate(_KINDS) if word in change), len(_KINDS))


_KINDS = (" table ", " chain ", " set ", " counter ", " rule ", " elements ")


def _peer(raw: bytes) -> str:
    family = socket.AF_INET6 if len(raw) == 16 else socket.AF_INET
    return socket.inet_ntop(family, raw)
