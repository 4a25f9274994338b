"""A vnic's port: the tap or veth on its VNI's bridge, and who serves it.

Owns :class:`Ports`: per vnic with a port, a persistent tap (TAP, and
VHOST_USER_SERVER, whose tap the vhost-user backend serves on the vnic's
socket) or a veth whose other end sits in the vnic's namespace
(:mod:`.peer` configures that end); created or put right with its guard,
MTU, bridge and forwarding flags (MAC pinning and locking: anti-spoofing in
the bridge itself); removed by renaming it aside until the request has
succeeded, then deleted (in a thread of its own with ``defer_deletes``).
"""

import logging
import os
from dataclasses import replace
from functools import partial

from butterfly.dataplane.base import VhostPorts
from butterfly.dataplane.deleter import LinkDeleter
from butterfly.dataplane.guard import GuardKind
from butterfly.dataplane.journal import Journal, step
from butterfly.dataplane.kernel_io import PortNetlink
from butterfly.dataplane.links import Links, PortFlags
from butterfly.dataplane.naming import (
    bridge_name,
    retired_name,
    tap_name,
    vhost_socket_path,
    vnic_alias,
)
from butterfly.dataplane.netlink import Link
from butterfly.dataplane.netns import open_netns
from butterfly.dataplane.offloads import turn_off_offloads
from butterfly.dataplane.peer import configure_peer
from butterfly.dataplane.settings import TAP_TYPES, KernelSettings, what
from butterfly.dataplane.tracing import VnicTraces
from butterfly.errors import DataplaneError
from butterfly.model import Vnic, VnicType

__all__ = ["Ports"]

log = logging.getLogger(__name__)


