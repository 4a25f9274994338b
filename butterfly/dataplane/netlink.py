"""Links, addresses, routes and forwarding entries, through netlink (pyroute2).

Owns every pyroute2 call of butterfly and the translation of
``NetlinkError`` and ``OSError`` into :class:`~butterfly.errors.DataplaneError`
(naming the operation and the link), so pyroute2 never leaks further up.
Taps are created here too (with the ``/dev/net/tun`` ioctls, the only way
the kernel makes one): they are links like the others.

A :class:`Netlink` works in the network namespace of the thread that built
it, from that thread only (pyroute2 binds its event loop to it).
"""

import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFT_NO_PI, IFT_TAP, tuntap
from pyroute2.netlink.rtnl.ndmsg import NTF_EXT_LEARNED, NTF_SELF, NTF_STICKY

from butterfly.dataplane import rtchange
from butterfly.dataplane.kernel_errors import code_of, explain
from butterfly.dataplane.rtlink import FdbEntry, LinkReader, RawLink
from butterfly.errors import DataplaneError
from butterfly.model.addresses import ip_version

__all__ = ["BRIDGE_OPTIONS", "LLDP_FORWARD_MASK", "Address", "Link", "Netlink", "Route"]

log = logging.getLogger(__name__)

_IFA_F_NODAD = 0x02
_ZERO_MAC = "00:00:00:00:00:00"
_RT_TABLE_MAIN = 254
_IFF_UP = 0x1
_TC_EGRESS = 0xFFFFFFF3
"""The clsact qdisc's egress hook (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS))."""

LLDP_FORWARD_MASK = 1 << 0x0E
"""A bridge hands frames to 01:80:c2:00:00:0e (LLDP) to the receiving port's own
stack, past every bridge hook; forwarded instead, they meet the filters."""
BRIDGE_OPTIONS = {
    "IFLA_BR_STP_STATE": 0,
    "IFLA_BR_FORWARD_DELAY": 0,
    "IFLA_BR_MCAST_SNOOPING": 0,
    "IFLA_BR_NF_CALL_IPTABLES": 1,
    "IFLA_BR_NF_CALL_IP6TABLES": 1,
    "IFLA_BR_GROUP_FWD_MASK": LLDP_FORWARD_MASK,
}
"""Every bridge's options, as a link's ``info`` reads them back (see :meth:`Netlink.add_bridge`)."""
_BRIDGE_SPEC = {name.removeprefix("IFLA_").lower(): value for name, value in BRIDGE_OPTIONS.items()}
"""The same, as pyroute2's keywords."""
_NUD_NOARP = 0x40
"""The state of a static forwarding entry (``bridge fdb add ... static``)."""
_NUD_PERMANENT = 0x80
"""The state of a port's own address."""
_GET_LINK = (RTM_GETLINK, NLM_F_REQUEST)
"""A link query that asks for no ACK. pyroute2's ``"get"`` sets NLM_F_ACK but
stops reading at the answer, so the kernel's ACK after it lands in the queue
of unsolicited messages, which nothing reads: a few KB of daemon memory per
query for ever (about 50 KB per vnic added and deleted)."""


@dataclass(frozen=True, slots=True)
class Link:
    """What butterfly needs to know of an existing link."""

    index: int
    name: str
    kind: str
    """"bridge", "vxlan", "veth", "tun"... ("" for a physical device)."""
    alias: str | None
    master: int | None
    mtu: int
    up: bool
    mac: str
    link_netnsid: int | None
    """For a veth: the namespace id (as seen from here) holding its peer."""
    info: dict[str, Any] = field(default_factory=dict)
    """The kind-specific attributes (IFLA_INFO_DATA), by netlink name."""
    port: dict[str, Any] = field(default_factory=dict)
    """As a bridge port: its attributes (IFLA_INFO_SLAVE_DATA), by netlink name."""
    rx_bytes: int = 0
    tx_bytes: int = 0
    queue: int = 0
    """Transmit queue length: for a tap, the frames the kernel holds for its reader."""


@dataclass(frozen=True, slots=True)
class Address:
    address: str
    prefixlen: int
    index: int
    family: int
    """4 or 6."""


