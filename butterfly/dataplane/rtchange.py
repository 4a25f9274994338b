"""Changing links fast: the netlink messages of a request's link work, encoded with struct.

pyroute2 spends ~0.5-1.5 ms of CPU building and sending each message (its
attribute tables, then an asyncio round for the answer): most of a vnic's
plug, which is a dozen of them. These builders make the very bytes pyroute2
sent for the same calls (compared with strace); :class:`~butterfly.dataplane.rtlink.LinkReader`
sends them and reads the acknowledgement. Pure encoding: no socket here.
"""

import ipaddress
import socket
import struct
from collections.abc import Callable, Mapping
from typing import NamedTuple

__all__ = [
    "BLOCK",
    "Message",
    "add_bridge",
    "add_vxlan",
    "bpf_filter",
    "bridge_port",
    "clsact",
    "delete_clsact",
    "delete_group",
    "delete_prio",
    "fdb_forget",
    "fdb_pin",
    "filters",
    "set_link",
]

_RTM_NEWLINK = 16
_RTM_NEWNEIGH = 28
_RTM_GETNEIGH = 30
_RTM_DELNEIGH = 29
_RTM_NEWQDISC = 36
_RTM_DELQDISC = 37
_RTM_NEWTFILTER = 44
_RTM_DELTFILTER = 45
_RTM_GETTFILTER = 46
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_REPLACE = 0x100
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_NLM_F_DUMP = 0x300
_IFF_UP = 0x1
_IFINFO = struct.Struct("=BxHiII")
_NDMSG = struct.Struct("=B3xiHBB")
_TCMSG = struct.Struct("=B3xiIII")
_IFLA_ADDRESS = 1
_IFLA_IFNAME = 3
_IFLA_MTU = 4
_IFLA_MASTER = 10
_IFLA_TXQLEN = 13
_IFLA_GROUP = 27
_RTM_DELLINK = 17
_IFLA_LINKINFO = 18
_IFLA_IFALIAS = 20
_IFLA_AF_SPEC = 26
_IFLA_INFO_KIND = 1
_IFLA_INFO_DATA = 2
_IFLA_INFO_SLAVE_KIND = 4
_IFLA_INFO_SLAVE_DATA = 5
_IFLA_INET6_ADDR_GEN_MODE = 8
_IFLA_BRPORT_LEARNING = 8
_IFLA_BRPORT_UNICAST_FLOOD = 9
_IFLA_BRPORT_NEIGH_SUPPRESS = 32
_IFLA_BRPORT_LOCKED = 39
_IFLA_VXLAN_ID = 1
_IFLA_VXLAN_GROUP = 2
_IFLA_VXLAN_LINK = 3
_IFLA_VXLAN_LOCAL = 4
_IFLA_VXLAN_LEARNING = 7
_IFLA_VXLAN_PORT = 15
_IFLA_VXLAN_GROUP6 = 16
_IFLA_VXLAN_LOCAL6 = 17
_NDA_LLADDR = 2
_NDA_MASTER = 9
_NUD_NOARP = 0x40
_NTF_MASTER = 0x04
_NTF_STICKY = 0x40
_TCA_KIND = 1
_TCA_OPTIONS = 2
_TCA_INGRESS_BLOCK = 13
_TCA_EGRESS_BLOCK = 14
_TCA_BPF_FD = 6
_TCA_BPF_NAME = 7
_TCA_BPF_FLAGS = 8
_TCA_BPF_FLAG_ACT_DIRECT = 1
_TC_H_CLSACT = 0xFFFFFFF1
_CLSACT_HANDLE = 0xFFFF0000
_ETH_P_ALL = 0x0003
_IN6_ADDR_GEN_MODE_NONE = 1


BLOCK = -1
"""The link index that names a shared tc block (TCM_IFINDEX_MAGIC_BLOCK) in a
filter's message, whose parent field then holds the block's number."""


