"""A VNI's devices: its bridge and VXLAN device, how they flood, and their deletion.

Owns :class:`Vnis`: per VNI present on this host, the bridge ``bfbr<vni>``
and the VXLAN device ``bfvx<vni>`` on the underlay, created or put right;
the VXLAN device's flooding (the VNI's multicast group, static peers kept in
its forwarding database, or FRR's with EVPN) and, with EVPN, the bridge's
neighbour entries for the vnics' IPs; deleting a VNI's devices once no vnic
needs them, at once or in the deletion thread (:mod:`.deleter`).

With the deletion thread, an emptied VNI's bridge is kept instead, down,
without ports and renamed ``bfs<ifindex>`` (:data:`SPARE_BRIDGES` at most),
for the next new VNI to take under its own name: deleting a bridge holds the
kernel's RTNL lock ~16 ms (``rcu_barrier`` in ``br_multicast_dev_del``)
where a tap or a VXLAN device takes ~0.2 ms, so a stream of VNIs coming and
going made the thread's batches, and the one request waiting for each,
seconds long. The thread deletes the spares once the API has been quiet a
second (a host at rest keeps none), a reconcile at once. Not with EVPN,
whose bridges hold neighbour entries and a MAC of their VNI.
"""

import ipaddress
import logging
from collections.abc import Callable
from functools import partial

from butterfly.dataplane.deleter import LinkDeleter
from butterfly.dataplane.evpn import bridge_mac, neighbour_changes, wanted_neighbours
from butterfly.dataplane.guard import GuardKind
from butterfly.dataplane.journal import Journal, step
from butterfly.dataplane.kernel_io import VniNetlink
from butterfly.dataplane.limits import MulticastLimits
from butterfly.dataplane.links import Links, PortFlags
from butterfly.dataplane.naming import (
    bridge_name,
    spare_alias,
    spare_name,
    vni_alias,
    vni_of,
    vxlan_name,
)
from butterfly.dataplane.netlink import BRIDGE_OPTIONS, Link
from butterfly.dataplane.settings import KernelSettings
from butterfly.dataplane.underlay import flood_group
from butterfly.errors import DataplaneError
from butterfly.model import StateView
from butterfly.model.addresses import ip_version

__all__ = ["SPARE_BRIDGES", "Vnis"]

log = logging.getLogger(__name__)

SPARE_BRIDGES = 16
"""Emptied VNIs' bridges kept for new VNIs, at most (each is a few KB of the kernel's)."""


