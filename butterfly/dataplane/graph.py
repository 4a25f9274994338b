"""The data path drawn as Graphviz DOT, for app_status.

Owns the picture only: the kernel data plane says what exists (the underlay,
each VNI's VXLAN device and bridge, each vnic's port with its filtering,
anti-spoofing and tracing; with EVPN, the remote VTEPs FRR learned for each
VNI and how many MACs sit behind each) and whether the kernel really has it; this module
lays it out. Frames flow underlay <-> vxlan <-> bridge <-> port <-> guest.
"""

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PortView", "VniView", "render"]


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
        vx_label = _quote("\n".join([vni.vxlan, f"VXLAN {vni.vni}", vni.flooding]))
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