class Message(NamedTuple):
    """One netlink request: its type, header flags and body (family header and attributes)."""

    kind: int
    flags: int
    body: bytes


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _u8(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=B", value))


def _u16(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=H", value))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


_BRIDGE_OPTIONS: dict[str, tuple[int, Callable[[int, int], bytes]]] = {
    "IFLA_BR_FORWARD_DELAY": (1, _u32),
    "IFLA_BR_STP_STATE": (5, _u32),
    "IFLA_BR_GROUP_FWD_MASK": (9, _u16),
    "IFLA_BR_MCAST_SNOOPING": (23, _u8),
    "IFLA_BR_NF_CALL_IPTABLES": (36, _u8),
    "IFLA_BR_NF_CALL_IP6TABLES": (37, _u8),
}
"""An ``IFLA_BR_*`` option's attribute type and size."""


def _text(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _mac(value: str) -> bytes:
    return bytes.fromhex(value.replace(":", ""))


def set_link(
    index: int,
    *,
    master: int | None = None,
    mtu: int | None = None,
    up: bool | None = None,
    mac: str | None = None,
    alias: str | None = None,
    name: str | None = None,
    no_addrgen: bool = False,
    group: int | None = None,
    queue: int | None = None,
) -> Message:
    """Change link ``index``: ``master`` 0 takes it off its master; ``no_addrgen``
    keeps IPv6 from making it a link-local address (and so from speaking)."""
    attributes = b""
    if alias is not None:
        attributes += _text(_IFLA_IFALIAS, alias)
    if no_addrgen:
        inet6 = _u8(_IFLA_INET6_ADDR_GEN_MODE, _IN6_ADDR_GEN_MODE_NONE)
        attributes += _attr(_IFLA_AF_SPEC, _attr(socket.AF_INET6, inet6))
    if mtu is not None:
        attributes += _u32(_IFLA_MTU, mtu)
    if master is not None:
        attributes += _u32(_IFLA_MASTER, master)
    if mac is not None:
        attributes += _attr(_IFLA_ADDRESS, _mac(mac))
    if name is not None:
        attributes += _text(_IFLA_IFNAME, name)
    if group is not None:
        attributes += _u32(_IFLA_GROUP, group)
    if queue is not None:
        attributes += _u32(_IFLA_TXQLEN, queue)
    flags = _IFF_UP if up else 0
    change = 0 if up is None else _IFF_UP
    header = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)
    return Message(_RTM_NEWLINK, _NLM_F_REQUEST | _NLM_F_ACK, header + attributes)


def delete_group(group: int) -> Message:
    """Delete every link of ``group`` (``ip link del group``): the kernel waits
    for its readers to let go once for all of them, not once per link."""
    header = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return Message(_RTM_DELLINK, _NLM_F_REQUEST | _NLM_F_ACK, header + _u32(_IFLA_GROUP, group))


def _new_link(name: str, mtu: int, kind: str, data: bytes) -> Message:
    info = _text(_IFLA_INFO_KIND, kind) + _attr(_IFLA_INFO_DATA, data)
    attributes = _text(_IFLA_IFNAME, name) + _u32(_IFLA_MTU, mtu) + _attr(_IFLA_LINKINFO, info)
    flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_EXCL | _NLM_F_CREATE
    return Message(_RTM_NEWLINK, flags, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attributes)


def add_bridge(name: str, *, mtu: int, options: Mapping[str, int]) -> Message:
    """A bridge with these options (``IFLA_BR_*`` names, in their order)."""
    data = b""
    for option, value in options.items():
        kind, encode = _BRIDGE_OPTIONS[option]
        data += encode(kind, value)
    return _new_link(name, mtu, "bridge", data)


def add_vxlan(
    name: str,
    *,
    vni: int,
    local: str,
    group: str | None,
    underlay_index: int,
    port: int,
    mtu: int,
    learning: bool,
) -> Message:
    v6 = ipaddress.ip_address(local).version == 6
    data = (
        _u32(_IFLA_VXLAN_ID, vni)
        + _u32(_IFLA_VXLAN_LINK, underlay_index)
        + _attr(_IFLA_VXLAN_PORT, struct.pack("!H", port))
        + _u8(_IFLA_VXLAN_LEARNING, int(learning))
        + _attr(_IFLA_VXLAN_LOCAL6 if v6 else _IFLA_VXLAN_LOCAL, ipaddress.ip_address(local).packed)
    )
    if group is not None:
        data += _attr(
            _IFLA_VXLAN_GROUP6 if v6 else _IFLA_VXLAN_GROUP, ipaddress.ip_address(group).packed
        )
    return _new_link(name, mtu, "vxlan", data)


def bridge_port(
    index: int, *, learning: bool, unicast_flood: bool, locked: bool, neigh_suppress: bool
) -> Message:
    """The bridge port flags of link ``index``."""
    data = (
        _u8(_IFLA_BRPORT_LEARNING, int(learning))
        + _u8(_IFLA_BRPORT_UNICAST_FLOOD, int(unicast_flood))
        + _u8(_IFLA_BRPORT_LOCKED, int(locked))
        + _u8(_IFLA_BRPORT_NEIGH_SUPPRESS, int(neigh_suppress))
    )
    info = _text(_IFLA_INFO_SLAVE_KIND, "bridge_slave") + _attr(_IFLA_INFO_SLAVE_DATA, data)
    header = _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0)
    return Message(_RTM_NEWLINK, _NLM_F_REQUEST | _NLM_F_ACK, header + _attr(_IFLA_LINKINFO, info))


def fdb_pin(index: int, mac: str) -> Message:
    """``mac`` static and sticky on bridge port ``index``, replacing any entry of it."""
    header = _NDMSG.pack(socket.AF_BRIDGE, index, _NUD_NOARP, _NTF_MASTER | _NTF_STICKY, 0)
    flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_REPLACE | _NLM_F_CREATE
    return Message(_RTM_NEWNEIGH, flags, header + _attr(_NDA_LLADDR, _mac(mac)))


def fdb_forget(index: int, mac: str) -> Message:
    header = _NDMSG.pack(socket.AF_BRIDGE, index, 0, _NTF_MASTER, 0)
    return Message(
        _RTM_DELNEIGH, _NLM_F_REQUEST | _NLM_F_ACK, header + _attr(_NDA_LLADDR, _mac(mac))
    )


def clsact(index: int, blocks: tuple[int, int]) -> Message:
    """The clsact qdisc of link ``index`` bound to the shared tc blocks
    ``blocks`` (ingress, egress); EEXIST when the link has one."""
    header = _TCMSG.pack(socket.AF_UNSPEC, index, _CLSACT_HANDLE, _TC_H_CLSACT, 0)
    flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_EXCL | _NLM_F_CREATE
    attributes = (
        _text(_TCA_KIND, "clsact")
        + _u32(_TCA_INGRESS_BLOCK, blocks[0])
        + _u32(_TCA_EGRESS_BLOCK, blocks[1])
    )
    return Message(_RTM_NEWQDISC, flags, header + attributes)


def delete_clsact(index: int) -> Message:
    """Remove link ``index``'s clsact (or ingress) qdisc, with the filters of its
    own blocks; ENOENT or EINVAL when it has none."""
    header = _TCMSG.pack(socket.AF_UNSPEC, index, _CLSACT_HANDLE, _TC_H_CLSACT, 0)
    return Message(_RTM_DELQDISC, _NLM_F_REQUEST | _NLM_F_ACK, header)


def bpf_filter(index: int, *, parent: int, prio: int, handle: int, fd: int, name: str) -> Message:
    """A direct-action eBPF filter (program ``fd``) replacing the one at ``prio``/``handle``."""
    info = (prio << 16) | socket.htons(_ETH_P_ALL)
    header = _TCMSG.pack(socket.AF_UNSPEC, index, handle, parent, info)
    options = (
        _u32(_TCA_BPF_FD, fd)
        + _text(_TCA_BPF_NAME, name)
        + _u32(_TCA_BPF_FLAGS, _TCA_BPF_FLAG_ACT_DIRECT)
    )
    flags = _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_REPLACE | _NLM_F_CREATE
    return Message(
        _RTM_NEWTFILTER, flags, header + _text(_TCA_KIND, "bpf") + _attr(_TCA_OPTIONS, options)
    )


def fdb_lookup(bridge: int, mac: str) -> Message:
    """A lookup of bridge ``bridge``'s forwarding entry for ``mac`` (``bridge fdb
    get``): one entry, where a dump walks every entry of every device."""
    header = _NDMSG.pack(socket.AF_BRIDGE, 0, 0, 0, 0)
    attributes = _u32(_NDA_MASTER, bridge) + _attr(_NDA_LLADDR, _mac(mac))
    return Message(_RTM_GETNEIGH, _NLM_F_REQUEST | _NLM_F_ACK, header + attributes)


def delete_prio(index: int, *, parent: int, prio: int) -> Message:
    """Remove every filter at ``prio``, whatever its kind (ENOENT when there is none)."""
    info = (prio << 16) | socket.htons(_ETH_P_ALL)
    header = _TCMSG.pack(socket.AF_UNSPEC, index, 0, parent, info)
    return Message(_RTM_DELTFILTER, _NLM_F_REQUEST | _NLM_F_ACK, header)


def filters(index: int, parent: int) -> Message:
    """A dump of link ``index``'s filters under ``parent``."""
    header = _TCMSG.pack(socket.AF_UNSPEC, index, 0, parent, 0)
    return Message(_RTM_GETTFILTER, _NLM_F_REQUEST | _NLM_F_DUMP, header)
