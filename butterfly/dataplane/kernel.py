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

Not thread-safe: the service calls one method at a time, from the thread
that built the data plane.
"""

import contextlib
import errno
import glob
import ipaddress
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, NamedTuple, TypeVar

from butterfly.dataplane.base import Attachment, Counters, Progress, SgChange, VhostPorts
from butterfly.dataplane.conntrack import Conntrack
from butterfly.dataplane.deleter import PortDeleter
from butterfly.dataplane.evpn import (
    FrrReader,
    bridge_mac,
    neighbour_changes,
    wanted_neighbours,
)
from butterfly.dataplane.graph import PortView, VniView, render
from butterfly.dataplane.guard import SENDER_MARK, GuardKind, GuardPrograms
from butterfly.dataplane.journal import FaultHook, Journal, journal
from butterfly.dataplane.limits import MulticastLimits
from butterfly.dataplane.naming import (
    TABLE,
    bridge_name,
    is_butterfly_link,
    name_from_alias,
    profile_chains,
    retired_name,
    tap_name,
    trace_pidfile,
    vhost_socket_path,
    vni_alias,
    vnic_alias,
    vxlan_name,
)
from butterfly.dataplane.netlink import LLDP_FORWARD_MASK, Link, Netlink
from butterfly.dataplane.netns import open_netns, run_in_netns
from butterfly.dataplane.nft import Nftables
from butterfly.dataplane.offloads import turn_off_offloads
from butterfly.dataplane.ruleset import (
    BOOTSTRAP,
    BRIDGE,
    DROPS,
    INET,
    MAX_ID,
    NO_LIMITS,
    ConnLimits,
    Decl,
    Key,
    Layout,
    Listing,
    Obj,
    Structural,
    diff,
    parse_listing,
    tables,
)
from butterfly.dataplane.sniffing import Sniffer, remove_table
from butterfly.dataplane.tracing import Tracer, trace_settings
from butterfly.dataplane.underlay import Underlay, find_underlay, flood_group
from butterfly.dataplane.watch import KernelWatch, Scope
from butterfly.errors import ConfigError, DataplaneError, NotSupported
from butterfly.model import SecurityGroup, StateView, Vnic, VnicType
from butterfly.model.firewall import (
    has_outbound,
    referenced_groups,
    sg_filter,
    vnic_filter,
)
from butterfly.model.sessions import Session

__all__ = ["NETNS_PREFIX_V4", "NETNS_PREFIX_V6", "KernelDataplane", "cleanup"]

log = logging.getLogger(__name__)

K = TypeVar("K", str, int)

NETNS_PREFIX_V4 = 24
"""Prefix length given to a NETNS vnic's IPv4 addresses (the model has none)."""
NETNS_PREFIX_V6 = 64
_TAPS = (VnicType.TAP, VnicType.VHOST_USER_SERVER)
"""Types whose port is a persistent tap (a vhost-user backend serves the second)."""
_BR_NETFILTER = "/proc/sys/net/bridge/bridge-nf-call-iptables"
_BRIDGE_OPTIONS = {
    "IFLA_BR_STP_STATE": 0,
    "IFLA_BR_FORWARD_DELAY": 0,
    "IFLA_BR_MCAST_SNOOPING": 0,
    "IFLA_BR_NF_CALL_IPTABLES": 1,
    "IFLA_BR_NF_CALL_IP6TABLES": 1,
    "IFLA_BR_GROUP_FWD_MASK": LLDP_FORWARD_MASK,
}


class _PortFlags(NamedTuple):
    """A vnic port's forwarding behaviour in its bridge."""

    learning: bool
    unicast_flood: bool
    locked: bool
    neigh_suppress: bool


