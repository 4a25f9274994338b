"""The data path drawn as Graphviz DOT, for app_status.

Owns the picture only: the kernel data plane says what exists (the underlay,
each VNI's VXLAN device and bridge, each vnic's port with its filtering,
anti-spoofing and tracing; with EVPN, the remote VTEPs FRR learned for each
VNI and how many MACs sit behind each) and whether the kernel really has it; this module
lays it out. Frames flow underlay <-> vxlan <-> bridge <-> port <-> guest.
:func:`draw` turns what the data plane read from the kernel into the views;
it reads nothing itself.
"""

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from butterfly.dataplane.evpn import EvpnStatus
from butterfly.dataplane.naming import bridge_name, tap_name, vxlan_name
from butterfly.dataplane.settings import KernelSettings
from butterfly.dataplane.underlay import flood_group
from butterfly.model import StateView, Vnic, VnicType

__all__ = ["PortView", "VniView", "draw", "render"]


@dataclass(frozen=True, slots=True)
class PortView:
    vnic_id: str
    kind: str
    """"tap", "netns"..."""
    port: str
    guest: str
    """Where the guest is: the tap's user, the namespace path."""
    mac: str
    ips: tuple[str, ...]
    filtering: str
    """"security groups a, b" / "no security group: all dropped" / "bypassed"."""
    anti_spoof: str
    trace: str | None
    present: bool
    limits: str = ""
    """"at most 10000 connections, 1000 new/s; 12 dropped" ("": not filtered)."""
    fast_path: str = ""
    """What the eBPF fast path forwarded from the vnic ("": it does not serve it)."""


@dataclass(frozen=True, slots=True)
class VniView:
    vni: int
    bridge: str
    vxlan: str
    flooding: str
    """"multicast 230.0.5.57" or "peers 10.0.0.2, 10.0.0.3"."""
    zone: int | None
    present: bool
    ports: tuple[PortView, ...]
    remote_vteps: tuple[tuple[str, int], ...] = ()
    """EVPN: the remote VTEPs FRR learned for the VNI, with their MAC counts."""
    fast_path: str = ""
    """What the eBPF fast path carries through the VXLAN device ("": nothing)."""


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _missing(present: bool) -> str:
    return "" if present else ", style=dashed, color=red"


