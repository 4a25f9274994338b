"""What the kernel data plane asks of the kernel, and the one place that opens it.

Owns the seams of :class:`~butterfly.dataplane.kernel.KernelDataplane`: one
small :class:`~typing.Protocol` per consumer (:class:`LinksNetlink` for
:mod:`.links`, :class:`VniNetlink` for :mod:`.vni`, :class:`PortNetlink`
for :mod:`.ports`, :class:`UnderlayNetlink` for :mod:`.underlay`, all
sharing :class:`LinkNetlink`; :class:`GuardApi`, :class:`ConntrackApi`,
:class:`KernelNftables`), :class:`KernelIo` that carries them into the
data plane, and :func:`open_kernel`, which opens the real ones
(:class:`~butterfly.dataplane.netlink.Netlink`,
:class:`~butterfly.dataplane.nft.Nftables`,
:class:`~butterfly.dataplane.guard.GuardPrograms`,
:class:`~butterfly.dataplane.conntrack.Conntrack`) in the network
namespace of the calling thread. Unit tests give in-memory ones instead, so
what a request changes, in which order, and how it is undone is tested
without root.
"""

import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Protocol

from butterfly.dataplane.conntrack import Conntrack
from butterfly.dataplane.guard import GuardKind, GuardPrograms
from butterfly.dataplane.netlink import Address, Link, Netlink, Route
from butterfly.dataplane.nft import Nftables, NftablesApi
from butterfly.errors import DataplaneError
from butterfly.model.sessions import Session

__all__ = [
    "ConntrackApi",
    "GuardApi",
    "KernelIo",
    "KernelNetlink",
    "KernelNftables",
    "LinkNetlink",
    "LinksNetlink",
    "PortNetlink",
    "UnderlayNetlink",
    "VniNetlink",
    "open_kernel",
]

BR_NETFILTER = "/proc/sys/net/bridge/bridge-nf-call-iptables"
"""Present when br_netfilter is loaded: bridged frames then meet the inet family's filters."""


class LinkNetlink(Protocol):
    """What every part asks of netlink about links (see :class:`Netlink` for each call)."""

    def link(self, name: str, *, fresh: bool = False) -> Link | None: ...

    def links(self) -> list[Link]: ...

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
    ) -> None: ...

    def rename_link(self, index: int, name: str, *, alias: str | None = None) -> None: ...

    def delete_link(self, index: int) -> None: ...

    def forget(self, name: str) -> None: ...


class LinksNetlink(LinkNetlink, Protocol):
    """What :class:`~butterfly.dataplane.links.Links` adds: the guard's shared tc
    blocks, their anchors and programs, and bridge port flags."""

    def add_tap(self, name: str, *, mtu: int, alias: str, queue: int | None = None) -> None: ...

    def guard_block(self, index: int) -> int | None: ...

    def bind_blocks(self, index: int, blocks: tuple[int, int]) -> None: ...

    def unbind_blocks(self, index: int) -> None: ...

    def block_filters(self, block: int) -> dict[int, str]: ...

    def set_block_filter(self, block: int, prio: int, fd: int, name: str) -> None: ...

    def delete_block_filter(self, block: int, prio: int) -> None: ...

    def set_bridge_port(
        self,
        index: int,
        *,
        learning: bool,
        unicast_flood: bool,
        locked: bool,
        neigh_suppress: bool = False,
    ) -> None: ...


class VniNetlink(LinkNetlink, Protocol):
    """What :class:`~butterfly.dataplane.vni.Vnis` adds: bridges, VXLAN devices,
    their flooding peers and neighbour entries."""

    def add_bridge(self, name: str, *, mtu: int, alias: str, ipv6: bool = False) -> None: ...

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
    ) -> None: ...

    def set_bridge_options(self, index: int) -> None: ...

    def link_by_index(self, index: int) -> Link | None: ...

    def flood_peers(self) -> dict[int, set[str]]: ...

    def fdb_append(self, index: int, dst: str) -> None: ...

    def fdb_delete(self, index: int, dst: str) -> None: ...

    def static_neighbours(self, index: int) -> dict[str, str]: ...

    def set_neighbour(self, index: int, address: str, mac: str) -> None: ...

    def delete_neighbour(self, index: int, address: str) -> None: ...


class PortNetlink(LinkNetlink, Protocol):
    """What :class:`~butterfly.dataplane.ports.Ports` adds: taps, veths and the
    MACs pinned to a bridge port."""

    def add_tap(self, name: str, *, mtu: int, alias: str, queue: int | None = None) -> None: ...

    def add_veth(
        self, name: str, *, mtu: int, alias: str, peer_netns_fd: int, peer_mac: str
    ) -> None: ...

    def netnsid(self, fd: int) -> int | None: ...

    def bridge_entries(self, index: int) -> dict[str, bool]: ...

    def remote_by_frr(self, bridge: int, mac: str) -> bool: ...

    def pin_mac(self, index: int, mac: str) -> None: ...

    def forget_mac(self, index: int, mac: str) -> None: ...


class UnderlayNetlink(Protocol):
    """What :func:`~butterfly.dataplane.underlay.find_underlay` reads."""

    def link(self, name: str, *, fresh: bool = False) -> Link | None: ...

    def link_by_index(self, index: int) -> Link | None: ...

    def addresses(self, index: int | None = None) -> list[Address]: ...

    def default_route(self, family: int) -> Route | None: ...


class KernelNetlink(LinksNetlink, VniNetlink, PortNetlink, UnderlayNetlink, Protocol):
    """All of the above, and what the data plane itself adds: one snapshot for
    a reconcile, its own changes for the drift watch, a link's ifindex past
    the snapshot (the fast path's maps), IPv6 off on links an older version
    made, closing."""

    def snapshot(self) -> AbstractContextManager[None]: ...

    def link_names(self) -> set[str]: ...

    def index(self, name: str) -> int | None: ...

    def take_touched(self) -> set[int]: ...

    def disable_ipv6(self, name: str) -> None: ...

    def close(self) -> None: ...


class KernelNftables(NftablesApi, Protocol):
    def close(self) -> None: ...


class GuardApi(Protocol):
    """The loaded port guard programs (see :class:`GuardPrograms`)."""

    def fd(self, kind: GuardKind) -> int: ...

    def sender_fd(self) -> int: ...

    def close(self) -> None: ...


class ConntrackApi(Protocol):
    """A vnic's sessions in its VNI's zone (see :class:`Conntrack`)."""

    def sessions(self, zone: int, ips: Sequence[str]) -> tuple[Session, ...]: ...

    def load(self, zone: int, sessions: Sequence[Session]) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelIo:
    """The kernel interfaces of one network namespace, given to the data plane,
    which owns them from then on (it closes them)."""

    netlink: KernelNetlink
    nft: KernelNftables
    guards: GuardApi
    conntrack: ConntrackApi

    def close(self) -> None:
        self.guards.close()
        self.conntrack.close()
        self.nft.close()
        self.netlink.close()


def open_kernel() -> KernelIo:
    """The real interfaces, in the calling thread's network namespace.

    Raises DataplaneError when the kernel lacks what the data plane needs.
    """
    if not os.path.exists(BR_NETFILTER):
        raise DataplaneError(
            "security groups need the br_netfilter kernel module (modprobe br_netfilter)"
        )
    with ExitStack() as opened:
        netlink = opened.enter_context(Netlink())
        nft = Nftables()
        opened.callback(nft.close)
        guards = GuardPrograms()
        opened.callback(guards.close)
        kernel = KernelIo(netlink=netlink, nft=nft, guards=guards, conntrack=Conntrack())
        opened.pop_all()
    return kernel