def _what(vnic: Vnic) -> str:
    return f"nic {vnic.id!r}"


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
    without one such vnics are refused as not supported. ``limits``: what a
    filtered vnic may start unless it says otherwise (0: no cap). ``evpn``: FRR
    carries the VNIs (:mod:`butterfly.dataplane.evpn`; neither multicast
    nor static peers), ``frr`` reads its state for the graph.
    ``defer_deletes``: delete links a request no longer needs after its
    reply: removed ports in a thread, a VNI's devices in
    :meth:`background_work` (the daemon's idle time). ``fault_hook``: tests
    only, see :mod:`butterfly.dataplane.journal`.

    Raises ConfigError for an unusable option, DataplaneError when the
    kernel lacks what is needed.
    """

    def __init__(
        self,
        *,
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
        evpn: bool = False,
        frr: FrrReader | None = None,
        limits: ConnLimits = NO_LIMITS,
        defer_deletes: bool = False,
        fault_hook: FaultHook | None = None,
        sniff_cross_vni: bool = False,
    ) -> None:
        if not os.path.exists(_BR_NETFILTER):
            raise DataplaneError(
                "security groups need the br_netfilter kernel module (modprobe br_netfilter)"
            )
        self._socket_dir = socket_dir
        self._trace_default = packet_trace_default
        self._vxlan_port = vxlan_port
        if evpn and (static_peers or multicast):
            raise ConfigError(
                "underlay evpn: FRR floods every VNI; give neither vxlan-peers nor multicast"
            )
        self._evpn = evpn
        self._frr = frr or FrrReader()
        self._multicast = not (static_peers or evpn) if multicast is None else multicast
        self._fault_hook = fault_hook
        self._vhost = vhost
        self._offload = offload
        self._limits = limits
        self._port_types = {VnicType.TAP, VnicType.NETNS}
        if vhost is not None:
            self._port_types.add(VnicType.VHOST_USER_SERVER)
        self._served: dict[str, int] = {}
        """vnic id -> ifindex of the tap the backend was asked to serve it on."""
        self._netlink = Netlink()
        try:
            self._underlay: Underlay = find_underlay(self._netlink, underlay_ip, underlay_interface)
            if underlay_interface not in (None, self._underlay.ifname):
                log.warning(
                    "dpdk-args names iface %s, but --ip %s is on %s: VXLAN runs on %s",
                    underlay_interface,
                    underlay_ip,
                    self._underlay.ifname,
                    self._underlay.ifname,
                )
            for peer in static_peers:
                if (":" in peer) != (self._underlay.version == 6):
                    raise ConfigError(
                        f"vxlan-peers: peer {peer} is not of the underlay's family "
                        f"(underlay {self._underlay.address})"
                    )
            self._nft = Nftables()
        except BaseException:
            self._netlink.close()
            raise
        try:
            self._guards = GuardPrograms()
        except BaseException:
            self._nft.close()
            self._netlink.close()
            raise
        self._static_peers = static_peers
        self._multicast_limits = MulticastLimits(self._underlay.version)
        self._vnic_mtu = nic_mtu or self._underlay.vxlan_mtu
        self._vxlan_mtu = min(self._vnic_mtu, self._underlay.vxlan_mtu)
        self._layout = Layout(
            underlay_ifname=self._underlay.ifname,
            underlay_ip=self._underlay.address,
            vxlan_port=vxlan_port,
        )
        self._infrastructure = {
            checks_ips: self._layout.infrastructure(checks_ips) for checks_ips in (False, True)
        }
        self._mirror: dict[Key, Obj] | None = None
        self._port_ids: dict[str, int] = {}
        self._zones: dict[int, int] = {}
        self._flood: dict[int, set[str]] = {}
        self._flood_loaded = False
        self._tracer = Tracer()
        self._defer_deletes = defer_deletes
        self._deferred: deque[tuple[str, Callable[[], None]]] = deque()
        self._deleter: PortDeleter | None = None
        self._sniffer = Sniffer(self._nft, cross_vni=sniff_cross_vni)
        self._conntrack = Conntrack()
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
        self._flood.clear()
        self._flood_loaded = False
        with self._netlink.snapshot():
            yield from self._reconcile(state, problems)
        if problems:
            raise DataplaneError("reconcile: " + "; ".join(problems))

    def _reconcile(self, state: StateView, problems: list[str]) -> Iterator[Progress]:
        self._rename_strays(problems)
        vnics = [vnic for vnic in state.vnics() if self._pluggable(vnic)]
        wanted_ports = {tap_name(vnic.id) for vnic in vnics}
        wanted_vnis = {vnic.vni for vnic in vnics}
        served = {vnic.id for vnic in vnics if vnic.type == VnicType.VHOST_USER_SERVER}
        for vnic_id in sorted(set(self._served) - served):
            self._best_effort(problems, f"nic {vnic_id!r}", partial(self._stop_serving, vnic_id))
        owned = self._owned_links()
        stale_ports = [
            link
            for name, link in owned.items()
            if link.kind in ("tun", "veth") and name not in wanted_ports
        ]
        stale_vnis = [
            link
            for name, link in owned.items()
            if link.kind in ("vxlan", "bridge") and int(name[4:]) not in wanted_vnis
        ]
        progress = Progress(0, len(stale_ports) + 1 + len(wanted_vnis) + len(vnics) + 1)
        yield progress  # requests already waiting go before the nftables step, the longest
        for link in stale_ports:
            if self._still_stale(link, state):
                self._best_effort(
                    problems, f"link {link.name}", partial(self._netlink.delete_link, link.index)
                )
            yield (progress := progress.next())
        self._reconcile_nft(state, [vnic for vnic in state.vnics() if self._has_port(vnic)])
        if self._multicast:
            # Left-over devices still hold their groups until the end.
            devices = {vxlan_name(vni) for vni in wanted_vnis}
            devices.update(name for name, link in owned.items() if link.kind == "vxlan")
            self._multicast_limits.ensure(len(devices))
        yield (progress := progress.next())
        for vni in sorted(wanted_vnis):
            if self._vni_used(vni, state):
                self._best_effort(
                    problems, f"vni {vni}", partial(self._ensure_vni, None, vni, state)
                )
            yield (progress := progress.next())
        for vnic_id in [vnic.id for vnic in vnics]:
            vnic = state.vnic(vnic_id)
            if vnic is not None and self._has_port(vnic):
                self._best_effort(
                    problems, _what(vnic), partial(self._ensure_port, None, vnic, None)
                )
                self._best_effort(problems, _what(vnic), partial(self._serve, None, vnic))
            yield (progress := progress.next())
        for vni in sorted(wanted_vnis):
            # A bridge made again has lost its neighbour entries (EVPN).
            if self._vni_used(vni, state):
                self._best_effort(
                    problems, f"vni {vni}", partial(self._sync_neighbours, None, vni, state)
                )
        for link in stale_vnis:
            if self._still_stale(link, state):
                self._best_effort(
                    problems, f"link {link.name}", partial(self._netlink.delete_link, link.index)
                )
        self._reconcile_traces([vnic for vnic in state.vnics() if self._has_port(vnic)], problems)
        self._best_effort(
            problems, "sniffing", lambda: self._sniffer.apply(self._sniffer.rescan(state))
        )
        yield progress.next()

    def _still_stale(self, link: Link, state: StateView) -> bool:
        """Whether a link found stale is still there and still unwanted (a
        request applied since the reconcile began may have taken it over)."""
        now = self._netlink.link(link.name)
        if now is None or now.index != link.index:
            return False
        if link.kind in ("vxlan", "bridge"):
            return not self._vni_used(int(link.name[4:]), state)
        vnic_id = (link.alias or "").removeprefix(vnic_alias(""))
        vnic = state.vnic(vnic_id)
        return vnic is None or not self._has_port(vnic) or tap_name(vnic.id) != link.name

    def _vni_used(self, vni: int, state: StateView) -> bool:
        return any(self._has_port(vnic) for vnic in state.vnics_in(vni))

    def repair(self, state: StateView, scope: Scope) -> None:
        """Put back what another program changed, looking only at what ``scope``
        names (a reconcile reads every link and port: seconds with thousands of
        vnics); raises DataplaneError listing what could not be repaired."""
        if scope.everything:
            self.reconcile(state)
            return
        problems: list[str] = []
        vnics = [vnic for vnic in state.vnics() if self._has_port(vnic)]
        if scope.tables:
            self._best_effort(problems, "nftables", partial(self._reconcile_nft, state, vnics))
        self._rename_strays(problems, scope.links)
        vnis = {vnic.vni for vnic in vnics if _names_vni(scope.links, vnic.vni)}
        if vnis:
            self._flood.clear()
            self._flood_loaded = False
        for vni in sorted(vnis):
            self._best_effort(problems, f"vni {vni}", partial(self._ensure_vni, None, vni, state))
        for vnic in vnics:
            if vnic.vni in vnis or tap_name(vnic.id) in scope.links:
                self._best_effort(
                    problems, _what(vnic), partial(self._ensure_port, None, vnic, None)
                )
                self._best_effort(problems, _what(vnic), partial(self._serve, None, vnic))
        for vni in sorted(vnis):
            # A bridge made again has lost its neighbour entries (EVPN).
            self._best_effort(
                problems, f"vni {vni}", partial(self._sync_neighbours, None, vni, state)
            )
        if scope.tables or scope.links:
            # The copy rules hook ports by device: a port made again lost them.
            self._best_effort(problems, "sniffing", partial(self._repair_sniffing, state))
        if problems:
            raise DataplaneError("repair: " + "; ".join(problems))

    def _repair_sniffing(self, state: StateView) -> None:
        """The copy rules as ``state`` wants them (no transaction while no vnic sniffs)."""
        plan = self._sniffer.rescan(state)
        if plan.rules or self._sniffer.applied.rules:
            self._sniffer.apply(plan)

    def plug(self, vnic: Vnic, replaced: Vnic | None, state: StateView) -> Attachment:
        if vnic.type == VnicType.VHOST_USER_SERVER and self._vhost is None:
            raise NotSupported(
                f"{_what(vnic)}: type VHOST_USER_SERVER (vhost-user) is not supported by a "
                "data plane without a vhost-user backend; use TAP or NETNS"
            )
        if not self._has_port(vnic):
            raise NotSupported(f"{_what(vnic)}: type {vnic.type.name} is not supported")
        self._sniffer.check(vnic, state)
        previous = replaced if replaced is not None and self._has_port(replaced) else None
        with journal(_what(vnic), self._fault_hook) as j:
            self._load()
            if previous is not None and not self._reusable(previous, vnic):
                self._tracer_stop(previous)
                self._remove_port(j, previous)
            self._commit(
                j,
                state,
                vnics=[(replaced, vnic.id)],
                vnis={vnic.vni} | ({previous.vni} if previous else set()),
                sgs=_current(state, [*vnic.security_groups, *_groups(previous)]),
            )
            self._ensure_vni(j, vnic.vni, state)
            self._ensure_port(j, vnic, previous)
            self._sync_neighbours(j, vnic.vni, state)
            self._serve(j, vnic)
            if previous is not None and previous.vni != vnic.vni:
                self._remove_vni_if_unused(j, previous.vni, state)
                self._sync_neighbours(j, previous.vni, state)
            self._sync_sniffing(j, state, vnic, replaced)
            self._apply_trace(j, vnic)
        return self.attachment(vnic)

    def update(self, before: Vnic, after: Vnic, state: StateView) -> None:
        if not self._has_port(after):
            return
        with journal(_what(after), self._fault_hook) as j:
            self._load()
            self._commit(
                j,
                state,
                vnics=[(before, after.id)],
                vnis={after.vni},
                sgs=_current(state, [*before.security_groups, *after.security_groups]),
            )
            if after.type == VnicType.NETNS and before.ips != after.ips:
                self._configure_peer(j, after, before)
            if before.ips != after.ips:
                self._sync_neighbours(j, after.vni, state)
            self._sync_sniffing(j, state, after)
            self._apply_trace(j, after)

    def unplug(self, vnic: Vnic, state: StateView) -> None:
        if not self._has_port(vnic):
            return
        with journal(_what(vnic), self._fault_hook) as j:
            self._load()
            self._remove_port(j, vnic)
            self._commit(
                j,
                state,
                vnics=[(vnic, vnic.id)],
                vnis={vnic.vni},
                sgs=_current(state, vnic.security_groups),
            )
            self._remove_vni_if_unused(j, vnic.vni, state)
            self._sync_neighbours(j, vnic.vni, state)
            self._sync_sniffing(j, state, vnic)
        self._tracer_stop(vnic)

    def update_security_groups(self, changes: Mapping[str, SgChange], state: StateView) -> None:
        self._load()
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
                    if self._filtered(vnic)
                }
        sgs = _current(state, referenced - set(changes))
        sgs.update((sg_id, change.before) for sg_id, change in changes.items())
        what = "security group " + ", ".join(repr(sg_id) for sg_id in sorted(changes))
        with journal(what, self._fault_hook) as j:
            self._commit(j, state, sgs=sgs, profiles=profiles)

    def update_peers(self, vni: int, state: StateView) -> None:
        if self._evpn:
            raise NotSupported(
                f"vni {vni}: static peers are not supported with underlay evpn "
                "(FRR learns every VNI's VTEPs)"
            )
        self._load()
        wanted = self._peers(vni, state)
        with journal(f"vni {vni}", self._fault_hook) as j:
            vxlan = self._netlink.link(vxlan_name(vni))
            if vxlan is not None:
                self._sync_peers(j, vxlan, wanted)

    def attachment(self, vnic: Vnic) -> Attachment:
        mtu: int | None = self._vnic_mtu
        if vnic.type == VnicType.VHOST_USER_SERVER:
            path = vhost_socket_path(self._socket_dir, vnic.id)
            mtu = self._vnic_mtu if self._vhost is not None else None
        else:
            path = vnic.netns if vnic.type == VnicType.NETNS else tap_name(vnic.id)
        traced, trace_file = trace_settings(
            vnic, default=self._trace_default, socket_dir=self._socket_dir
        )
        return Attachment(path, mtu, packet_trace=traced, packet_trace_path=trace_file)

    def counters(self, vnic: Vnic) -> Counters:
        """The host-side interface's bytes: what it transmits went in to the
        guest, what it received came out of the guest (for a vhost-user vnic,
        what its backend read from and wrote to the tap)."""
        if not self._has_port(vnic):
            return Counters()
        link = self._netlink.link(tap_name(vnic.id), fresh=True)
        if link is None:
            raise DataplaneError(f"{_what(vnic)}: interface {tap_name(vnic.id)} is missing")
        if not vnic.sniff_target_nic_id:
            return Counters(in_bytes=link.tx_bytes, out_bytes=link.rx_bytes)
        frames, octets = self._sniffer.copied(vnic.id)
        return Counters(link.tx_bytes, link.rx_bytes, sniffed_frames=frames, sniffed_bytes=octets)

    def sessions(self, vnic: Vnic) -> tuple[Session, ...]:
        self._load()
        zone = self._zones.get(vnic.vni)
        if zone is None or not vnic.ips:
            return ()
        return self._conntrack.sessions(zone, vnic.ips)

    def load_sessions(self, vnic: Vnic, sessions: Sequence[Session]) -> int:
        self._load()
        zone = self._zones.get(vnic.vni)
        if zone is None:
            raise DataplaneError(f"{_what(vnic)}: vni {vnic.vni} has no conntrack zone here")
        return self._conntrack.load(zone, sessions)

    def conntrack_zones(self) -> dict[int, int]:
        """VNI -> its conntrack zone. Safe from another thread (the metrics'):
        the copy is one step under CPython's lock, and the mapping is replaced
        or changed a key at a time, never left half-made."""
        return dict(self._zones)

    def graph(self, state: StateView) -> str:
        self._load()
        links = {link.name: link for link in self._netlink.links()}
        evpn = self._frr.status() if self._evpn else None
        drops = self._limit_drops()
        vnis = []
        for vni in sorted({vnic.vni for vnic in state.vnics()}):
            ports = tuple(self._port_view(vnic, links, drops) for vnic in state.vnics_in(vni))
            peers = self._peers(vni, state)
            flooding = []
            if evpn is not None:
                flooding.append(evpn.describe(vni))
            if self._multicast:
                flooding.append(f"multicast {flood_group(vni, self._underlay.version)}")
            if peers:
                flooding.append("peers " + ", ".join(peers))
            vnis.append(
                VniView(
                    vni=vni,
                    bridge=bridge_name(vni),
                    vxlan=vxlan_name(vni),
                    flooding="; ".join(flooding) or "no flooding",
                    zone=self._zones.get(vni),
                    present=bridge_name(vni) in links and vxlan_name(vni) in links,
                    ports=ports,
                    remote_vteps=evpn.remote_vteps(vni) if evpn is not None else (),
                )
            )
        underlay = f"{self._underlay.ifname} {self._underlay.address} mtu {self._underlay.mtu}"
        if evpn is not None:
            underlay += "\n" + evpn.sessions_line()
        return render(underlay, vnis)

    # watching (butterfly.daemon.drift)

    def watch(self) -> KernelWatch:
        """Notifications of this namespace about butterfly's objects, from now on."""
        return KernelWatch(self._netlink.links(), evpn=self._evpn)

    def rewatch(self, watch: KernelWatch) -> None:
        watch.prime(self._netlink.links())

    def take_touched(self) -> set[int]:
        """Also the retired ports the deletion thread deletes (see :mod:`.deleter`)."""
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
            self._tracer.close()
            self._guards.close()
            self._conntrack.close()
            self._nft.close()
            self._netlink.close()

    def cleanup(self) -> None:
        """Remove every kernel object butterfly created here (butterflyd --cleanup),
        after the backend has let go of the taps it served."""
        for vnic_id in sorted(self._served):
            self._stop_serving(vnic_id)
        cleanup(socket_dir=self._socket_dir)
        self._mirror = None
        self._flood.clear()
        self._flood_loaded = False
        self._port_ids.clear()
        self._zones.clear()
        self._tracer.close()

    # nftables

    def _load(self) -> None:
        """Read butterfly's tables into the mirror, once."""
        if self._mirror is None:
            listing = self._listing()
            self._mirror = listing.objects
            self._port_ids = listing.allocations("port_ids")
            self._zones = {int(br[4:]): z for br, z in listing.allocations("zones").items()}

    def _listing(self) -> Listing:
        listing = Listing()
        for family in (BRIDGE, INET):
            objects = self._nft.list({"table": {"family": family, "name": TABLE}})
            if objects is not None:
                listing.objects.update(parse_listing(family, objects).objects)
        return listing

    def _bootstrap(self, j: Journal | None, present: dict[Key, Obj]) -> None:
        """Make the objects nft's JSON cannot declare if missing, and add them to
        ``present`` (the undo takes them out of both)."""
        missing: dict[Key, Obj] = {
            key: obj
            for key, obj in self._infrastructure[False].items()
            if _bootstrapped(obj) and key not in present
        }
        if not missing:
            return
        made_tables = {key.family for key in missing if key.kind == "table"}
        commands = [
            {"delete": {"table": {"family": key.family, "name": TABLE}}}
            if key.kind == "table"
            else {"delete": {key.kind: {"family": key.family, "table": TABLE, "name": key.name}}}
            for key in missing
            if key.kind == "table" or key.family not in made_tables
        ]

        def make() -> None:
            self._nft.run_text(BOOTSTRAP)
            present.update(missing)

        def undo() -> None:
            self._nft.apply(commands)
            for key in missing:
                present.pop(key, None)

        self._step(j, "nftables bootstrap", make, undo)

    def _reconcile_nft(self, state: StateView, vnics: list[Vnic]) -> None:
        listing = self._listing()
        ports = {tap_name(vnic.id) for vnic in vnics}
        vnis = {vnic.vni for vnic in vnics}
        # Tables another program removed get back the ids they had (known here).
        port_ids = listing.allocations("port_ids") or self._port_ids
        zones = listing.allocations("zones") or {bridge_name(v): z for v, z in self._zones.items()}
        self._port_ids = {p: i for p, i in port_ids.items() if p in ports}
        self._zones = {
            vni: zone for bridge, zone in zones.items() if (vni := int(bridge[4:])) in vnis
        }
        wanted = dict(self._infrastructure[state.checks_ips()])
        for vni in sorted(vnis):
            wanted.update(self._vni_objects(None, vni, state))
        profiles = set()
        for vnic in vnics:
            wanted.update(self._vnic_objects(None, vnic.id, state))
            if self._filtered(vnic):
                profiles.add(vnic.security_groups)
                wanted.update(self._limit_objects(vnic))
        for profile in sorted(profiles):
            wanted.update(self._profile_objects(profile, state))
        known = {sg.id for sg in state.sgs()} | referenced_groups(state.sgs())
        for vnic in vnics:
            known.update(vnic.security_groups)
        for sg_id in sorted(known):
            sg = state.sg(sg_id)
            wanted.update(self._layout.sg(sg_filter(sg_id, sg), _members(sg)))
        present = dict(listing.objects)
        try:
            for key, obj in self._infrastructure[False].items():
                if _bootstrapped(obj) and key in present and present[key] != obj:
                    raise Structural(f"{key.kind} {key.family} {key.name} changed declaration")
            self._bootstrap(None, present)
            commands = diff(present, wanted)
        except Structural as exc:
            # An older layout: rebuilt in three transactions (the bootstrap
            # speaks nft's syntax, the rest JSON); conntrack entries and so
            # established flows survive, filtering pauses for the rebuild.
            log.warning("rebuilding butterfly's nftables tables: %s", exc)
            self._nft.apply(
                [
                    {"delete": {"table": {"family": key.family, "name": TABLE}}}
                    for key in tables()
                    if key in listing.objects
                ]
            )
            self._nft.run_text(BOOTSTRAP)
            commands = diff({k: v for k, v in wanted.items() if _bootstrapped(v)}, wanted)
        if commands:
            log.info("reconcile: %d nftables changes", len(commands))
            self._nft.apply(commands)
        self._mirror = wanted

    def _commit(
        self,
        j: Journal,
        state: StateView,
        *,
        vnics: Iterable[tuple[Vnic | None, str]] = (),
        vnis: Iterable[int] = (),
        sgs: Mapping[str, SecurityGroup | None] | None = None,
        profiles: Iterable[tuple[str, ...]] = (),
    ) -> None:
        """One nftables transaction bringing these groups of objects to ``state``.

        ``vnics`` pairs each vnic's id with its previous version (None when it
        is new), ``sgs`` each group's id with its previous version: the
        objects those had are the ones that may have to go.
        """
        assert self._mirror is not None
        mirror = self._mirror
        new: dict[Key, Obj] = dict(self._infrastructure[state.checks_ips()])
        keys: set[Key] = set(new)
        touched = set(profiles)
        for before, vnic_id in vnics:
            port = tap_name(vnic_id)
            if before is not None and self._has_port(before):
                keys |= self._layout.vnic(
                    port,
                    bridge_name(before.vni),
                    vnic_filter(before, state),
                    self._port_ids.get(port),
                    self._vnic_limits(before),
                ).keys()
                if self._filtered(before):
                    touched.add(before.security_groups)
            objects = self._vnic_objects(j, vnic_id, state)
            keys |= objects.keys()
            new.update(objects)
            after = state.vnic(vnic_id)
            if after is not None and self._filtered(after):
                touched.add(after.security_groups)
                # A class no vnic uses any more stays until the next reconcile:
                # finding its last user would mean scanning every vnic.
                objects = self._limit_objects(after)
                keys |= objects.keys()
                new.update(objects)
        for vni in vnis:
            keys |= self._layout.vni(bridge_name(vni), vxlan_name(vni), 0, quiet=True).keys()
            objects = self._vni_objects(j, vni, state)
            keys |= objects.keys()
            new.update(objects)
        for profile in touched:
            keys |= {Key("chain", INET, name) for name in profile_chains(profile)}
            new.update(self._profile_objects(profile, state))
        referenced: set[str] | None = None
        for sg_id, before_sg in (sgs or {}).items():
            keys |= self._layout.sg(sg_filter(sg_id, None), _members(before_sg)).keys()
            sg = state.sg(sg_id)
            if sg is None and not state.vnics_using(sg_id):
                if referenced is None:
                    referenced = referenced_groups(state.sgs())
                if sg_id not in referenced:
                    continue
            objects = self._layout.sg(sg_filter(sg_id, sg), _members(sg))
            keys |= objects.keys()
            new.update(objects)
        self._bootstrap(j, mirror)
        old = {key: mirror[key] for key in keys if key in mirror}
        try:
            commands = diff(old, new)
        except Structural as exc:
            raise DataplaneError(f"nftables: {exc}; a reconcile will rebuild the tables") from exc
        if not commands:
            return

        def replace(objects: Mapping[Key, Obj]) -> None:
            for key in keys:
                if key in objects:
                    mirror[key] = objects[key]
                else:
                    mirror.pop(key, None)

        def apply() -> None:
            self._nft.apply(commands)
            replace(new)

        def undo() -> None:
            self._nft.apply(diff(new, old))
            replace(old)

        j.step("nftables", apply, undo)

    def _profile_objects(self, profile: tuple[str, ...], state: StateView) -> dict[Key, Obj]:
        """A profile's chains, while a filtered vnic uses exactly these groups."""
        if profile and not any(
            vnic.security_groups == profile and self._filtered(vnic)
            for vnic in state.vnics_using(profile[0])
        ):
            return {}
        restrict = any(has_outbound(state.sg(sg_id)) for sg_id in profile)
        return self._layout.profile(profile, restrict)

    def _vnic_objects(self, j: Journal | None, vnic_id: str, state: StateView) -> dict[Key, Obj]:
        """The vnic's objects, allocating or freeing its mark id as needed."""
        port = tap_name(vnic_id)
        vnic = state.vnic(vnic_id)
        if vnic is None or not self._has_port(vnic):
            self._set_allocation(j, self._port_ids, port, None)
            return {}
        filtering = vnic_filter(vnic, state)
        mark = None
        if filtering is not None:
            mark = self._port_ids.get(port) or self._allocate(self._port_ids.values(), "vnic")
        self._set_allocation(j, self._port_ids, port, mark)
        return self._layout.vnic(
            port, bridge_name(vnic.vni), filtering, mark, self._vnic_limits(vnic)
        )

    def _vnic_limits(self, vnic: Vnic) -> ConnLimits:
        connections, per_second = self._limits
        return ConnLimits(
            connections if vnic.max_connections is None else vnic.max_connections,
            per_second if vnic.max_new_connections is None else vnic.max_new_connections,
        )

    def _limit_objects(self, vnic: Vnic) -> dict[Key, Obj]:
        limits = self._vnic_limits(vnic)
        return self._layout.limit_class(limits) if any(limits) else {}

    def _vni_objects(self, j: Journal | None, vni: int, state: StateView) -> dict[Key, Obj]:
        if not any(self._has_port(vnic) for vnic in state.vnics_in(vni)):
            self._set_allocation(j, self._zones, vni, None)
            return {}
        zone = self._zones.get(vni) or self._allocate(self._zones.values(), "conntrack zone")
        self._set_allocation(j, self._zones, vni, zone)
        quiet = not any(self._filtered(vnic) for vnic in state.vnics_in(vni))
        return self._layout.vni(bridge_name(vni), vxlan_name(vni), zone, quiet)

    @staticmethod
    def _allocate(used: Iterable[int], what: str) -> int:
        taken = set(used)
        for candidate in range(1, MAX_ID + 1):
            if candidate not in taken:
                return candidate
        raise DataplaneError(f"no {what} id left (at most {MAX_ID} per host)")

    @staticmethod
    def _set_allocation(j: Journal | None, table: dict[K, int], key: K, value: int | None) -> None:
        previous = table.get(key)
        if previous == value:
            return
        if value is None:
            del table[key]
        else:
            table[key] = value
        if j is not None:

            def restore() -> None:
                if previous is None:
                    table.pop(key, None)
                else:
                    table[key] = previous

            j.on_rollback(f"allocation of {key}", restore)

    # links

    def _has_port(self, vnic: Vnic) -> bool:
        """Whether ``vnic`` gets a port (and so filtering) from this data plane."""
        return vnic.type in self._port_types

    def _filtered(self, vnic: Vnic) -> bool:
        return self._has_port(vnic) and not vnic.bypass_filtering

    def _pluggable(self, vnic: Vnic) -> bool:
        if self._has_port(vnic):
            return True
        if vnic.type == VnicType.VHOST_USER_SERVER:
            log.warning("%s: no vhost-user backend to serve it; not plugged", _what(vnic))
        else:
            log.warning("%s: type %s has no kernel port; not plugged", _what(vnic), vnic.type.name)
        return False

    def _owned_links(self) -> dict[str, Link]:
        return {
            link.name: link
            for link in self._netlink.links()
            if is_butterfly_link(link.name, link.alias)
        }

    def _rename_strays(self, problems: list[str], names: Iterable[str] | None = None) -> None:
        """Links another program renamed get their names back (their alias still
        says whose they are), so a guest keeps its very interface. ``names``:
        look only at these (None: every link)."""
        if names is None:
            links = self._netlink.links()
        else:
            links = [link for name in names if (link := self._netlink.link(name)) is not None]
        for link in links:
            if is_butterfly_link(link.name, link.alias):
                continue
            name = name_from_alias(link.alias, link.kind)
            if name is None or self._netlink.link(name) is not None:
                continue
            self._best_effort(problems, f"link {link.name}", partial(self._rename, link, name))

    def _rename(self, link: Link, name: str) -> None:
        """Only a link that is down can be renamed; reconcile sets it up again."""
        if link.up:
            self._netlink.set_link(link.index, up=False)
        self._netlink.rename_link(link.index, name)

    def _own(self, name: str, what: str) -> Link | None:
        """The link ``name`` if it exists; refuses one that is not butterfly's."""
        link = self._netlink.link(name)
        if (
            link is not None
            and link.alias is not None
            and not is_butterfly_link(link.name, link.alias)
        ):
            raise DataplaneError(f"{what}: interface {name} exists and is not butterfly's")
        return link

    def _ensure_vni(self, j: Journal | None, vni: int, state: StateView) -> None:
        """The VNI's bridge and VXLAN device, created or put right."""
        what = f"vni {vni}"
        bridge = self._own(bridge_name(vni), what)
        if bridge is not None and bridge.kind != "bridge":
            self._step(j, f"delete {bridge.name}", partial(self._netlink.delete_link, bridge.index))
            bridge = None
        if bridge is None:
            name = bridge_name(vni)
            self._step(
                j,
                f"create bridge {name}",
                lambda: self._netlink.add_bridge(name, mtu=self._vnic_mtu, alias=vni_alias(vni)),
                partial(self._delete, name),
            )
            bridge = self._netlink.link(name)
            assert bridge is not None
        elif any(bridge.info.get(k) != v for k, v in _BRIDGE_OPTIONS.items()):
            self._step(
                j,
                f"configure {bridge.name}",
                partial(self._netlink.set_bridge_options, bridge.index),
            )
        self._fix_link(j, bridge, master=None, mtu=self._vnic_mtu)
        if self._evpn and bridge.mac != (mac := bridge_mac(self._underlay.address, vni)):
            index, old = bridge.index, bridge.mac
            self._step(
                j,
                f"set the mac of {bridge.name}",
                partial(self._netlink.set_link, index, mac=mac),
                partial(self._netlink.set_link, index, mac=old),
            )
        vxlan = self._own(vxlan_name(vni), what)
        if vxlan is not None and not self._vxlan_fits(vxlan, vni):
            self._step(j, f"delete {vxlan.name}", partial(self._netlink.delete_link, vxlan.index))
            vxlan = None
        if vxlan is None:
            name = vxlan_name(vni)
            group = flood_group(vni, self._underlay.version) if self._multicast else None
            if self._multicast:
                self._multicast_limits.ensure(len(self._zones))
            self._step(
                j,
                f"create vxlan {name}",
                lambda: self._netlink.add_vxlan(
                    name,
                    vni=vni,
                    local=self._underlay.address,
                    group=group,
                    underlay_index=self._underlay.index,
                    port=self._vxlan_port,
                    mtu=self._vxlan_mtu,
                    alias=vni_alias(vni),
                    learning=not self._evpn,
                ),
                partial(self._delete, name),
            )
            vxlan = self._netlink.link(name)
            assert vxlan is not None
            self._flood[vxlan.index] = set()
            self._ensure_guard(j, vxlan, GuardKind.OPEN, fresh=True)
        else:
            self._ensure_guard(j, vxlan, GuardKind.OPEN)
        advice = None
        if self._multicast and not vxlan.up:  # going up joins the group
            advice = dict.fromkeys((errno.ENOBUFS, errno.ENOMEM), self._multicast_limits.advice())
        self._fix_link(j, vxlan, master=bridge.index, mtu=self._vxlan_mtu, advice=advice)
        if self._evpn:
            # Remote MACs are FRR's extern_learn entries: the bridge learns
            # none on this port. Neighbour suppression here: a VM's ARP or
            # solicitation for a MAC behind this port is answered by the
            # bridge from FRR's neighbour entries, and no ARP or solicitation
            # whose MAC the bridge knows is flooded through it.
            self._fix_port_flags(
                j,
                vxlan.name,
                _PortFlags(learning=False, unicast_flood=True, locked=False, neigh_suppress=True),
            )
        else:
            self._sync_peers(j, vxlan, self._peers(vni, state))

    def _ensure_guard(
        self, j: Journal | None, link: Link, kind: GuardKind, *, fresh: bool = False
    ) -> None:
        """The port guard ``kind`` on ``link``'s egress, and the sender mark on
        its ingress exactly when ``kind`` wants it, before the link joins its
        bridge (``fresh``: just created, so it has none and is not asked)."""
        current = None if fresh else self._netlink.guard(link.index)
        if current != kind.value:
            previous = next((k for k in GuardKind if k.value == current), None)
            undo = None
            if previous is not None:
                undo = partial(
                    self._netlink.set_guard, link.index, self._guards.fd(previous), previous.value
                )
            self._step(
                j,
                f"guard {link.name}",
                partial(self._netlink.set_guard, link.index, self._guards.fd(kind), kind.value),
                undo,
            )
        marked = not fresh and self._netlink.guard(link.index, ingress=True) == SENDER_MARK
        mark = partial(
            self._netlink.set_guard, link.index, self._guards.sender_fd(), SENDER_MARK, ingress=True
        )
        unmark = partial(self._netlink.remove_guard, link.index, ingress=True)
        if kind.marks_senders and not marked:
            self._step(j, f"mark what enters {link.name} as unfiltered", mark, unmark)
        elif marked and not kind.marks_senders:
            self._step(j, f"stop marking what enters {link.name} as unfiltered", unmark, mark)

    def _vxlan_fits(self, vxlan: Link, vni: int) -> bool:
        info = vxlan.info
        v6 = self._underlay.version == 6
        local = info.get("IFLA_VXLAN_LOCAL6" if v6 else "IFLA_VXLAN_LOCAL")
        group = info.get("IFLA_VXLAN_GROUP6" if v6 else "IFLA_VXLAN_GROUP")
        wanted_group = flood_group(vni, self._underlay.version) if self._multicast else None
        return (
            vxlan.kind == "vxlan"
            and info.get("IFLA_VXLAN_ID") == vni
            and local is not None
            and ipaddress.ip_address(local) == ipaddress.ip_address(self._underlay.address)
            and (str(ipaddress.ip_address(group)) if group else None) == wanted_group
            and info.get("IFLA_VXLAN_LINK") == self._underlay.index
            and info.get("IFLA_VXLAN_PORT") == self._vxlan_port
            and info.get("IFLA_VXLAN_LEARNING") == int(not self._evpn)
        )

    def _peers(self, vni: int, state: StateView) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self._static_peers, *state.peers(vni)]))

    def _sync_peers(self, j: Journal | None, vxlan: Link, wanted: tuple[str, ...]) -> None:
        """Make the VXLAN device flood to exactly ``wanted`` (besides its group)."""
        for peer in wanted:
            if (":" in peer) != (self._underlay.version == 6):
                raise DataplaneError(
                    f"peer {peer} is not of the underlay's family ({self._underlay.address})"
                )
        group = flood_group(int(vxlan.name[4:]), self._underlay.version)
        present = self._flood_peers(vxlan.index) - {group}

        def add(peer: str) -> None:
            self._netlink.fdb_append(vxlan.index, peer)
            self._flood_peers(vxlan.index).add(peer)

        def remove(peer: str) -> None:
            self._netlink.fdb_delete(vxlan.index, peer)
            self._flood_peers(vxlan.index).discard(peer)

        for peer in wanted:
            if peer not in present:
                self._step(
                    j, f"add peer {peer} to {vxlan.name}", partial(add, peer), partial(remove, peer)
                )
        for peer in sorted(present - set(wanted)):
            self._step(
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

    def _remove_vni_if_unused(self, j: Journal, vni: int, state: StateView) -> None:
        if any(self._has_port(vnic) for vnic in state.vnics_in(vni)):
            return
        for name in (vxlan_name(vni), bridge_name(vni)):
            link = self._netlink.link(name)
            if link is not None:
                # Only once the request has succeeded: a bridge re-created by
                # an undo would come back with another MAC and bridge id.
                j.after_success(
                    f"delete {name}",
                    partial(self._delete_later, link, partial(self._vni_used, vni, state)),
                )

    def _delete_vni_link(self, index: int) -> None:
        """Delete a VNI's device and forget its flooding peers: ifindexes are not
        reused, so the entry of a deleted device would stay for ever."""
        self._netlink.delete_link(index)
        self._flood.pop(index, None)

    def _delete_later(self, link: Link, wanted: Callable[[], bool]) -> None:
        """Delete a link that a successful request left unused: at once, or
        (``defer_deletes``) after the reply, since the kernel spends ~25 ms per
        link deleted waiting for its readers to let go. A deferred deletion
        is skipped if the link was replaced or is ``wanted`` again by then;
        one a crash leaves undone is a leftover the next reconcile removes."""
        if not self._defer_deletes:
            self._delete_vni_link(link.index)
            return

        def delete() -> None:
            now = self._netlink.link(link.name)
            if now is not None and now.index == link.index and not wanted():
                self._delete_vni_link(link.index)

        self._deferred.append((link.name, delete))

    def _delete_retired(self, link: Link) -> None:
        """A removed port, renamed aside: nobody will want it again, so with
        ``defer_deletes`` a thread of its own deletes it (see
        :mod:`butterfly.dataplane.deleter`)."""
        if not self._defer_deletes:
            self._netlink.delete_link(link.index)
            return
        if self._deleter is None:
            self._deleter = PortDeleter()
        self._netlink.forget(link.name)
        self._deleter.delete(link.name, link.index)

    def background_work(self) -> bool:
        """One deferred deletion (see :meth:`_delete_later`); whether more are left."""
        if self._deferred:
            name, delete = self._deferred.popleft()
            try:
                delete()
            except DataplaneError as exc:
                log.error("deleting %s after its request: %s", name, exc)
        return bool(self._deferred)

    def _fix_link(
        self,
        j: Journal | None,
        link: Link,
        *,
        master: int | None,
        mtu: int,
        advice: Mapping[int, str] | None = None,
    ) -> None:
        """Set the MTU, master and up state of ``link`` where they differ
        (``advice``: the remedy for errnos of setting it up)."""
        if link.mtu != mtu:
            self._step(
                j,
                f"set mtu of {link.name}",
                lambda: self._netlink.set_link(link.index, mtu=mtu),
                lambda: self._netlink.set_link(link.index, mtu=link.mtu),
            )
        if master is not None and link.master != master:
            self._step(
                j,
                f"attach {link.name}",
                lambda: self._netlink.set_link(link.index, master=master),
                lambda: self._netlink.set_link(
                    link.index, master=link.master, nomaster=link.master is None
                ),
            )
        if not link.up:
            self._step(
                j,
                f"set {link.name} up",
                lambda: self._netlink.set_link(link.index, up=True, advice=advice),
                lambda: self._netlink.set_link(link.index, up=False),
            )

    def _reusable(self, previous: Vnic, vnic: Vnic) -> bool:
        """Whether ``vnic`` can keep ``previous``'s port (a guest stays attached)."""
        return previous.type == vnic.type and previous.netns == vnic.netns

    def _ensure_port(self, j: Journal | None, vnic: Vnic, previous: Vnic | None) -> None:
        """The vnic's port, created or put right, on its VNI's bridge."""
        what = _what(vnic)
        name = tap_name(vnic.id)
        link = self._own(name, what)
        if link is not None and not self._port_fits(link, vnic):
            self._tracer_stop(vnic)
            self._step(j, f"delete {name}", partial(self._netlink.delete_link, link.index))
            link = None
        fresh = link is None
        if link is None:
            self._step(
                j, f"create {name}", partial(self._create_port, vnic), partial(self._delete, name)
            )
            link = self._netlink.link(name)
            if link is None:
                raise DataplaneError(f"{what}: interface {name} vanished")
            previous = None
        kind = GuardKind.FILTERED if self._filtered(vnic) else GuardKind.OPEN
        self._ensure_guard(j, link, kind, fresh=fresh)
        bridge = self._netlink.link(bridge_name(vnic.vni))
        if bridge is None:
            raise DataplaneError(f"{what}: bridge {bridge_name(vnic.vni)} is missing")
        self._fix_link(j, link, master=bridge.index, mtu=self._vnic_mtu)
        if vnic.type == VnicType.NETNS and not self._offload:
            self._step(j, f"turn off offloads of {name}", partial(turn_off_offloads, name))
        if link.alias is None:
            self._netlink.set_link(link.index, alias=vnic_alias(vnic.id))
        self._fix_forwarding(j, vnic)
        if vnic.type == VnicType.NETNS:
            self._configure_peer(j, vnic, previous)

    def _fix_forwarding(self, j: Journal | None, vnic: Vnic) -> None:
        """A filtered vnic's port holds its MAC pinned and is locked to it (MAC
        anti-spoofing in the bridge itself), learns no address and gets no
        flooded unicast, so the only unicast frames reaching it are those to
        its MAC: the inet family names a frame's receiver by that MAC. A vnic
        bypassing filtering gets the bridge's defaults back, its MAC pinned
        too with EVPN (FRR advertises it before the VM speaks). No vnic port
        suppresses neighbour discovery: the kernel answers a request for a
        proxy only when it comes in on a port that does not (see the VXLAN
        port's flags in :meth:`_ensure_vni`)."""
        name = tap_name(vnic.id)
        filtered = self._filtered(vnic)
        pin = filtered or self._evpn
        index = self._fix_port_flags(
            j,
            name,
            _PortFlags(
                learning=not filtered,
                unicast_flood=not filtered,
                locked=filtered,
                neigh_suppress=False,
            ),
            what=_what(vnic),
        )
        mac = vnic.mac.lower()
        entries = self._netlink.bridge_entries(index)
        for other, pinned in sorted(entries.items()):
            if (pin and other == mac) or not (filtered or pinned):
                continue
            restore = partial(self._netlink.pin_mac, index, other) if pinned else None
            self._step(
                j,
                f"remove {other} from {name}",
                partial(self._netlink.forget_mac, index, other),
                restore,
            )
        if pin and not entries.get(mac, False):
            self._step(
                j,
                f"pin {mac} to {name}",
                partial(self._netlink.pin_mac, index, mac),
                partial(self._netlink.forget_mac, index, mac),
            )

    def _fix_port_flags(
        self, j: Journal | None, name: str, wanted: _PortFlags, *, what: str | None = None
    ) -> int:
        """Give bridge port ``name`` these flags where they differ; its ifindex."""
        what = what or f"interface {name}"
        link = self._netlink.link(name)
        if link is None:
            raise DataplaneError(f"{what}: interface {name} vanished")
        index = link.index
        flags = _PortFlags(
            learning=bool(link.port.get("IFLA_BRPORT_LEARNING", 1)),
            unicast_flood=bool(link.port.get("IFLA_BRPORT_UNICAST_FLOOD", 1)),
            locked=bool(link.port.get("IFLA_BRPORT_LOCKED", 0)),
            neigh_suppress=bool(link.port.get("IFLA_BRPORT_NEIGH_SUPPRESS", 0)),
        )
        if flags == wanted:
            return index

        def lock() -> None:
            self._netlink.set_bridge_port(index, **wanted._asdict())
            changed = self._netlink.link(name)
            if wanted.locked and (changed is None or not changed.port.get("IFLA_BRPORT_LOCKED")):
                self._netlink.set_bridge_port(index, **flags._asdict())
                raise DataplaneError(
                    f"{what}: this kernel cannot lock bridge port {name} to the "
                    "vnic's MAC (Linux 5.18 or later is needed for MAC anti-spoofing)"
                )

        self._step(
            j,
            f"set {name}'s learning, flooding, locking and neighbour suppression",
            lock,
            partial(self._netlink.set_bridge_port, index, **flags._asdict()),
        )
        return index

    def _sync_neighbours(self, j: Journal | None, vni: int, state: StateView) -> None:
        """With EVPN, the VNI's bridge holds a permanent neighbour entry for each
        IP of its vnics (FRR advertises each as a type-2 MAC/IP route at once,
        and the bridge answers ARP for it), and no other entry of ours."""
        if not self._evpn:
            return
        vnics = [vnic for vnic in state.vnics_in(vni) if self._has_port(vnic)]
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
            self._step(
                j,
                f"set neighbour {ip} at {mac} on {bridge.name}",
                partial(self._netlink.set_neighbour, index, ip, mac),
                partial(self._netlink.set_neighbour, index, ip, old)
                if old
                else partial(self._netlink.delete_neighbour, index, ip),
            )
        for ip in to_remove:
            self._step(
                j,
                f"remove neighbour {ip} from {bridge.name}",
                partial(self._netlink.delete_neighbour, index, ip),
                partial(self._netlink.set_neighbour, index, ip, present[ip]),
            )

    def _port_fits(self, link: Link, vnic: Vnic) -> bool:
        if vnic.type in _TAPS:
            return link.kind == "tun"
        if link.kind != "veth" or link.link_netnsid is None:
            return False
        fd = open_netns(vnic.netns, _what(vnic))
        try:
            return self._netlink.netnsid(fd) == link.link_netnsid
        finally:
            os.close(fd)

    def _create_port(self, vnic: Vnic) -> None:
        name = tap_name(vnic.id)
        if vnic.type in _TAPS:
            self._netlink.add_tap(name, mtu=self._vnic_mtu, alias=vnic_alias(vnic.id))
            return
        fd = open_netns(vnic.netns, _what(vnic))
        try:
            self._netlink.add_veth(
                name,
                mtu=self._vnic_mtu,
                alias=vnic_alias(vnic.id),
                peer_netns_fd=fd,
                peer_mac=vnic.mac,
            )
        finally:
            os.close(fd)

    def _remove_port(self, j: Journal, vnic: Vnic) -> None:
        """Set the vnic's port down (no frame crosses it) and rename it aside; it is
        deleted once the whole request has succeeded. A failure after this
        gives back the very same interface (same ifindex and MAC, the
        guest's link never reset), which re-creating one could not.

        A vhost-user guest is disconnected first, so the backend never reads a
        tap that is gone; the undo serves it again once the tap is back.
        """
        if vnic.id in self._served:
            self._step(
                j,
                f"stop serving {vhost_socket_path(self._socket_dir, vnic.id)}",
                partial(self._stop_serving, vnic.id),
                partial(self._serve, None, vnic),
            )
        name = tap_name(vnic.id)
        link = self._netlink.link(name)
        if link is None:
            return
        index = link.index
        if link.up:
            self._step(
                j,
                f"set {name} down",
                partial(self._netlink.set_link, index, up=False),
                partial(self._netlink.set_link, index, up=True),
            )
        self._step(
            j,
            f"rename {name} aside",
            partial(self._netlink.rename_link, index, retired_name(index)),
            partial(self._netlink.rename_link, index, name),
        )
        retired = replace(link, name=retired_name(index))
        j.after_success(f"delete {name}", partial(self._delete_retired, retired))

    def _serve(self, j: Journal | None, vnic: Vnic) -> None:
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
            raise DataplaneError(f"{_what(vnic)}: interface {name} is missing")
        if self._served.get(vnic.id) == link.index:
            return
        vhost = self._vhost
        path = vhost_socket_path(self._socket_dir, vnic.id)

        def serve() -> None:
            vhost.serve(vnic.id, socket_path=path, tap_name=name)
            self._served[vnic.id] = link.index

        self._step(j, f"serve {path}", serve, partial(self._stop_serving, vnic.id))

    def _stop_serving(self, vnic_id: str) -> None:
        if self._vhost is not None:
            self._vhost.stop(vnic_id)
        self._served.pop(vnic_id, None)

    def _configure_peer(self, j: Journal | None, vnic: Vnic, previous: Vnic | None) -> None:
        """The inside end of a NETNS vnic: its MAC, MTU, addresses, up.

        Addresses of ``previous`` that ``vnic`` no longer has are removed;
        addresses the namespace's owner added are left alone. All or nothing.
        """
        name = tap_name(vnic.id)
        what = _what(vnic)
        wanted = {_prefixed(ip) for ip in vnic.ips}
        stale = {_prefixed(ip) for ip in previous.ips} - wanted if previous else set()
        mtu = self._vnic_mtu
        offload = self._offload

        def inside() -> tuple[int, list[_PeerOp]]:
            with Netlink() as netlink:
                link = netlink.link(name)
                if link is None:
                    raise DataplaneError(f"{what}: interface {name} is missing in {vnic.netns}")
                present = {(a.address, a.prefixlen) for a in netlink.addresses(link.index)}
                todo: list[_PeerOp] = []
                if link.mac != vnic.mac.lower() or link.mtu != mtu:
                    todo.append(("set", (vnic.mac, mtu), (link.mac, link.mtu)))
                todo += [("del", a, a) for a in sorted(stale & present)]
                todo += [("add", a, a) for a in sorted(wanted - present)]
                if not link.up:
                    todo.append(("up", True, False))
                done: list[_PeerOp] = []
                try:
                    for op in todo:
                        _peer_op(netlink, link.index, op, forward=True)
                        done.append(op)
                    if not offload:
                        turn_off_offloads(name)
                except DataplaneError:
                    _revert_peer(netlink, link.index, done)
                    raise
                return link.index, done

        def configure() -> None:
            index, done = run_in_netns(vnic.netns, what, inside)
            if j is not None and done:

                def undo() -> None:
                    with Netlink() as netlink:
                        _revert_peer(netlink, index, done)

                j.on_rollback(
                    f"configure {name} in {vnic.netns}",
                    lambda: run_in_netns(vnic.netns, what, undo),
                )

        self._step(j, f"configure {name} in {vnic.netns}", configure)

    def _delete(self, name: str) -> None:
        link = self._netlink.link(name)
        if link is not None:
            self._netlink.delete_link(link.index)

    def _step(
        self,
        j: Journal | None,
        name: str,
        do: Callable[[], None],
        undo: Callable[[], None] | None = None,
    ) -> None:
        """A journaled step, or a plain one during reconcile (which repairs, not undoes)."""
        if j is None:
            do()
        else:
            j.step(name, do, undo)

    @staticmethod
    def _best_effort(problems: list[str], what: str, work: Callable[[], None]) -> None:
        try:
            work()
        except DataplaneError as exc:
            log.error("reconcile: %s: %s", what, exc)
            problems.append(str(exc) if str(exc).startswith(what) else f"{what}: {exc}")

    # sniffing

    def _sync_sniffing(self, j: Journal, state: StateView, *vnics: Vnic | None) -> None:
        """Mirror rules after a change of ``vnics`` (most requests: nothing to do)."""
        if not self._sniffer.affects(*vnics):
            return
        plan = self._sniffer.plan(state, [vnic for vnic in vnics if vnic is not None])
        previous = self._sniffer.applied
        j.step(
            "sniffing", partial(self._sniffer.apply, plan), partial(self._sniffer.apply, previous)
        )

    # traces

    def _trace_file(self, vnic: Vnic) -> str | None:
        traced, path = trace_settings(
            vnic, default=self._trace_default, socket_dir=self._socket_dir
        )
        return path if traced else None

    def _apply_trace(self, j: Journal, vnic: Vnic) -> None:
        """Start, move or stop the vnic's trace: the last step of a request, so
        its own failure is the only one it has to survive (the old trace runs on)."""
        wanted = self._trace_file(vnic)
        current = self._tracer.tracing(vnic.id)
        if wanted == current:
            return
        pidfile = trace_pidfile(self._socket_dir, vnic.id)
        if wanted is not None:
            self._step(
                j,
                f"trace {vnic.id} to {wanted}",
                partial(self._tracer.start, vnic.id, tap_name(vnic.id), wanted, pidfile),
            )
        else:
            self._tracer.stop(vnic.id, pidfile)

    def _tracer_stop(self, vnic: Vnic) -> None:
        self._tracer.stop(vnic.id, trace_pidfile(self._socket_dir, vnic.id))

    def _reconcile_traces(self, vnics: list[Vnic], problems: list[str]) -> None:
        kept = set()
        for vnic in vnics:
            pidfile = trace_pidfile(self._socket_dir, vnic.id)
            wanted = self._trace_file(vnic)
            if wanted is None:
                self._tracer.stop(vnic.id, pidfile)
                self._tracer.orphan(pidfile)
                continue
            kept.add(pidfile)
            if self._tracer.adopt(vnic.id, tap_name(vnic.id), wanted, pidfile):
                continue
            self._tracer.stop(vnic.id, pidfile)
            self._tracer.orphan(pidfile)
            self._best_effort(
                problems,
                _what(vnic),
                partial(self._tracer.start, vnic.id, tap_name(vnic.id), wanted, pidfile),
            )
        for pidfile in glob.glob(os.path.join(glob.escape(self._socket_dir), ".bf-trace-*.pid")):
            if pidfile not in kept:
                self._tracer.orphan(pidfile)

    # graph

    def _limit_drops(self) -> dict[tuple[str, str], int]:
        """New connections dropped by the caps, by sender (bridge, MAC), since the
        sender first met one (the kernel's counters in dyn_drops)."""
        listing = self._nft.list({"set": {"family": INET, "table": TABLE, "name": DROPS}})
        drops: dict[tuple[str, str], int] = {}
        for obj in listing or []:
            for element in obj.get("set", {}).get("elem", []):
                entry = element.get("elem", {}) if isinstance(element, dict) else {}
                bridge, mac = entry.get("val", {}).get("concat", ("", ""))
                drops[(bridge, str(mac).lower())] = int(entry.get("counter", {}).get("packets", 0))
        return drops

    def _limits_view(self, vnic: Vnic, drops: Mapping[tuple[str, str], int]) -> str:
        if not self._filtered(vnic):
            return ""
        connections, per_second = self._vnic_limits(vnic)
        caps = [
            f"at most {connections} connections" if connections else "any connections",
            f"{per_second} new/s" if per_second else "any new/s",
        ]
        dropped = drops.get((bridge_name(vnic.vni), vnic.mac.lower()), 0)
        return ", ".join(caps) + f"; {dropped} dropped"

    def _port_view(
        self, vnic: Vnic, links: Mapping[str, Link], drops: Mapping[tuple[str, str], int]
    ) -> PortView:
        name = tap_name(vnic.id)
        if vnic.bypass_filtering:
            filtering, anti_spoof = "bypassed", "off (bypass)"
        else:
            groups = ", ".join(vnic.security_groups)
            filtering = f"security groups {groups}" if groups else "no group: all in dropped"
            anti_spoof = "mac + ip" if vnic.ip_anti_spoof else "mac"
        kinds = {VnicType.TAP: "tap", VnicType.NETNS: "veth"}
        if self._vhost is not None:
            kinds[VnicType.VHOST_USER_SERVER] = "tap, vhost-user"
        return PortView(
            vnic_id=vnic.id,
            kind=kinds.get(vnic.type, vnic.type.name.lower() + ", not plugged"),
            port=name if self._has_port(vnic) else "-",
            guest=vnic.netns if vnic.type == VnicType.NETNS else self.attachment(vnic).path,
            mac=vnic.mac,
            ips=vnic.ips,
            filtering=filtering,
            anti_spoof=anti_spoof,
            trace=self._tracer.tracing(vnic.id),
            present=name in links,
            limits=self._limits_view(vnic, drops),
        )


_PeerOp = tuple[str, Any, Any]
"""(operation, value to apply, value to restore) on the inside end of a veth."""


def _prefixed(ip: str) -> tuple[str, int]:
    return ip, NETNS_PREFIX_V6 if ":" in ip else NETNS_PREFIX_V4


def _peer_op(netlink: Netlink, index: int, op: _PeerOp, *, forward: bool) -> None:
    kind, value, previous = op
    target = value if forward else previous
    if kind == "set":
        mac, mtu = target
        netlink.set_link(index, mac=mac, mtu=mtu)
    elif kind == "up":
        netlink.set_link(index, up=target)
    elif (kind == "add") == forward:
        netlink.add_address(index, *target)
    else:
        netlink.delete_address(index, *target)


def _revert_peer(netlink: Netlink, index: int, done: list[_PeerOp]) -> None:
    for op in reversed(done):
        _peer_op(netlink, index, op, forward=False)


def _names_vni(names: frozenset[str], vni: int) -> bool:
    return bridge_name(vni) in names or vxlan_name(vni) in names


def _groups(vnic: Vnic | None) -> tuple[str, ...]:
    return vnic.security_groups if vnic is not None else ()


def _current(state: StateView, sg_ids: Iterable[str]) -> dict[str, SecurityGroup | None]:
    """Groups that did not change: their previous version is the current one."""
    return {sg_id: state.sg(sg_id) for sg_id in sg_ids}


def _bootstrapped(obj: Obj) -> bool:
    return isinstance(obj, Decl) and obj.bootstrapped


def _members(sg: SecurityGroup | None) -> tuple[str, ...]:
    return sg.members if sg is not None else ()


def cleanup(*, socket_dir: str) -> None:
    """Remove every kernel object butterfly created in this network namespace:
    its nftables tables, its links (recognised by name and alias) and its traces."""
    problems = []
    nft = Nftables()
    try:
        for key in tables():
            try:
                if nft.list({"table": {"family": key.family, "name": TABLE}}) is not None:
                    nft.apply([{"delete": {"table": {"family": key.family, "name": TABLE}}}])
            except DataplaneError as exc:
                problems.append(str(exc))
        try:
            remove_table(nft)
        except DataplaneError as exc:
            problems.append(str(exc))
    finally:
        nft.close()
    tracer = Tracer()
    for pidfile in glob.glob(os.path.join(glob.escape(socket_dir), ".bf-trace-*.pid")):
        tracer.orphan(pidfile)
    with Netlink() as netlink:
        owned = [link for link in netlink.links() if is_butterfly_link(link.name, link.alias)]
        order = {"tun": 0, "veth": 0, "vxlan": 1, "bridge": 2}
        for link in sorted(owned, key=lambda link: order.get(link.kind, 3)):
            with contextlib.suppress(DataplaneError):
                if netlink.link(link.name) is not None:
                    netlink.delete_link(link.index)
        left = [link.name for link in netlink.links() if is_butterfly_link(link.name, link.alias)]
    if left:
        problems.append("links left: " + ", ".join(left))
    if problems:
        raise DataplaneError("cleanup: " + "; ".join(problems))
