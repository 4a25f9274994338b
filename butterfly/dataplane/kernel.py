"""The Linux kernel data plane: bridges, VXLAN, taps, veths and nftables.

Owns :class:`KernelDataplane`, the :class:`~butterfly.dataplane.base.Dataplane`
that makes the kernel of the network namespace it runs in carry the model:

- per VNI, a bridge ``bfbr<vni>`` and a VXLAN device ``bfvx<vni>`` on the
  underlay (flooding to the VNI's multicast group, or to static peers),
  present while the VNI has a vnic on this host;
- per vnic, a port on that bridge: a persistent tap (TAP) or a veth whose
  other end sits in the vnic's network namespace with its MAC and IPs (NETNS);
  a VHOST_USER_SERVER vnic gets the same persistent tap as a TAP vnic, which
  a vhost-user backend (:class:`~butterfly.dataplane.base.VhostPorts`, given
  by the daemon) serves on ``<socket-dir>/qemu-vhost-<id>``: filtering,
  anti-spoofing, counters and tracing are the kernel's for every kind;
- security groups, anti-spoofing and conntrack zones in butterfly's nftables
  tables (see :mod:`butterfly.dataplane.ruleset` for the layout);
- on every port and VXLAN device, before it joins its bridge, the port guard
  that keeps filtering closed without those tables
  (:mod:`butterfly.dataplane.guard`);
- packet traces (:mod:`butterfly.dataplane.tracing`).

Every request is atomic (:mod:`butterfly.dataplane.journal`): nftables
changes go first when adding (a port never forwards unfiltered) and after
the port is gone when removing, and any failure undoes the steps made.
What the tables hold is mirrored in memory, so a request sends only the
difference for the objects it touches; :meth:`KernelDataplane.reconcile`
reads the kernel back and repairs everything, without touching what is
already right, so established flows survive a daemon restart, and puts back
what another program changed (the daemon's drift repair runs it; links
renamed away get their names back, tables lost their ids).

This class composes the parts and orders their steps; each part owns one
kind of kernel object: :mod:`.nftables_state` (the tables' mirror, diff
and ids), :mod:`.vni` (bridges, VXLAN devices, flooding), :mod:`.ports`
(taps, veths, vhost-user serving), :mod:`.peer` (a veth's end inside the
vnic's namespace), :mod:`.links` (what every link goes through),
:mod:`.tracing` (traces), :mod:`.graph` (the picture), :mod:`.cleanup`
(removing it all), :mod:`.fastpath` (the eBPF fast path's program and maps).
It is given the kernel interfaces it works through (:mod:`.kernel_io`;
:func:`open_kernel` opens the real ones), so its logic runs on in-memory
ones in unit tests.

Not thread-safe: the service calls one method at a time, from the thread
that built the data plane.
"""

import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial

from butterfly.dataplane.base import Attachment, Counters, Progress, SgChange, VhostPorts
from butterfly.dataplane.cleanup import cleanup
from butterfly.dataplane.deleter import LinkDeleter
from butterfly.dataplane.evpn import FrrReader
from butterfly.dataplane.fastpath import FastPath, FastPort, PendingFastPath
from butterfly.dataplane.graph import draw
from butterfly.dataplane.guard import ANCHORS
from butterfly.dataplane.journal import FaultHook, Journal, best_effort, journal, step
from butterfly.dataplane.kernel_io import KernelIo, open_kernel
from butterfly.dataplane.links import Links
from butterfly.dataplane.naming import (
    bridge_name,
    spare_name,
    tap_name,
    vhost_socket_path,
    vni_of,
    vnic_alias,
    vxlan_name,
)
from butterfly.dataplane.netlink import Link
from butterfly.dataplane.nftables_state import NftablesState
from butterfly.dataplane.ports import Ports
from butterfly.dataplane.ruleset import NO_LIMITS, ConnLimits
from butterfly.dataplane.settings import KernelSettings, what
from butterfly.dataplane.sniffing import Sniffer
from butterfly.dataplane.tracing import VnicTraces, trace_settings
from butterfly.dataplane.underlay import find_underlay
from butterfly.dataplane.vni import Vnis
from butterfly.dataplane.watch import KernelWatch, Scope
from butterfly.errors import ConfigError, DataplaneError, NotSupported
from butterfly.model import SecurityGroup, StateView, Vnic, VnicType
from butterfly.model.addresses import ip_version
from butterfly.model.firewall import has_outbound, referenced_groups
from butterfly.model.sessions import Session