class Vnis:
    """The VNIs' devices; ``zone_count``: how many VNIs have a conntrack zone
    (each multicast VNI holds a group membership of the underlay);
    ``deleter``: deletes emptied VNIs' devices after the request (None: at once)."""

    def __init__(
        self,
        netlink: VniNetlink,
        links: Links,
        settings: KernelSettings,
        *,
        zone_count: Callable[[], int],
        deleter: LinkDeleter | None,
    ) -> None:
        self._netlink = netlink
        self._links = links
        self._settings = settings
        self._zone_count = zone_count
        self.multicast_limits = MulticastLimits(settings.underlay.version)
        self._flood: dict[int, set[str]] = {}
        self._flood_loaded = False
        self._deleter = deleter
        self._deletions: dict[int, set[int]] = {}
        """VNI -> ifindexes of its bridge and VXLAN device the thread is deleting."""
        self._spares: list[int] = []
        """Ifindexes of the spare bridges, the newest last."""

    def used(self, vni: int, state: StateView) -> bool:
        """Whether a vnic of ``vni`` has a port here (so the VNI needs its devices)."""
        return state.any_in(vni, self._settings.has_port)

    def peers(self, vni: int, state: StateView) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self._settings.static_peers, *state.peers(vni)]))

    def forget_flooding(self) -> None:
        """Read the forwarding database again when next needed (reconcile, repair, cleanup)."""
        self._flood.clear()
        self._flood_loaded = False

    def ensure(self, j: Journal | None, vni: int, state: StateView) -> None:
        """The VNI's bridge and VXLAN device, created or put right."""
        settings = self._settings
        underlay = settings.underlay
        what = f"vni {vni}"
        self._await_deletion(vni)
        bridge = self._links.own(bridge_name(vni), what)
        if bridge is not None and bridge.kind != "bridge":
            step(j, f"delete {bridge.name}", partial(self._netlink.delete_link, bridge.index))
            bridge = None
        if bridge is None:
            name = bridge_name(vni)
            if not self._take_spare(j, vni):
                step(
                    j,
                    f"create bridge {name}",
                    lambda: self._netlink.add_bridge(
                        name, mtu=settings.vnic_mtu, alias=vni_alias(vni), ipv6=settings.evpn
                    ),
                    partial(self._links.delete, name),
                )
            bridge = self._netlink.link(name)
            assert bridge is not None
        elif any(bridge.info.get(k) != v for k, v in BRIDGE_OPTIONS.items()):
            step(
                j,
                f"configure {bridge.name}",
                partial(self._netlink.set_bridge_options, bridge.index),
            )
        self._links.fix(j, bridge, master=None, mtu=settings.vnic_mtu)
        if settings.evpn and bridge.mac != (mac := bridge_mac(underlay.address, vni)):
            index, old = bridge.index, bridge.mac
            step(
                j,
                f"set the mac of {bridge.name}",
                partial(self._netlink.set_link, index, mac=mac),
                partial(self._netlink.set_link, index, mac=old),
            )
        vxlan = self._links.own(vxlan_name(vni), what)
        if vxlan is not None and not self._vxlan_fits(vxlan, vni):
            step(j, f"delete {vxlan.name}", partial(self._netlink.delete_link, vxlan.index))
            vxlan = None
        if vxlan is None:
            name = vxlan_name(vni)
            group = flood_group(vni, underlay.version) if settings.multicast else None
            if settings.multicast:
                self.multicast_limits.ensure(self._zone_count())
            step(
                j,
                f"create vxlan {name}",
                lambda: self._netlink.add_vxlan(
                    name,
                    vni=vni,
                    local=underlay.address,
                    group=group,
                    underlay_index=underlay.index,
                    port=settings.vxlan_port,
                    mtu=settings.vxlan_mtu,
                    alias=vni_alias(vni),
                    learning=not settings.evpn,
                ),
                partial(self._links.delete, name),
            )
            vxlan = self._netlink.link(name)
            assert vxlan is not None
            self._flood[vxlan.index] = set()
            self._links.ensure_guard(j, vxlan, GuardKind.OPEN, fresh=True)
        else:
            self._links.ensure_guard(j, vxlan, GuardKind.OPEN)
        advice = None
        if settings.multicast and not vxlan.up:  # going up joins the group
            advice = self.multicast_limits.remedies()
        self._links.fix(j, vxlan, master=bridge.index, mtu=settings.vxlan_mtu, advice=advice)
        if settings.evpn:
            # Remote MACs are FRR's extern_learn entries: the bridge learns
            # none on this port. Neighbour suppression here: a VM's ARP or
            # solicitation for a MAC behind this port is answered by the
            # bridge from FRR's neighbour entries, and no ARP or solicitation
            # whose MAC the bridge knows is flooded through it.
            self._links.fix_port_flags(
                j,
                vxlan.name,
                PortFlags(learning=False, unicast_flood=True, locked=False, neigh_suppress=True),
            )
        else:
            self.sync_peers(j, vxlan, self.peers(vni, state))

    def _take_spare(self, j: Journal | None, vni: int) -> bool:
        """A spare bridge renamed for ``vni``: whether there was one. A spare
        another program set up or enslaved is deleted, one it renamed is left
        to the reconcile."""
        while self._spares and self._deleter is not None:
            index = self._spares.pop()
            if not self._deleter.reclaim(index):
                continue  # being deleted
            spare = self._netlink.link_by_index(index)
            if spare is None or spare.kind != "bridge" or spare.name != spare_name(index):
                continue
            if spare.up or spare.master is not None:
                self._deleter.delete(spare.name, index)
                continue

            def undo(index: int = index) -> None:
                self._netlink.rename_link(index, spare_name(index), alias=spare_alias())
                self._keep(index)

            step(
                j,
                f"take spare bridge {spare.name} for vni {vni}",
                partial(self._netlink.rename_link, index, bridge_name(vni), alias=vni_alias(vni)),
                undo,
            )
            return True
        return False

    def _vxlan_fits(self, vxlan: Link, vni: int) -> bool:
        settings = self._settings
        underlay = settings.underlay
        info = vxlan.info
        v6 = underlay.version == 6
        local = info.get("IFLA_VXLAN_LOCAL6" if v6 else "IFLA_VXLAN_LOCAL")
        group = info.get("IFLA_VXLAN_GROUP6" if v6 else "IFLA_VXLAN_GROUP")
        wanted_group = flood_group(vni, underlay.version) if settings.multicast else None
        return (
            vxlan.kind == "vxlan"
            and info.get("IFLA_VXLAN_ID") == vni
            and local is not None
            and ipaddress.ip_address(local) == ipaddress.ip_address(underlay.address)
            and (str(ipaddress.ip_address(group)) if group else None) == wanted_group
            and info.get("IFLA_VXLAN_LINK") == underlay.index
            and info.get("IFLA_VXLAN_PORT") == settings.vxlan_port
            and info.get("IFLA_VXLAN_LEARNING") == int(not settings.evpn)
        )

    def sync_peers(self, j: Journal | None, vxlan: Link, wanted: tuple[str, ...]) -> None:
        """Make the VXLAN device flood to exactly ``wanted`` (besides its group)."""
        underlay = self._settings.underlay
        for peer in wanted:
            if ip_version(peer) != underlay.version:
                raise DataplaneError(
                    f"peer {peer} is not of the underlay's family ({underlay.address})"
                )
        group = flood_group(vni_of(vxlan.name), underlay.version)
        present = self._flood_peers(vxlan.index) - {group}

        def add(peer: str) -> None:
            self._netlink.fdb_append(vxlan.index, peer)
            self._flood_peers(vxlan.index).add(peer)

        def remove(peer: str) -> None:
            self._netlink.fdb_delete(vxlan.index, peer)
            self._flood_peers(vxlan.index).discard(peer)

        for peer in wanted:
            if peer not in present:
                step(
                    j, f"add peer {peer} to {vxlan.name}", partial(add, peer), partial(remove, peer)
                )
        for peer in sorted(present - set(wanted)):
            step(
                j,
                f"remove peer {peer} from {vxlan.name}",
                partial(remove, peer),
                partial(add, peer),
            )

    def _flood_peers(self, index: int) -> set[str]:
        """The flooding peers of VXLAN device ``index``, from one dump of the
        forwarding database kept up to date since (a dump is O(every entry))."""
        if index not in self._flood and not self._flood_loaded:
            for known, peers in self._netlink.flood_peers().items():
                self._flood.setdefault(known, peers)
            self._flood_loaded = True
        return self._flood.setdefault(index, set())

    def sync_neighbours(self, j: Journal | None, vni: int, state: StateView) -> None:
        """With EVPN, the VNI's bridge holds a permanent neighbour entry for each
        IP of its vnics (FRR advertises each as a type-2 MAC/IP route at once,
        and the bridge answers ARP for it), and no other entry of ours."""
        if not self._settings.evpn:
            return
        vnics = [vnic for vnic in state.vnics_in(vni) if self._settings.has_port(vnic)]
        if not vnics:
            return
        bridge = self._netlink.link(bridge_name(vni))
        if bridge is None:
            raise DataplaneError(f"vni {vni}: bridge {bridge_name(vni)} is missing")
        index = bridge.index
        present = self._netlink.static_neighbours(index)
        to_set, to_remove = neighbour_changes(present, wanted_neighbours(vnics))
        for ip, mac in to_set:
            old = present.get(ip)
            step(
                j,
                f"set neighbour {ip} at {mac} on {bridge.name}",
                partial(self._netlink.set_neighbour, index, ip, mac),
                partial(self._netlink.set_neighbour, index, ip, old)
                if old
                else partial(self._netlink.delete_neighbour, index, ip),
            )
        for ip in to_remove:
            step(
                j,
                f"remove neighbour {ip} from {bridge.name}",
                partial(self._netlink.delete_neighbour, index, ip),
                partial(self._netlink.set_neighbour, index, ip, present[ip]),
            )

    def remove_if_unused(self, j: Journal, vni: int, state: StateView) -> None:
        if self.used(vni, state):
            return
        for name in (vxlan_name(vni), bridge_name(vni)):
            link = self._netlink.link(name)
            if link is not None:
                # Only once the request has succeeded: a bridge re-created by
                # an undo would come back with another MAC and bridge id.
                if link.kind == "bridge" and self._keeps_spares():
                    j.after_success(f"keep {name} spare", partial(self._spare, vni, link))
                else:
                    j.after_success(f"delete {name}", partial(self._delete_link, vni, link))

    def _keeps_spares(self) -> bool:
        return self._deleter is not None and not self._settings.evpn

    def _keep(self, index: int) -> None:
        assert self._deleter is not None
        self._spares.append(index)
        self._deleter.keep(spare_name(index), index)

    def _spare(self, vni: int, bridge: Link) -> None:
        """The emptied bridge down and renamed aside, for a new VNI (its VXLAN
        device left it just before, in :meth:`_delete_link`), or deleted when
        :data:`SPARE_BRIDGES` wait already."""
        index = bridge.index
        assert self._deleter is not None
        # the thread deletes spares after a quiet second: those no longer count
        self._spares = [spare for spare in self._spares if self._deleter.keeps(spare)]
        if len(self._spares) >= SPARE_BRIDGES:
            self._delete_link(vni, bridge)
            return
        try:
            if bridge.up:
                self._netlink.set_link(index, up=False)
            self._netlink.rename_link(index, spare_name(index), alias=spare_alias())
        except DataplaneError as exc:
            log.error("vni %d: keeping %s spare: %s; deleted instead", vni, bridge.name, exc)
            self._delete_link(vni, bridge)
            return
        self._netlink.forget(bridge.name)
        self._keep(index)

    def _delete_link(self, vni: int, link: Link) -> None:
        """Delete a VNI's device and forget its flooding peers (ifindexes are not
        reused, so the entry of a deleted device would stay for ever): at once,
        or in the deletion thread, since the kernel spends ~25 ms per link
        deleted waiting for its readers to let go; a request wanting the VNI
        again waits for it (:meth:`_await_deletion`)."""
        self._flood.pop(link.index, None)
        deleter = self._deleter
        if deleter is None:
            self._netlink.delete_link(link.index)
            return
        for old in [v for v, gone in self._deletions.items() if not deleter.pending(gone)]:
            del self._deletions[old]
        if link.kind == "vxlan" and (link.up or link.master is not None):
            # Down, it leaves its multicast group at once: the groups of
            # devices waiting for the thread count against the namespace's
            # limit (igmp_max_memberships) otherwise. Off its bridge, which
            # may become a spare for another VNI.
            try:
                self._netlink.set_link(link.index, up=False, nomaster=True)
            except DataplaneError as exc:
                log.error("vni %d: %s; deleted anyway", vni, exc)
        self._netlink.forget(link.name)
        self._deletions.setdefault(vni, set()).add(link.index)
        deleter.delete(link.name, link.index)

    def _await_deletion(self, vni: int) -> None:
        """Before the VNI's devices are looked at: the old ones gone, if being deleted."""
        indexes = self._deletions.get(vni)
        if indexes is None or self._deleter is None:
            return
        if not self._deleter.wait(indexes):
            raise DataplaneError(
                f"vni {vni}: its previous bridge and VXLAN device are still being deleted; "
                "try again"
            )
        del self._deletions[vni]

    def settle_deletions(self) -> None:
        """Wait for every deletion under way (a reconcile is about to list the
        links), and leave the spare bridges to the reconcile, which deletes them."""
        if self._deleter is None:
            return
        for index in self._spares:
            self._deleter.reclaim(index)
        self._spares.clear()
        if self._deleter.wait():
            self._deletions.clear()