@dataclass(frozen=True, slots=True)
class Route:
    oif: int
    prefsrc: str | None


class Netlink:
    """A netlink socket of the current namespace, with the operations butterfly uses."""

    def __init__(self) -> None:
        try:
            # Strict checking lets the kernel filter dumps by the header's
            # fields: a port's forwarding entries, not the whole table's.
            self._ipr = IPRoute(strict_check=True)
        except (NetlinkError, OSError) as exc:
            raise DataplaneError(explain("netlink: opening a socket", code_of(exc))) from exc
        try:
            self._reader = LinkReader()
        except OSError as exc:
            self._ipr.close()
            raise DataplaneError(explain("netlink: opening a socket", code_of(exc))) from exc
        self._snapshot: dict[str, Link] | None = None
        self._fdb: dict[int, dict[str, bool]] | None = None
        """During a snapshot: bridge forwarding entries by port, then MAC -> pinned."""
        self._touched: set[int] = set()
        self._ipv6_warned = False

    def take_touched(self) -> set[int]:
        """The indexes of the links changed through this object since the last
        call (:data:`~butterfly.dataplane.rtchange.BLOCK` for the filters of
        butterfly's tc blocks): the kernel's notifications about them are
        butterfly's own echo."""
        touched, self._touched = self._touched, set()
        return touched

    def close(self) -> None:
        self._reader.close()
        self._ipr.close()

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Answer :meth:`links` and :meth:`link` from one dump while many links
        are checked (decoding a link costs pyroute2 ~0.1 ms); the changes made
        through this object keep the snapshot right."""
        self._snapshot = {link.name: link for link in self._dump()}
        try:
            yield
        finally:
            self._snapshot = None
            self._fdb = None

    # reading

    def links(self) -> list[Link]:
        if self._snapshot is not None:
            return list(self._snapshot.values())
        return self._dump()

    def _dump(self) -> list[Link]:
        with _translated("netlink: listing links"):
            return [_link(raw) for raw in self._reader.dump()]

    def link_names(self) -> set[str]:
        """The names of the links, from the kernel (a snapshot's dump decodes
        every link; this reads only their names)."""
        with _translated("netlink: listing links"):
            return set(self._reader.names())

    def link(self, name: str, *, fresh: bool = False) -> Link | None:
        """The link ``name``; ``fresh`` asks the kernel even during a snapshot
        (for what changes by itself, as byte counters)."""
        if self._snapshot is not None and not fresh:
            return self._snapshot.get(name)
        return self._get(name)

    def index(self, name: str) -> int | None:
        """The ifindex of link ``name`` (None: there is none), asked of the kernel
        even during a snapshot, with one ioctl (see :meth:`_index`)."""
        try:
            return socket.if_nametoindex(name)
        except OSError:
            return None

    def link_by_index(self, index: int) -> Link | None:
        with _translated(f"netlink: reading link #{index}"):
            raw = self._reader.get(index=index)
        return _link(raw) if raw is not None else None

    def _get(self, name: str) -> Link | None:
        with _translated(f"netlink: reading link {name}"):
            raw = self._reader.get(name)
        return _link(raw) if raw is not None else None

    def addresses(self, index: int | None = None) -> list[Address]:
        with _translated("netlink: listing addresses"):
            messages = self._ipr.addr("dump")
        found = []
        for msg in messages:
            if index is not None and msg["index"] != index:
                continue
            found.append(
                Address(
                    address=msg.get_attr("IFA_ADDRESS"),
                    prefixlen=msg["prefixlen"],
                    index=msg["index"],
                    family=6 if msg["family"] == socket.AF_INET6 else 4,
                )
            )
        return found

    def default_route(self, family: int) -> Route | None:
        """The main table's default route of ``family`` (4 or 6), if any."""
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        with _translated("netlink: listing routes"):
            messages = self._ipr.route("dump", family=af)
        for msg in messages:
            table = msg.get_attr("RTA_TABLE") or msg["table"]
            if msg["dst_len"] != 0 or table != _RT_TABLE_MAIN or msg["type"] != 1:
                continue
            oif = msg.get_attr("RTA_OIF")
            if oif is None:
                multipath = msg.get_attr("RTA_MULTIPATH") or []
                oif = multipath[0]["oif"] if multipath else None
            if oif is not None:
                return Route(oif=oif, prefsrc=msg.get_attr("RTA_PREFSRC"))
        return None

    def flood_peers(self) -> dict[int, set[str]]:
        """Remote VTEPs of every VXLAN device's all-zero (flooding) entry, by device."""
        peers: dict[int, set[str]] = {}
        for entry in self._fdb_dump(0):
            if entry.mac == _ZERO_MAC and entry.dst is not None:
                peers.setdefault(entry.ifindex, set()).add(entry.dst)
        return peers

    def _fdb_dump(self, index: int) -> list[FdbEntry]:
        def what() -> str:
            of = f" of {self._name(index)}" if index else ""
            return f"netlink: listing forwarding entries{of}"

        with _translated(what):
            return self._reader.fdb(index)

    def bridge_entries(self, index: int) -> dict[str, bool]:
        """The bridge forwarding entries towards port ``index``: MAC -> pinned
        (static and sticky, as :meth:`pin_mac` makes them) or not (learned, or
        static without sticky). The port's own address is not listed.

        During a :meth:`snapshot`, from one dump of every entry (the kernel
        walks all its devices for each dump, even one filtered by port)."""
        if self._snapshot is not None:
            if self._fdb is None:
                self._fdb = {}
                for entry in self._fdb_dump(0):
                    self._remember(entry)
            return dict(self._fdb.get(index, {}))
        found: dict[str, bool] = {}
        for entry in self._fdb_dump(index):
            if entry.ifindex == index and _port_entry(entry):
                found[entry.mac] = _pinned(entry)
        return found

    def _remember(self, entry: FdbEntry) -> None:
        if self._fdb is not None and _port_entry(entry):
            self._fdb.setdefault(entry.ifindex, {})[entry.mac] = _pinned(entry)

    def static_neighbours(self, index: int) -> dict[str, str]:
        """The permanent unicast neighbour entries of link ``index`` (as
        :meth:`set_neighbour` makes them): IP -> MAC. The kernel's own
        multicast entries and FRR's ``extern_learn`` ones are left out."""
        with _translated(lambda: f"netlink: listing neighbours of {self._name(index)}"):
            messages = self._ipr.neigh("dump", ifindex=index)
        found = {}
        for msg in messages:
            address = msg.get_attr("NDA_DST")
            mac = msg.get_attr("NDA_LLADDR")
            if (
                msg["ifindex"] != index
                or address is None
                or mac is None
                or msg["state"] != _NUD_PERMANENT
                or msg["flags"] & NTF_EXT_LEARNED
                or ipaddress.ip_address(address).is_multicast
            ):
                continue
            found[str(ipaddress.ip_address(address))] = mac.lower()
        return found

    def netnsid(self, fd: int) -> int | None:
        """The id this namespace gives the namespace of ``fd`` (None: none yet)."""
        with _translated("netlink: reading a namespace id"):
            answer = self._ipr.get_netnsid(fd=fd)
        nsid = answer.get("nsid") if answer else None
        return None if nsid is None or nsid < 0 else int(nsid)

    # changing

    def add_bridge(self, name: str, *, mtu: int, alias: str, ipv6: bool = False) -> None:
        """A bridge that forwards at once (no STP), floods multicast, hands IP
        traffic to the inet family's hooks (br_netfilter, per bridge) and lets
        no frame past its hooks to a port's own stack (LLDP_FORWARD_MASK).
        ``ipv6``: keep IPv6 on, for the IPv6 neighbour entries EVPN puts there."""
        with _translated(f"netlink: creating bridge {name}"):
            self._reader.change(rtchange.add_bridge(name, mtu=mtu, options=BRIDGE_OPTIONS))
        self._configure_new(name, alias, ipv6=ipv6)

    def add_vxlan(
        self,
        name: str,
        *,
        vni: int,
        local: str,
        group: str | None,
        underlay_index: int,
        port: int,
        mtu: int,
        alias: str,
        learning: bool = True,
    ) -> None:
        """A VXLAN device; ``group`` None leaves flooding to static peers or
        FRR, ``learning`` False leaves remote MACs to FRR too."""
        message = rtchange.add_vxlan(
            name,
            vni=vni,
            local=local,
            group=group,
            underlay_index=underlay_index,
            port=port,
            mtu=mtu,
            learning=learning,
        )
        with _translated(f"netlink: creating vxlan {name}"):
            self._reader.change(message)
        self._configure_new(name, alias)

    def add_tap(self, name: str, *, mtu: int, alias: str, queue: int | None = None) -> None:
        """A persistent tap (single queue, no packet information header, no vnet
        header), as QEMU's ``-netdev tap,ifname=NAME,script=no`` and the
        vhost-user backend expect to find it. The kernel makes one only through
        the ``/dev/net/tun`` ioctls; they are made here, with pyroute2's
        numbers for this machine: its ``link("add", kind="tuntap")`` encodes
        and decodes a whole netlink message around the same two ioctls, which
        took three quarters of the tap's cost and a fifth of a nic_add's CPU.
        ``queue``: its transmit queue length (None: the kernel's default)."""
        if tuntap.TUNSETIFF is None:
            raise DataplaneError(f"creating tap {name}: no tap ioctls known for this CPU")
        request = struct.pack("16sH22x", name.encode(), IFT_TAP | IFT_NO_PI)
        with _translated(f"netlink: creating tap {name}"):
            tun = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(tun, tuntap.TUNSETIFF, request)
                fcntl.ioctl(tun, tuntap.TUNSETPERSIST, 1)
            finally:
                os.close(tun)
        self._configure_new(name, alias, mtu=mtu, queue=queue)

    def add_veth(
        self, name: str, *, mtu: int, alias: str, peer_netns_fd: int, peer_mac: str
    ) -> None:
        """A veth pair whose peer, also called ``name``, is born in another namespace."""
        peer = {"ifname": name, "net_ns_fd": peer_netns_fd, "address": peer_mac, "mtu": mtu}
        with _translated(f"netlink: creating veth {name}"):
            self._ipr.link("add", ifname=name, kind="veth", mtu=mtu, peer=peer)
        self._configure_new(name, alias)

    def set_link(
        self,
        index: int,
        *,
        master: int | None = None,
        nomaster: bool = False,
        mtu: int | None = None,
        up: bool | None = None,
        mac: str | None = None,
        alias: str | None = None,
        queue: int | None = None,
        advice: Mapping[int, str] | None = None,
    ) -> None:
        """``advice``: the caller's remedy for errnos it can explain better
        (a VXLAN device that cannot join its multicast group going up)."""
        if nomaster:
            master = 0
        if (master, mtu, mac, alias, up, queue) == (None,) * 6:
            return
        message = rtchange.set_link(
            index, master=master, mtu=mtu, up=up, mac=mac, alias=alias, queue=queue
        )
        self._touched.add(index)
        with _translated(lambda: f"netlink: changing link {self._name(index)}", advice):
            self._reader.change(message)
        self._changed(index=index)

    def set_bridge_options(self, index: int) -> None:
        """Re-apply :meth:`add_bridge`'s options to an existing bridge."""
        self._touched.add(index)
        with _translated(lambda: f"netlink: changing bridge {self._name(index)}"):
            self._ipr.link(
                "set",
                index=index,
                kind="bridge",
                **_BRIDGE_SPEC,
            )
        self._changed(index=index)

    def set_bridge_port(
        self,
        index: int,
        *,
        learning: bool,
        unicast_flood: bool,
        locked: bool,
        neigh_suppress: bool = False,
    ) -> None:
        self._touched.add(index)
        message = rtchange.bridge_port(
            index,
            learning=learning,
            unicast_flood=unicast_flood,
            locked=locked,
            neigh_suppress=neigh_suppress,
        )
        with _translated(lambda: f"netlink: changing bridge port {self._name(index)}"):
            self._reader.change(message)
        self._changed(index=index)

    def set_neighbour(self, index: int, address: str, mac: str) -> None:
        """``address`` is at ``mac`` behind link ``index`` (a bridge), for good
        (``ip neigh replace ... nud permanent``): the kernel's garbage
        collector removes no-ARP entries unused for a minute once a table
        holds more than 128, never permanent ones."""
        family = socket.AF_INET6 if ip_version(address) == 6 else socket.AF_INET
        with _translated(f"netlink: setting neighbour {address} on {self._name(index)}"):
            self._ipr.neigh(
                "replace",
                ifindex=index,
                dst=address,
                lladdr=mac,
                family=family,
                state=_NUD_PERMANENT,
            )

    def delete_neighbour(self, index: int, address: str) -> None:
        family = socket.AF_INET6 if ip_version(address) == 6 else socket.AF_INET
        with _translated(f"netlink: removing neighbour {address} from {self._name(index)}"):
            self._ipr.neigh("del", ifindex=index, dst=address, family=family)

    def remote_by_frr(self, bridge: int, mac: str) -> bool:
        """Whether bridge ``bridge`` forwards ``mac`` by FRR's word (an
        ``extern_learn`` entry: with EVPN, another host advertised it)."""
        with _translated(lambda: f"netlink: looking up {mac} in {self._name(bridge)}"):
            entry = self._reader.fdb_entry(rtchange.fdb_lookup(bridge, mac))
        return entry is not None and bool(entry.flags & NTF_EXT_LEARNED)

    def pin_mac(self, index: int, mac: str) -> None:
        """Pin ``mac`` to bridge port ``index`` (taking it from another port):
        frames to it go there only, and frames from it elsewhere cannot move it
        (static, sticky)."""
        self._touched.add(index)
        with _translated(lambda: f"netlink: pinning {mac} to {self._name(index)}"):
            self._reader.change(rtchange.fdb_pin(index, mac))
        if self._fdb is not None:
            for entries in self._fdb.values():
                entries.pop(mac, None)
            self._fdb.setdefault(index, {})[mac] = True

    def forget_mac(self, index: int, mac: str) -> None:
        """Remove the forwarding entry of ``mac`` towards bridge port ``index``."""
        self._touched.add(index)
        with _translated(lambda: f"netlink: removing {mac} from {self._name(index)}"):
            self._reader.change(rtchange.fdb_forget(index, mac))
        if self._fdb is not None:
            self._fdb.get(index, {}).pop(mac, None)

    def rename_link(self, index: int, name: str, *, alias: str | None = None) -> None:
        self._touched.add(index)
        with _translated(lambda: f"netlink: renaming link {self._name(index)} to {name}"):
            self._reader.change(rtchange.set_link(index, name=name, alias=alias))
        self._changed(index=index)
        self._changed(name)

    def delete_link(self, index: int) -> None:
        self._touched.add(index)
        with _translated(lambda: f"netlink: deleting link {self._name(index)}"):
            self._reader.delete(index)
        self._changed(index=index)

    def fdb_append(self, index: int, dst: str) -> None:
        self._touched.add(index)
        with _translated(
            lambda: f"netlink: adding flooding peer {dst} to link {self._name(index)}"
        ):
            self._ipr.fdb("append", ifindex=index, lladdr=_ZERO_MAC, dst=dst)

    def fdb_delete(self, index: int, dst: str) -> None:
        self._touched.add(index)
        with _translated(
            lambda: f"netlink: removing flooding peer {dst} from link {self._name(index)}"
        ):
            self._ipr.fdb("del", ifindex=index, lladdr=_ZERO_MAC, dst=dst)

    def guard_block(self, index: int) -> int | None:
        """The shared tc block on link ``index``'s egress (0: filters of its own;
        None: no filter there). The kernel answers no query for a clsact
        qdisc, but a dump of a port's filters names their shared block."""
        with _translated(lambda: f"netlink: listing the tc filters of {self._name(index)}"):
            try:
                return self._reader.filter_block(rtchange.filters(index, _TC_EGRESS))
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    return None  # no clsact qdisc
                raise

    def bind_blocks(self, index: int, blocks: tuple[int, int]) -> None:
        """Give link ``index`` a clsact qdisc bound to the shared tc blocks
        ``blocks`` (ingress, egress): their filters apply to it at once. A
        qdisc there already goes first (the kernel rebinds none, so for that
        instant the link has no filter)."""
        self._touched.add(index)
        with _translated(lambda: f"netlink: guarding {self._name(index)}"):
            try:
                self._reader.change(rtchange.clsact(index, blocks))
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                self._unbind(index)
                self._reader.change(rtchange.clsact(index, blocks))

    def unbind_blocks(self, index: int) -> None:
        """Remove link ``index``'s clsact qdisc, if it has one."""
        self._touched.add(index)
        with _translated(lambda: f"netlink: unguarding {self._name(index)}"):
            self._unbind(index)

    def _unbind(self, index: int) -> None:
        try:
            self._reader.change(rtchange.delete_clsact(index))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINVAL):
                raise

    def block_filters(self, block: int) -> dict[int, str]:
        """The filters of shared tc block ``block`` by priority: the name of the
        eBPF program there ("" for another kind of filter)."""
        with _translated(f"netlink: listing the filters of tc block {block}"):
            try:
                return self._reader.filters(rtchange.filters(rtchange.BLOCK, block))
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    return {}  # no such block: no link is bound to it
                raise

    def set_block_filter(self, block: int, prio: int, fd: int, name: str) -> None:
        """Put eBPF program ``fd`` at ``prio`` of shared tc block ``block``, in
        place of the one there (replaced in one operation: never none)."""
        self._touched.add(rtchange.BLOCK)
        with _translated(f"netlink: putting {name} in tc block {block}"):
            self._reader.change(
                rtchange.bpf_filter(
                    rtchange.BLOCK, parent=block, prio=prio, handle=1, fd=fd, name=name
                )
            )

    def delete_block_filter(self, block: int, prio: int) -> None:
        """Remove the filters at ``prio`` of shared tc block ``block``."""
        self._touched.add(rtchange.BLOCK)
        with _translated(f"netlink: removing the filter at {prio} of tc block {block}"):
            try:
                self._reader.change(rtchange.delete_prio(rtchange.BLOCK, parent=block, prio=prio))
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise

    def add_address(self, index: int, address: str, prefixlen: int) -> None:
        """Usable at once: no duplicate address detection delay for IPv6."""
        with _translated(f"netlink: adding address {address}/{prefixlen}"):
            self._ipr.addr(
                "add", index=index, address=address, prefixlen=prefixlen, IFA_FLAGS=_IFA_F_NODAD
            )

    def delete_address(self, index: int, address: str, prefixlen: int) -> None:
        with _translated(f"netlink: removing address {address}/{prefixlen}"):
            self._ipr.addr("del", index=index, address=address, prefixlen=prefixlen)

    def forget(self, name: str) -> None:
        """Drop link ``name`` from the snapshot: something else is deleting it."""
        if self._snapshot is not None:
            self._snapshot.pop(name, None)

    def _changed(self, name: str | None = None, index: int | None = None) -> None:
        """Bring the snapshot up to date after a change to one link."""
        if self._snapshot is None:
            return
        if name is None:
            name = next((n for n, link in self._snapshot.items() if link.index == index), None)
            if name is None:
                return
        link = self._get(name)
        if link is None:
            self._snapshot.pop(name, None)
        else:
            self._snapshot[name] = link

    def _configure_new(
        self,
        name: str,
        alias: str,
        *,
        mtu: int | None = None,
        queue: int | None = None,
        ipv6: bool = False,
    ) -> None:
        """Mark a new link as butterfly's and keep the host's own IPv6 (link-local
        address, router solicitations, MLD) out of the tenant network; in one
        change (each costs a round trip to the kernel). IPv6 is turned off on
        the link before it goes up, so it never gets the ``ff00::/8`` route
        every other link has: each of those routes is walked by every link
        event and MTU change of the namespace (8,192 of them at 4,096 VNIs
        took a sixth of a request's CPU), unless ``ipv6``."""
        index = self._index(name)
        self._touched.add(index)
        with _translated(f"netlink: configuring link {name}"):
            if not ipv6:
                self._disable_ipv6(name)
            self._reader.change(
                rtchange.set_link(index, alias=alias, no_addrgen=True, mtu=mtu, queue=queue)
            )
        self._changed(name)

    def disable_ipv6(self, name: str) -> None:
        """IPv6 off on link ``name`` (see :meth:`_configure_new`), for links made
        before butterfly did so."""
        with _translated(f"netlink: turning IPv6 off on {name}"):
            self._disable_ipv6(name)

    def _disable_ipv6(self, name: str) -> None:
        """Through the ``/proc`` file, the only interface (netlink sets no
        ``disable_ipv6``). A kernel without IPv6 has nothing to turn off; where
        ``/proc/sys`` is read-only (a container) the link keeps its route:
        slower requests on a big host, said once, not a failure."""
        try:
            with open(
                f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w", encoding="ascii"
            ) as conf:
                conf.write("1")
        except FileNotFoundError:
            if os.path.exists("/proc/sys/net/ipv6/conf/all"):
                raise
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            if not self._ipv6_warned:
                self._ipv6_warned = True
                log.warning(
                    "cannot turn IPv6 off on %s (%s): each of butterfly's links keeps an "
                    "IPv6 route, which every link change walks; give butterflyd a writable "
                    "/proc/sys for requests that stay flat on a big host",
                    name,
                    exc.strerror,
                )

    def _index(self, name: str) -> int:
        """One ioctl (SIOCGIFINDEX): a netlink query decodes the whole link,
        ten times the cost, three times in a new VNI's nic_add."""
        index = self.index(name)
        if index is None:
            raise DataplaneError(f"netlink: link {name} vanished")
        return index

    def _name(self, index: int) -> str:
        if self._snapshot is not None:
            for name, link in self._snapshot.items():
                if link.index == index:
                    return name
        try:
            messages = self._ipr.link(_GET_LINK, index=index)
        except NetlinkError:
            return f"#{index}"
        return str(messages[0].get_attr("IFLA_IFNAME")) if messages else f"#{index}"