__all__ = ["KernelDataplane", "KernelIo", "open_kernel"]

log = logging.getLogger(__name__)


class KernelDataplane:
    """The kernel data plane of the network namespace it is created in.

    ``underlay_ip``: the daemon's --ip; None takes ``underlay_interface``
    (--dpdk-args' iface), else the default route's interface. ``socket_dir``:
    where traces and their pid files go by default. ``nic_mtu``: the vnics'
    MTU (default: the underlay's minus the VXLAN overhead). ``offload``:
    False turns off the checksum and segmentation offloads of both ends of
    NETNS vnics' veths (--no-offload; a tap's are set by its reader: the
    vhost-user backend, or QEMU for a TAP vnic). ``packet_trace_default``: trace vnics whose
    ``packet_trace`` is None. ``static_peers``: VXLAN peers flooded for every
    VNI (vxlan-peers). ``multicast``: flood to the VNI's multicast group
    (default: only when no static peers are configured). ``vhost``: the
    backend that serves VHOST_USER_SERVER vnics' sockets on their taps;
    without one such vnics are refused as not supported; ``vhost_loop``
    which loop it runs and why, for the graph. ``limits``: what a
    filtered vnic may start unless it says otherwise (0: no cap). ``evpn``: FRR
    carries the VNIs (:mod:`butterfly.dataplane.evpn`; neither multicast
    nor static peers), ``frr`` reads its state for the graph. ``fast_path``:
    the eBPF fast path to attach to every port and keep told of the vnics
    (:mod:`butterfly.dataplane.fastpath`; None: bridge + nftables only); a
    :class:`PendingFastPath` is loaded by the first reconcile, as its first
    step (a daemon serves before it: the kernel's verifier takes 0.1-0.35 s),
    and until that reconcile has attached it everywhere status says so.
    ``fast_path_status`` why it is (not) used, for the graph.
    ``defer_deletes``: a thread deletes the links a request no longer needs
    (removed ports, a VNI's devices) after its reply, once no request has
    run for a while (:mod:`.deleter`). ``fault_hook``: tests
    only, see :mod:`butterfly.dataplane.journal`.

    ``kernel``: the kernel interfaces to work through (:func:`open_kernel`
    opens the real ones); the data plane owns them from then on, and
    closes them at once if it raises.

    Raises ConfigError for an unusable option, DataplaneError when the
    kernel lacks what is needed.
    """

    def __init__(
        self,
        *,
        kernel: KernelIo,
        underlay_ip: str | None,
        socket_dir: str,
        underlay_interface: str | None = None,
        nic_mtu: int | None = None,
        offload: bool = True,
        packet_trace_default: bool = False,
        vxlan_port: int = 4789,
        static_peers: tuple[str, ...] = (),
        multicast: bool | None = None,
        vhost: VhostPorts | None = None,
        vhost_loop: str = "",
        evpn: bool = False,
        frr: FrrReader | None = None,
        limits: ConnLimits = NO_LIMITS,
        defer_deletes: bool = False,
        fault_hook: FaultHook | None = None,
        sniff_cross_vni: bool = False,
        fast_path: FastPath | PendingFastPath | None = None,
        fast_path_status: str = "off",
    ) -> None:
        try:
            if evpn and (static_peers or multicast):
                raise ConfigError(
                    "underlay evpn: FRR floods every VNI; give neither vxlan-peers nor multicast"
                )
            underlay = find_underlay(kernel.netlink, underlay_ip, underlay_interface)
            if underlay_interface not in (None, underlay.ifname):
                log.warning(
                    "dpdk-args names iface %s, but --ip %s is on %s: VXLAN runs on %s",
                    underlay_interface,
                    underlay_ip,
                    underlay.ifname,
                    underlay.ifname,
                )
            for peer in static_peers:
                if ip_version(peer) != underlay.version:
                    raise ConfigError(
                        f"vxlan-peers: peer {peer} is not of the underlay's family "
                        f"(underlay {underlay.address})"
                    )
        except BaseException:
            kernel.close()
            raise
        self._kernel = kernel
        self._netlink = kernel.netlink
        self._frr = frr or FrrReader()
        self._fault_hook = fault_hook
        vnic_mtu = nic_mtu or underlay.vxlan_mtu
        self._settings = settings = KernelSettings(
            underlay=underlay,
            socket_dir=socket_dir,
            vnic_mtu=vnic_mtu,
            vxlan_mtu=min(vnic_mtu, underlay.vxlan_mtu),
            vxlan_port=vxlan_port,
            offload=offload,
            trace_default=packet_trace_default,
            static_peers=static_peers,
            multicast=not (static_peers or evpn) if multicast is None else multicast,
            evpn=evpn,
            limits=limits,
            defer_deletes=defer_deletes,
            vhost=vhost is not None,
        )
        self._tables = NftablesState(kernel.nft, settings)
        self._pending_fast = fast_path if isinstance(fast_path, PendingFastPath) else None
        self._fast_attached: str | None = None
        """The status of a fast path loaded, once a reconcile has attached it everywhere."""
        self._fast = fast_path if isinstance(fast_path, FastPath) else None
        self._fast_status = fast_path_status
        self._vhost_loop = vhost_loop
        self._links = Links(kernel.netlink, kernel.guards, fast_path=_programs(self._fast))
        self._deleter = LinkDeleter() if defer_deletes else None
        self._vnis = Vnis(
            self._netlink,
            self._links,
            settings,
            zone_count=lambda: len(self._tables.zones),
            deleter=self._deleter,
        )
        self._traces = VnicTraces(socket_dir=socket_dir, default=packet_trace_default)
        self._ports = Ports(
            self._netlink,
            self._links,
            settings,
            vhost=vhost,
            traces=self._traces,
            deleter=self._deleter,
        )
        self._unprimed: list[KernelWatch] = []
        self._sniffer = Sniffer(kernel.nft, cross_vni=sniff_cross_vni)
        self._conntrack = kernel.conntrack
        self._closed = False

    # the Dataplane protocol

    def reconcile(self, state: StateView) -> None:
        """Repair everything towards ``state`` at once (see :meth:`reconcile_steps`)."""
        for _ in self.reconcile_steps(state):
            pass

    def reconcile_steps(self, state: StateView) -> Iterator[Progress]:
        """Repair everything towards ``state``, one object per step.

        Between two steps the caller may apply requests (this object, from
        the same thread): each step looks at ``state`` as it is then, so a
        vnic deleted meanwhile is not repaired and a link that a new vnic now
        owns is not removed. Raises DataplaneError at the end, listing what
        could not be repaired, after repairing all the rest.
        """
        problems: list[str] = []
        if self._load_fast_path(problems):
            yield Progress(0, 0)  # requests waiting go before the link dump
        self._vnis.forget_flooding()
        # What the deletion thread is deleting would look like leftovers to delete.
        self._vnis.settle_deletions()
        with self._netlink.snapshot():
            for watch in self._unprimed:
                watch.prime(self._netlink.links())
            self._unprimed.clear()
            yield from self._reconcile(state, problems)
        if self._fast_attached is not None:  # on every port now, its maps filled
            self._fast_status, self._fast_attached = self._fast_attached, None
        if problems:
            raise DataplaneError("reconcile: " + "; ".join(problems))

    def _reconcile(self, state: StateView, problems: list[str]) -> Iterator[Progress]:
        self._links.rename_strays(problems)
        best_effort(problems, "port guard", partial(self._links.ensure_blocks, refresh=True))
        vnics = [vnic for vnic in state.vnics() if self._ports.pluggable(vnic)]
        wanted_ports = {tap_name(vnic.id) for vnic in vnics}
        wanted_vnis = {vnic.vni for vnic in vnics}
        served = {vnic.id for vnic in vnics if vnic.type == VnicType.VHOST_USER_SERVER}
        for vnic_id in sorted(self._ports.served() - served):
            best_effort(problems, f"nic {vnic_id!r}", partial(self._ports.stop_serving, vnic_id))
        owned = self._links.owned()
        spares = {name for name, link in owned.items() if name == spare_name(link.index)}
        stale_ports = [
            link
            for name, link in owned.items()
            if (link.kind in ("tun", "veth") and name not in wanted_ports | ANCHORS)
            or name in spares
        ]
        stale_vnis = [
            link
            for name, link in owned.items()
            if link.kind in ("vxlan", "bridge")
            and name not in spares
            and vni_of(name) not in wanted_vnis
        ]
        progress = Progress(0, len(stale_ports) + 1 + len(wanted_vnis) + len(vnics) + 1)
        yield progress  # requests already waiting go before the nftables step, the longest
        for link in stale_ports:
            if self._still_stale(link, state):
                best_effort(
                    problems, f"link {link.name}", partial(self._netlink.delete_link, link.index)
                )
            yield (progress := progress.next())
        self._tables.reconcile(state, self._ported(state))
        self._revoke_admissions(None)
        if self._settings.multicast:
            # Left-over devices still hold their groups until the end.
            devices = {vxlan_name(vni) for vni in wanted_vnis}
            devices.update(name for name, link in owned.items() if link.kind == "vxlan")
            self._vnis.multicast_limits.ensure(len(devices))
        yield (progress := progress.next())
        for vni in sorted(wanted_vnis):
            if self._vnis.used(vni, state):
                best_effort(problems, f"vni {vni}", partial(self._vnis.ensure, None, vni, state))
                # EVPN's IPv6 neighbour entries live on the bridge.
                links = (
                    (vxlan_name(vni),)
                    if self._settings.evpn
                    else (bridge_name(vni), vxlan_name(vni))
                )
                self._ipv6_off(problems, f"vni {vni}", *links, owned=owned)
            yield (progress := progress.next())
        for vnic_id in [vnic.id for vnic in vnics]:
            vnic = state.vnic(vnic_id)
            if vnic is not None and self._settings.has_port(vnic):
                best_effort(problems, what(vnic), partial(self._ports.ensure, None, vnic, None))
                best_effort(problems, what(vnic), partial(self._ports.serve, None, vnic))
                self._ipv6_off(problems, what(vnic), tap_name(vnic.id), owned=owned)
            yield (progress := progress.next())
        for vni in sorted(wanted_vnis):
            # A bridge made again has lost its neighbour entries (EVPN).
            if self._vnis.used(vni, state):
                best_effort(
                    problems, f"vni {vni}", partial(self._vnis.sync_neighbours, None, vni, state)
                )
        for link in stale_vnis:
            if self._still_stale(link, state):
                best_effort(
                    problems, f"link {link.name}", partial(self._netlink.delete_link, link.index)
                )
        self._traces.reconcile(self._ported(state), problems)
        best_effort(problems, "sniffing", lambda: self._sniffer.apply(self._sniffer.rescan(state)))
        sync = partial(self._sync_fast_path, None, state, wanted_vnis, remade=None)
        best_effort(problems, "fast path", sync)
        yield progress.next()

    def _ipv6_off(
        self, problems: list[str], label: str, *names: str, owned: Mapping[str, Link]
    ) -> None:
        """IPv6 off on links found at the reconcile's start (one made since has
        it off already): earlier versions of butterfly left it on, and each
        such link's route slows every link change of the host."""
        for name in names:
            if name in owned:
                best_effort(problems, label, partial(self._netlink.disable_ipv6, name))

    def _ported(self, state: StateView) -> list[Vnic]:
        """The vnics of ``state`` that have a port here."""
        return [vnic for vnic in state.vnics() if self._settings.has_port(vnic)]

    def _still_stale(self, link: Link, state: StateView) -> bool:
        """Whether a link found stale is still there and still unwanted (a
        request applied since the reconcile began may have taken it over)."""
        now = self._netlink.link(link.name)
        if now is None or now.index != link.index:
            return False
        if link.name == spare_name(link.index):
            return True
        if link.kind in ("vxlan", "bridge"):
            return not self._vnis.used(vni_of(link.name), state)
        vnic_id = (link.alias or "").removeprefix(vnic_alias(""))
        vnic = state.vnic(vnic_id)
        return vnic is None or not self._settings.has_port(vnic) or tap_name(vnic.id) != link.name

    def repair(self, state: StateView, scope: Scope) -> None:
        """Put back what another program changed, looking only at what ``scope``
        names (a reconcile reads every link and port: seconds with thousands of
        vnics); raises DataplaneError listing what could not be repaired."""
        if scope.everything:
            self.reconcile(state)
            return
        problems: list[str] = []
        vnics = self._ported(state)
        if scope.tables:
            best_effort(problems, "nftables", partial(self._tables.reconcile, state, vnics))
            self._revoke_admissions(None)
        self._links.rename_strays(problems, scope.links)
        # A block's programs are shared: a change seen on any port is theirs.
        blocks = partial(self._links.ensure_blocks, fast_path=self._pending_fast is None)
        best_effort(problems, "port guard", blocks)
        vnis = {vnic.vni for vnic in vnics if _names_vni(scope.links, vnic.vni)}
        if vnis:
            self._vnis.forget_flooding()
        for vni in sorted(vnis):
            best_effort(problems, f"vni {vni}", partial(self._vnis.ensure, None, vni, state))
        for vnic in vnics:
            if vnic.vni in vnis or tap_name(vnic.id) in scope.links:
                best_effort(problems, what(vnic), partial(self._ports.ensure, None, vnic, None))
                best_effort(problems, what(vnic), partial(self._ports.serve, None, vnic))
        for vni in sorted(vnis):
            # A bridge made again has lost its neighbour entries (EVPN).
            best_effort(
                problems, f"vni {vni}", partial(self._vnis.sync_neighbours, None, vni, state)
            )
        if scope.tables or scope.links:
            # The copy rules hook ports by device: a port made again lost them.
            best_effort(problems, "sniffing", partial(self._repair_sniffing, state))
        touched = {
            vnic.vni for vnic in vnics if vnic.vni in vnis or tap_name(vnic.id) in scope.links
        }
        if touched:
            sync = partial(self._sync_fast_path, None, state, touched, remade=None)
            best_effort(problems, "fast path", sync)
        if problems:
            raise DataplaneError("repair: " + "; ".join(problems))

    def _repair_sniffing(self, state: StateView) -> None:
        """The copy rules as ``state`` wants them (no transaction while no vnic sniffs)."""
        plan = self._sniffer.rescan(state)
        if plan.rules or self._sniffer.applied.rules:
            self._sniffer.apply(plan)

    def plug(self, vnic: Vnic, replaced: Vnic | None, state: StateView) -> Attachment:
        if vnic.type == VnicType.VHOST_USER_SERVER and not self._settings.vhost:
            raise NotSupported(
                f"{what(vnic)}: type VHOST_USER_SERVER (vhost-user) is not supported by a "
                "data plane without a vhost-user backend; use TAP or NETNS"
            )
        if not self._settings.has_port(vnic):
            raise NotSupported(f"{what(vnic)}: type {vnic.type.name} is not supported")
        self._sniffer.check(vnic, state)
        previous = replaced if replaced is not None and self._settings.has_port(replaced) else None
        with self._journal(what(vnic)) as j:
            self._tables.load()
            if previous is not None and not self._ports.reusable(previous, vnic):
                self._traces.stop(previous)
                self._ports.remove(j, previous)
            self._tables.commit(
                j,
                state,
                vnics=[(replaced, vnic.id)],
                vnis={vnic.vni} | ({previous.vni} if previous else set()),
                sgs=_current(state, [*vnic.security_groups, *_groups(previous)]),
            )
            self._revoke_admissions(j)
            self._vnis.ensure(j, vnic.vni, state)
            self._ports.ensure(j, vnic, previous)
            self._vnis.sync_neighbours(j, vnic.vni, state)
            self._ports.serve(j, vnic)
            if previous is not None and previous.vni != vnic.vni:
                self._vnis.remove_if_unused(j, previous.vni, state)
                self._vnis.sync_neighbours(j, previous.vni, state)
            self._sync_sniffing(j, state, vnic, replaced)
            self._traces.apply(j, vnic)
            vnis = {vnic.vni} | ({replaced.vni} if replaced else set())
            self._sync_fast_path(j, state, vnis, remade={vnic.id}, named={vnic.id})
        return self.attachment(vnic)

    def update(self, before: Vnic, after: Vnic, state: StateView) -> None:
        if not self._settings.has_port(after):
            return
        with self._journal(what(after)) as j:
            self._tables.load()
            self._tables.commit(
                j,
                state,
                vnics=[(before, after.id)],
                vnis={after.vni},
                sgs=_current(state, [*before.security_groups, *after.security_groups]),
            )
            self._revoke_admissions(j)
            if after.type == VnicType.NETNS and before.ips != after.ips:
                self._ports.configure_peer(j, after, before)
            if before.ips != after.ips:
                self._vnis.sync_neighbours(j, after.vni, state)
            self._sync_sniffing(j, state, after)
            self._traces.apply(j, after)
            vnis = {before.vni, after.vni}
            self._sync_fast_path(j, state, vnis, changed={after.id}, named={after.id})

    def unplug(self, vnic: Vnic, state: StateView) -> None:
        if not self._settings.has_port(vnic):
            return
        with self._journal(what(vnic)) as j:
            self._tables.load()
            self._ports.remove(j, vnic)
            self._tables.commit(
                j,
                state,
                vnics=[(vnic, vnic.id)],
                vnis={vnic.vni},
                sgs=_current(state, vnic.security_groups),
            )
            self._revoke_admissions(j)
            self._vnis.remove_if_unused(j, vnic.vni, state)
            self._vnis.sync_neighbours(j, vnic.vni, state)
            self._sync_sniffing(j, state, vnic)
            self._sync_fast_path(j, state, {vnic.vni}, named={vnic.id})
        self._traces.stop(vnic)

    def update_security_groups(self, changes: Mapping[str, SgChange], state: StateView) -> None:
        self._tables.load()
        referenced: set[str] = set()
        profiles: set[tuple[str, ...]] = set()
        for sg_id, change in changes.items():
            for sg in (change.before, change.after):
                if sg is not None:
                    referenced |= referenced_groups([sg])
            if has_outbound(change.before) != has_outbound(change.after):
                profiles |= {
                    vnic.security_groups
                    for vnic in state.vnics_using(sg_id)
                    if self._settings.filtered(vnic)
                }
        sgs = _current(state, referenced - set(changes))
        sgs.update((sg_id, change.before) for sg_id, change in changes.items())
        label = "security group " + ", ".join(repr(sg_id) for sg_id in sorted(changes))
        with self._journal(label) as j:
            self._tables.commit(j, state, sgs=sgs, profiles=profiles)
            self._revoke_admissions(j)

    def update_peers(self, vni: int, state: StateView) -> None:
        if self._settings.evpn:
            raise NotSupported(
                f"vni {vni}: static peers are not supported with underlay evpn "
                "(FRR learns every VNI's VTEPs)"
            )
        self._tables.load()
        wanted = self._vnis.peers(vni, state)
        with self._journal(f"vni {vni}") as j:
            vxlan = self._netlink.link(vxlan_name(vni))
            if vxlan is not None:
                self._vnis.sync_peers(j, vxlan, wanted)

    def attachment(self, vnic: Vnic) -> Attachment:
        settings = self._settings
        mtu: int | None = settings.vnic_mtu
        if vnic.type == VnicType.VHOST_USER_SERVER:
            path = vhost_socket_path(settings.socket_dir, vnic.id)
            mtu = settings.vnic_mtu if settings.vhost else None
        else:
            path = vnic.netns if vnic.type == VnicType.NETNS else tap_name(vnic.id)
        traced, trace_file = trace_settings(
            vnic, default=settings.trace_default, socket_dir=settings.socket_dir
        )
        return Attachment(path, mtu, packet_trace=traced, packet_trace_path=trace_file)

    def counters(self, vnic: Vnic) -> Counters:
        """The host-side interface's bytes: what it transmits went in to the
        guest, what it received came out of the guest (for a vhost-user vnic,
        what its backend read from and wrote to the tap)."""
        if not self._settings.has_port(vnic):
            return Counters()
        link = self._netlink.link(tap_name(vnic.id), fresh=True)
        if link is None:
            raise DataplaneError(f"{what(vnic)}: interface {tap_name(vnic.id)} is missing")
        if not vnic.sniff_target_nic_id:
            return Counters(in_bytes=link.tx_bytes, out_bytes=link.rx_bytes)
        frames, octets = self._sniffer.copied(vnic.id)
        return Counters(link.tx_bytes, link.rx_bytes, sniffed_frames=frames, sniffed_bytes=octets)

    def sessions(self, vnic: Vnic) -> tuple[Session, ...]:
        self._tables.load()
        zone = self._tables.zones.get(vnic.vni)
        if zone is None or not vnic.ips:
            return ()
        return self._conntrack.sessions(zone, vnic.ips)

    def load_sessions(self, vnic: Vnic, sessions: Sequence[Session]) -> int:
        self._tables.load()
        zone = self._tables.zones.get(vnic.vni)
        if zone is None:
            raise DataplaneError(f"{what(vnic)}: vni {vnic.vni} has no conntrack zone here")
        return self._conntrack.load(zone, sessions)

    def conntrack_zones(self) -> dict[int, int]:
        """VNI -> its conntrack zone. Safe from another thread (the metrics'):
        the copy is one step under CPython's lock, and the mapping is replaced
        or changed a key at a time, never left half-made."""
        return dict(self._tables.zones)

    def graph(self, state: StateView) -> str:
        self._tables.load()
        return draw(
            state,
            settings=self._settings,
            links=self._netlink.link_names(),
            zones=self._tables.zones,
            drops=self._tables.limit_drops(),
            evpn=self._frr.status() if self._settings.evpn else None,
            peers=partial(self._vnis.peers, state=state),
            tracing=self._traces.tracing,
            guest=lambda vnic: self.attachment(vnic).path,
            fast_path=self._fast_status,
            vhost_loop=self._vhost_loop,
            forwarded=partial(self._forwarded, self._fast.served() if self._fast else {}),
            tunneled=self._tunneled,
        )

    # watching (butterfly.daemon.drift)

    def watch(self, *, primed_by_reconcile: bool = False) -> KernelWatch:
        """Notifications of this namespace about butterfly's objects, from now on;
        ``primed_by_reconcile``: the next reconcile tells it the links (from
        its own dump: one dump less before a daemon answers)."""
        evpn, local_macs = self._settings.evpn, self._ports.local_macs
        if not primed_by_reconcile:
            return KernelWatch(self._netlink.links(), evpn=evpn, local_macs=local_macs)
        watch = KernelWatch(None, evpn=evpn, local_macs=local_macs)
        self._unprimed.append(watch)
        return watch

    def rewatch(self, watch: KernelWatch) -> None:
        watch.prime(self._netlink.links())

    def take_touched(self) -> set[int]:
        """Also the links the deletion thread deletes (see :mod:`.deleter`)."""
        touched = self._netlink.take_touched()
        if self._deleter is not None:
            touched |= self._deleter.take_deleted()
        return touched

    def close(self) -> None:
        """Stop talking to the kernel; bridges, ports, rules and traces stay.

        The vhost-user backend keeps serving: stopping it is its owner's call.
        """
        if not self._closed:
            self._closed = True
            if self._deleter is not None:
                self._deleter.close()
            self._traces.close()
            if self._fast is not None:
                self._fast.close()
            self._kernel.close()

    def cleanup(self) -> None:
        """Remove every kernel object butterfly created here (butterflyd --cleanup),
        after the backend has let go of the taps it served."""
        for vnic_id in sorted(self._ports.served()):
            self._ports.stop_serving(vnic_id)
        cleanup(socket_dir=self._settings.socket_dir)
        self._tables.forget()
        self._vnis.forget_flooding()
        self._traces.close()

    # sniffing

    @contextmanager
    def _journal(self, what: str) -> Iterator[Journal]:
        """A request's journal; the deletion thread waits until the API is
        quiet again (a link's deletion holds the RTNL lock ~25 ms)."""
        busy = self._deleter.busy() if self._deleter is not None else nullcontext()
        with busy, journal(what, self._fault_hook) as j:
            yield j

    def _sync_sniffing(self, j: Journal, state: StateView, *vnics: Vnic | None) -> None:
        """Mirror rules after a change of ``vnics`` (most requests: nothing to do)."""
        if not self._sniffer.affects(*vnics):
            return
        plan = self._sniffer.plan(state, [vnic for vnic in vnics if vnic is not None])
        previous = self._sniffer.applied
        j.step(
            "sniffing", partial(self._sniffer.apply, plan), partial(self._sniffer.apply, previous)
        )

    # the fast path

    def _load_fast_path(self, problems: list[str]) -> bool:
        """Load a :class:`PendingFastPath` (once; whether it was pending): from
        now on every port made or repaired gets the program, and
        :meth:`_sync_fast_path` fills its maps."""
        pending, self._pending_fast = self._pending_fast, None
        if pending is None:
            return False
        self._fast, status = pending.load()
        self._links.use_fast_path(_programs(self._fast))
        if self._fast is not None:
            log.info("fast path loaded; the reconcile attaches it to every port")
            self._fast_attached = status
            return True
        self._fast_status = status  # the bridge path stays: no program to wait for
        if pending.required:
            log.error("fast path: %s", status)
            problems.append(f"fast path: {status}")
        else:
            log.info("fast path: %s", status)
        return True

    def _revoke_admissions(self, j: Journal | None) -> None:
        """After the tables changed: the next frame of every unreplied flow meets
        them again (:meth:`FastPath.narrowed`; harmless when they widened)."""
        if self._fast is not None:
            step(j, "fast path admissions revoked", self._fast.narrowed)

    def _sync_fast_path(
        self,
        j: Journal | None,
        state: StateView,
        vnis: Iterable[int],
        *,
        remade: Collection[str] | None = (),
        changed: Collection[str] = (),
        named: Collection[str] | None = None,
    ) -> None:
        """Tell the fast path which vnics of ``vnis`` it serves, on which port
        (``remade``: the vnics whose port may have been made again, None: all;
        ``changed``: the vnics whose settings a request changed; ``named``: the
        only vnics a request changed, None: any; see :meth:`FastPath.plan`),
        then which of their VXLAN devices."""
        fast = self._fast
        if fast is None:
            return
        vnis = set(vnis)
        wanted = fast.plan(
            state,
            vnis,
            ported=self._settings.has_port,
            zones=self._tables.zones,
            port_index=self._port_index,
            remade=remade,
            changed=changed,
            named=named,
        )
        tunnels = fast.plan_tunnels(
            state,
            vnis,
            wanted,
            zones=self._tables.zones,
            tunnel_index=self._tunnel_index,
            remade=remade is None,
        )
        before = {vnic_id: fast.port(vnic_id) for vnic_id in wanted}
        before_tunnels = {vni: fast.tunnel(vni) for vni in tunnels}
        step(
            j,
            "fast path maps",
            partial(fast.set, wanted, tunnels),
            partial(fast.set, before, before_tunnels),
        )

    def _port_index(self, vnic_id: str) -> int | None:
        """Asked of the kernel even during a reconcile's snapshot: it made ports."""
        return self._netlink.index(tap_name(vnic_id))

    def _tunnel_index(self, vni: int) -> int | None:
        return self._netlink.index(vxlan_name(vni))

    def _tunneled(self, vni: int) -> str:
        """What the fast path does with the VNI's VXLAN device ("": nothing)."""
        fast = self._fast
        tunnel = fast.tunnel(vni) if fast is not None else None
        if fast is None or tunnel is None:
            return ""
        frames, octets = fast.forwarded(tunnel.ifindex)
        return f"to and from other hosts; {frames} frames, {octets} bytes forwarded from them"

    def _forwarded(self, served: Mapping[str, FastPort], vnic: Vnic) -> str:
        """What the fast path forwarded from ``vnic`` ("": it does not serve it);
        ``served``: what it serves (asked once per graph, not once per vnic)."""
        port = served.get(vnic.id)
        if self._fast is None or port is None:
            return ""
        frames, octets = self._fast.forwarded(port.ifindex)
        return f"{frames} frames, {octets} bytes forwarded"


def _programs(fast: FastPath | None) -> tuple[int, int] | None:
    """The fast path's programs for the ports (ingress, egress), None when it is off."""
    return (fast.fd, fast.admission_fd) if fast is not None else None


def _names_vni(names: frozenset[str], vni: int) -> bool:
    return bridge_name(vni) in names or vxlan_name(vni) in names


def _groups(vnic: Vnic | None) -> tuple[str, ...]:
    return vnic.security_groups if vnic is not None else ()


def _current(state: StateView, sg_ids: Iterable[str]) -> dict[str, SecurityGroup | None]:
    """Groups that did not change: their previous version is the current one."""
    return {sg_id: state.sg(sg_id) for sg_id in sg_ids}