def render(underlay: str, vnis: Sequence[VniView]) -> str:
    lines = [
        "digraph butterfly {",
        "  rankdir=LR;",
        "  node [shape=box, fontsize=10];",
        f"  underlay [shape=box3d, label={_quote('underlay ' + underlay)}];",
    ]
    for vni in vnis:
        vx = _quote(f"vxlan:{vni.vni}")
        br = _quote(f"bridge:{vni.vni}")
        zone = f"conntrack zone {vni.zone}" if vni.zone is not None else "no conntrack zone"
        lines.append(f"  subgraph cluster_vni_{vni.vni} {{")
        lines.append(f"    label={_quote(f'vni {vni.vni}')};")
        vx_lines = [vni.vxlan, f"VXLAN {vni.vni}", vni.flooding]
        if vni.fast_path:
            vx_lines.append(f"fast path: {vni.fast_path}")
        vx_label = _quote("\n".join(vx_lines))
        br_label = _quote("\n".join([vni.bridge, zone]))
        lines.append(f"    {vx} [label={vx_label}{_missing(vni.present)}];")
        lines.append(f"    {br} [shape=component, label={br_label}{_missing(vni.present)}];")
        for port in vni.ports:
            node = _quote(f"port:{port.vnic_id}")
            guest = _quote(f"guest:{port.vnic_id}")
            details = [
                f"{port.port} ({port.kind})",
                f"filter: {port.filtering}",
                f"anti-spoof: {port.anti_spoof}",
            ]
            if port.limits:
                details.append(f"limits: {port.limits}")
            if port.trace:
                details.append(f"trace: {port.trace}")
            if port.fast_path:
                details.append(f"fast path: {port.fast_path}")
            port_label = _quote("\n".join(details))
            guest_label = _quote(
                "\n".join([port.vnic_id, port.mac, " ".join(port.ips), port.guest])
            )
            lines.append(f"    {node} [label={port_label}{_missing(port.present)}];")
            lines.append(f"    {guest} [shape=ellipse, label={guest_label}];")
            lines.append(f"    {br} -> {node} [dir=both];")
            lines.append(f"    {node} -> {guest} [dir=both];")
        lines.append("  }")
        lines.append(f"  underlay -> {vx} [dir=both];")
        lines.append(f"  {vx} -> {br} [dir=both];")
        for vtep, macs in vni.remote_vteps:
            label = _quote(f"vni {vni.vni}: {macs} MAC{'' if macs == 1 else 's'}")
            lines.append(f"  {vx} -> {_quote('vtep:' + vtep)} [style=dashed, label={label}];")
    vteps = sorted({vtep for vni in vnis for vtep, _ in vni.remote_vteps})
    for vtep in vteps:
        label = _quote(f"remote VTEP {vtep}")
        lines.append(f"  {_quote('vtep:' + vtep)} [shape=box3d, label={label}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(
    state: StateView,
    *,
    settings: KernelSettings,
    links: Collection[str],
    zones: Mapping[int, int],
    drops: Mapping[tuple[str, str], int],
    evpn: EvpnStatus | None,
    peers: Callable[[int], tuple[str, ...]],
    tracing: Callable[[str], str | None],
    guest: Callable[[Vnic], str],
    fast_path: str = "off",
    vhost_loop: str = "",
    forwarded: Callable[[Vnic], str] = lambda vnic: "",
    tunneled: Callable[[int], str] = lambda vni: "",
) -> str:
    """The picture of ``state`` on this host: ``links`` the names of the links
    present, ``zones`` each VNI's conntrack zone, ``drops`` the caps' drops by
    (bridge, MAC), ``evpn`` FRR's state, ``peers`` a VNI's flooding peers,
    ``tracing`` a vnic's trace file, ``guest`` where a vnic's guest is,
    ``fast_path`` whether the eBPF fast path is used and why, ``vhost_loop``
    which loop moves vhost-user frames and why ("": no vhost-user backend),
    ``forwarded`` what it forwarded from a vnic, ``tunneled`` what it does
    with a VNI's VXLAN device."""
    underlay = settings.underlay
    vnis = []
    for vni in sorted({vnic.vni for vnic in state.vnics()}):
        ports = tuple(
            replace(
                _port_view(
                    vnic, settings=settings, links=links, drops=drops, tracing=tracing, guest=guest
                ),
                fast_path=forwarded(vnic),
            )
            for vnic in state.vnics_in(vni)
        )
        vni_peers = peers(vni)
        flooding = []
        if evpn is not None:
            flooding.append(evpn.describe(vni))
        if settings.multicast:
            flooding.append(f"multicast {flood_group(vni, underlay.version)}")
        if vni_peers:
            flooding.append("peers " + ", ".join(vni_peers))
        vnis.append(
            VniView(
                vni=vni,
                bridge=bridge_name(vni),
                vxlan=vxlan_name(vni),
                flooding="; ".join(flooding) or "no flooding",
                zone=zones.get(vni),
                present=bridge_name(vni) in links and vxlan_name(vni) in links,
                ports=ports,
                remote_vteps=evpn.remote_vteps(vni) if evpn is not None else (),
                fast_path=tunneled(vni),
            )
        )
    line = f"{underlay.ifname} {underlay.address} mtu {underlay.mtu}"
    if evpn is not None:
        line += "\n" + evpn.sessions_line()
    line += "\nfast path: " + fast_path
    if vhost_loop:
        line += "\nvhost loop: " + vhost_loop
    return render(line, vnis)


def _port_view(
    vnic: Vnic,
    *,
    settings: KernelSettings,
    links: Collection[str],
    drops: Mapping[tuple[str, str], int],
    tracing: Callable[[str], str | None],
    guest: Callable[[Vnic], str],
) -> PortView:
    name = tap_name(vnic.id)
    if vnic.bypass_filtering:
        filtering, anti_spoof = "bypassed", "off (bypass)"
    else:
        groups = ", ".join(vnic.security_groups)
        filtering = f"security groups {groups}" if groups else "no group: all in dropped"
        anti_spoof = "mac + ip" if vnic.ip_anti_spoof else "mac"
    kinds = {VnicType.TAP: "tap", VnicType.NETNS: "veth"}
    if settings.vhost:
        kinds[VnicType.VHOST_USER_SERVER] = "tap, vhost-user"
    return PortView(
        vnic_id=vnic.id,
        kind=kinds.get(vnic.type, vnic.type.name.lower() + ", not plugged"),
        port=name if settings.has_port(vnic) else "-",
        guest=vnic.netns if vnic.type == VnicType.NETNS else guest(vnic),
        mac=vnic.mac,
        ips=vnic.ips,
        filtering=filtering,
        anti_spoof=anti_spoof,
        trace=tracing(vnic.id),
        present=name in links,
        limits=_limits_view(vnic, settings, drops),
    )


def _limits_view(vnic: Vnic, settings: KernelSettings, drops: Mapping[tuple[str, str], int]) -> str:
    if not settings.filtered(vnic):
        return ""
    connections, per_second = settings.vnic_limits(vnic)
    caps = [
        f"at most {connections} connections" if connections else "any connections",
        f"{per_second} new/s" if per_second else "any new/s",
    ]
    dropped = drops.get((bridge_name(vnic.vni), vnic.mac.lower()), 0)
    return ", ".join(caps) + f"; {dropped} dropped"