class Ports:
    """The vnics' ports; ``vhost`` serves VHOST_USER_SERVER vnics' taps."""

    def __init__(
        self,
        netlink: PortNetlink,
        links: Links,
        settings: KernelSettings,
        *,
        vhost: VhostPorts | None,
        traces: VnicTraces,
        deleter: LinkDeleter | None,
    ) -> None:
        """``deleter``: deletes removed ports after the request (None: at once)."""
        self._netlink = netlink
        self._links = links
        self._settings = settings
        self._vhost = vhost
        self._traces = traces
        self._served: dict[str, int] = {}
        """vnic id -> ifindex of the tap the backend was asked to serve it on."""
        self._deleter = deleter
        self.local_macs: set[tuple[int, str]] = set()
        """(VNI, MAC) of the vnics with a port, with EVPN: the watch reports
        FRR withdrawing one of them (their port then pins it again)."""

    def pluggable(self, vnic: Vnic) -> bool:
        """Whether ``vnic`` gets a port; says why not in the log."""
        if self._settings.has_port(vnic):
            return True
        if vnic.type == VnicType.VHOST_USER_SERVER:
            log.warning("%s: no vhost-user backend to serve it; not plugged", what(vnic))
        else:
            log.warning("%s: type %s has no kernel port; not plugged", what(vnic), vnic.type.name)
        return False

    @staticmethod
    def reusable(previous: Vnic, vnic: Vnic) -> bool:
        """Whether ``vnic`` can keep ``previous``'s port (a guest stays attached)."""
        return previous.type == vnic.type and previous.netns == vnic.netns

    def ensure(self, j: Journal | None, vnic: Vnic, previous: Vnic | None) -> None:
        """The vnic's port, created or put right, on its VNI's bridge."""
        settings = self._settings
        label = what(vnic)
        name = tap_name(vnic.id)
        link = self._links.own(name, label)
        if link is not None and not self._fits(link, vnic):
            self._traces.stop(vnic)
            step(j, f"delete {name}", partial(self._netlink.delete_link, link.index))
            link = None
        fresh = link is None
        if link is None:
            step(
                j,
                f"create {name}",
                partial(self._create, vnic),
                partial(self._links.delete, name),
            )
            link = self._netlink.link(name)
            if link is None:
                raise DataplaneError(f"{label}: interface {name} vanished")
            previous = None
        kind = GuardKind.FILTERED if settings.filtered(vnic) else GuardKind.OPEN
        self._links.ensure_guard(j, link, kind, fresh=fresh)
        bridge = self._netlink.link(bridge_name(vnic.vni))
        if bridge is None:
            raise DataplaneError(f"{label}: bridge {bridge_name(vnic.vni)} is missing")
        self._links.fix(
            j, link, master=bridge.index, mtu=settings.vnic_mtu, queue=settings.tap_queue(vnic)
        )
        if vnic.type == VnicType.NETNS and not settings.offload:
            step(j, f"turn off offloads of {name}", partial(turn_off_offloads, name))
        if link.alias is None:
            self._netlink.set_link(link.index, alias=vnic_alias(vnic.id))
        if previous is not None:
            self.local_macs.discard((previous.vni, previous.mac.lower()))
        # A tap made just now has no reader yet, so no carrier: nothing on its
        # port to read back (the dump walks the whole forwarding database).
        self._fix_forwarding(j, vnic, fresh=fresh, known_empty=fresh and vnic.type in TAP_TYPES)
        if vnic.type == VnicType.NETNS:
            configure_peer(j, vnic, previous, mtu=settings.vnic_mtu, offload=settings.offload)

    def configure_peer(self, j: Journal | None, vnic: Vnic, previous: Vnic | None) -> None:
        """A NETNS vnic's inside end, after its addresses changed."""
        settings = self._settings
        configure_peer(j, vnic, previous, mtu=settings.vnic_mtu, offload=settings.offload)

    def _fix_forwarding(
        self, j: Journal | None, vnic: Vnic, *, fresh: bool, known_empty: bool
    ) -> None:
        """A filtered vnic's port holds its MAC pinned and is locked to it (MAC
        anti-spoofing in the bridge itself), learns no address and gets no
        flooded unicast, so the only unicast frames reaching it are those to
        its MAC: the inet family names a frame's receiver by that MAC. A vnic
        bypassing filtering gets the bridge's defaults back, its MAC pinned
        too with EVPN (FRR advertises it before the VM speaks). No vnic port
        suppresses neighbour discovery: the kernel answers a request for a
        proxy only when it comes in on a port that does not (see the VXLAN
        port's flags in :meth:`butterfly.dataplane.vni.Vnis.ensure`).

        With EVPN, a MAC that FRR took from an existing port is not pinned
        back: another host advertised it since (a live migration's new host),
        and taking it back would bump its sequence number and make the two
        hosts take it from each other until FRR declares it duplicate. FRR
        withdrawing it gives it back (the watch reports that; see
        :attr:`local_macs`). A port made now claims its MAC at once.
        ``known_empty``: the port has no forwarding entry (not asked)."""
        name = tap_name(vnic.id)
        filtered = self._settings.filtered(vnic)
        pin = filtered or self._settings.evpn
        index = self._links.fix_port_flags(
            j,
            name,
            PortFlags(
                learning=not filtered,
                unicast_flood=not filtered,
                locked=filtered,
                neigh_suppress=False,
            ),
            what=what(vnic),
        )
        mac = vnic.mac.lower()
        entries = {} if known_empty else self._netlink.bridge_entries(index)
        for other, pinned in sorted(entries.items()):
            if (pin and other == mac) or not (filtered or pinned):
                continue
            restore = partial(self._netlink.pin_mac, index, other) if pinned else None
            step(
                j,
                f"remove {other} from {name}",
                partial(self._netlink.forget_mac, index, other),
                restore,
            )
        if self._settings.evpn:
            self.local_macs.add((vnic.vni, mac))
        if pin and not entries.get(mac, False):
            if not fresh and self._settings.evpn:
                bridge = self._netlink.link(bridge_name(vnic.vni))
                if bridge is not None and self._netlink.remote_by_frr(bridge.index, mac):
                    log.info("%s: FRR has its MAC at another host; not pinned back", what(vnic))
                    return
            step(
                j,
                f"pin {mac} to {name}",
                partial(self._netlink.pin_mac, index, mac),
                partial(self._netlink.forget_mac, index, mac),
            )

    def _fits(self, link: Link, vnic: Vnic) -> bool:
        if vnic.type in TAP_TYPES:
            return link.kind == "tun"
        if link.kind != "veth" or link.link_netnsid is None:
            return False
        fd = open_netns(vnic.netns, what(vnic))
        try:
            return self._netlink.netnsid(fd) == link.link_netnsid
        finally:
            os.close(fd)

    def _create(self, vnic: Vnic) -> None:
        name = tap_name(vnic.id)
        mtu = self._settings.vnic_mtu
        if vnic.type in TAP_TYPES:
            self._netlink.add_tap(
                name, mtu=mtu, alias=vnic_alias(vnic.id), queue=self._settings.tap_queue(vnic)
            )
            return
        fd = open_netns(vnic.netns, what(vnic))
        try:
            self._netlink.add_veth(
                name, mtu=mtu, alias=vnic_alias(vnic.id), peer_netns_fd=fd, peer_mac=vnic.mac
            )
        finally:
            os.close(fd)

    def remove(self, j: Journal, vnic: Vnic) -> None:
        """Set the vnic's port down (no frame crosses it) and rename it aside; it is
        deleted once the whole request has succeeded. A failure after this
        gives back the very same interface (same ifindex and MAC, the
        guest's link never reset), which re-creating one could not.

        A vhost-user guest is disconnected first, so the backend never reads a
        tap that is gone; the undo serves it again once the tap is back.
        """
        if vnic.id in self._served:
            step(
                j,
                f"stop serving {vhost_socket_path(self._settings.socket_dir, vnic.id)}",
                partial(self.stop_serving, vnic.id),
                partial(self.serve, None, vnic),
            )
        j.after_success(
            f"forget {vnic.mac} in vni {vnic.vni}",
            partial(self.local_macs.discard, (vnic.vni, vnic.mac.lower())),
        )
        name = tap_name(vnic.id)
        link = self._netlink.link(name)
        if link is None:
            return
        index = link.index
        if link.up:
            step(
                j,
                f"set {name} down",
                partial(self._netlink.set_link, index, up=False),
                partial(self._netlink.set_link, index, up=True),
            )
        step(
            j,
            f"rename {name} aside",
            partial(self._netlink.rename_link, index, retired_name(index)),
            partial(self._netlink.rename_link, index, name),
        )
        retired = replace(link, name=retired_name(index))
        j.after_success(f"delete {name}", partial(self._delete_retired, retired))

    def _delete_retired(self, link: Link) -> None:
        """A removed port, renamed aside: nobody will want it again, so with
        a deleter the deletion thread deletes a tap (see
        :mod:`butterfly.dataplane.deleter`), once off its bridge: it may wait
        there for seconds, and a bridge holds at most 1,023 ports. A veth
        goes at once: its other end is in the container's namespace, where
        the container or another host's daemon may want its name and MAC as
        soon as ``nic_del`` answers."""
        if self._deleter is None or link.kind == "veth":
            self._netlink.delete_link(link.index)
            return
        try:
            self._netlink.set_link(link.index, nomaster=True)
        except DataplaneError as exc:
            log.error("%s: %s; deleted anyway", link.name, exc)
        self._netlink.forget(link.name)
        self._deleter.delete(link.name, link.index)

    def serve(self, j: Journal | None, vnic: Vnic) -> None:
        """Have the backend serve a vhost-user vnic's socket on its tap.

        Nothing to do when it already serves this very tap (same ifindex):
        a replaced vnic keeps its socket and its guest stays connected. A tap
        made anew (repaired, or first plugged) is served (again).
        """
        if vnic.type != VnicType.VHOST_USER_SERVER or self._vhost is None:
            return
        name = tap_name(vnic.id)
        link = self._netlink.link(name)
        if link is None:
            raise DataplaneError(f"{what(vnic)}: interface {name} is missing")
        if self._served.get(vnic.id) == link.index:
            return
        vhost = self._vhost
        path = vhost_socket_path(self._settings.socket_dir, vnic.id)

        def serve() -> None:
            vhost.serve(vnic.id, socket_path=path, tap_name=name)
            self._served[vnic.id] = link.index

        step(j, f"serve {path}", serve, partial(self.stop_serving, vnic.id))

    def stop_serving(self, vnic_id: str) -> None:
        if self._vhost is not None:
            self._vhost.stop(vnic_id)
        self._served.pop(vnic_id, None)

    def served(self) -> set[str]:
        """The vnics the backend was asked to serve."""
        return set(self._served)