@contextmanager
def _translated(
    what: str | Callable[[], str], advice: Mapping[int, str] | None = None
) -> Iterator[None]:
    """pyroute2's and the system's errors as a sentence: object, cause, remedy
    (``advice`` gives this operation's own remedy for some errnos). ``what``
    may be computed only on failure (a link's name costs a lookup)."""
    try:
        yield
    except (NetlinkError, OSError) as exc:
        text = what() if callable(what) else what
        raise DataplaneError(explain(text, code_of(exc), advice)) from exc


def _link(raw: RawLink) -> Link:
    info = raw.get("IFLA_LINKINFO") or {}
    stats = raw.get("IFLA_STATS64") or {}
    return Link(
        index=raw["index"],
        name=raw.get("IFLA_IFNAME", ""),
        kind=info.get("IFLA_INFO_KIND", ""),
        alias=raw.get("IFLA_IFALIAS"),
        master=raw.get("IFLA_MASTER"),
        mtu=raw.get("IFLA_MTU", 0),
        up=bool(raw["flags"] & _IFF_UP),
        mac=raw.get("IFLA_ADDRESS", ""),
        link_netnsid=raw.get("IFLA_LINK_NETNSID"),
        info=info.get("IFLA_INFO_DATA", {}),
        port=info.get("IFLA_INFO_SLAVE_DATA", {}),
        rx_bytes=stats.get("rx_bytes", 0),
        tx_bytes=stats.get("tx_bytes", 0),
        queue=raw.get("IFLA_TXQLEN", 0),
    )


def _port_entry(entry: FdbEntry) -> bool:
    """An entry towards a bridge port, but not the port's own address."""
    return not entry.state & _NUD_PERMANENT and not entry.flags & NTF_SELF


def _pinned(entry: FdbEntry) -> bool:
    return bool(entry.state & _NUD_NOARP and entry.flags & NTF_STICKY)
