"""Virtual NICs: what a vnic is, and the rules a valid one obeys.

A :class:`Vnic` is pure data: it names its VNI, addresses and security groups
but knows nothing of the kernel objects that will carry it. Building one
through :func:`make_vnic` is the only way in, so every Vnic in the program is
valid and canonical.
"""

import enum
from dataclasses import dataclass, replace

from butterfly.errors import BadIp, BadNic, NotSupported, shown
from butterfly.model.addresses import canonical_ip, is_mac
from butterfly.model.ids import check_id

__all__ = ["MAX_LIMIT", "MAX_VNI", "Vnic", "VnicType", "VnicUpdate", "make_vnic"]

MAX_VNI = (1 << 24) - 1
MAX_LIMIT = 10_000_000
"""The largest per-vnic connection cap or rate (0 is no cap)."""
MAX_PATH = 4095
"""Linux's PATH_MAX, less the terminating NUL."""


class VnicType(enum.IntEnum):
    """How a guest is attached; the values are the wire protocol's."""

    VHOST_USER_SERVER = 0
    TAP = 1
    BENCH = 2
    NETNS = 100


@dataclass(frozen=True, slots=True)
class Vnic:
    id: str
    mac: str
    vni: int
    ips: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    ip_anti_spoof: bool = False
    bypass_filtering: bool = False
    type: VnicType = VnicType.VHOST_USER_SERVER
    netns: str = ""
    """For NETNS vnics: the namespace (a name under /run/netns or a path)."""
    packet_trace: bool | None = None
    """None follows the daemon-wide default."""
    packet_trace_path: str = ""
    sniff_target_nic_id: str = ""
    max_connections: int | None = None
    """Tracked connections the vnic may have started at once: None follows the
    daemon-wide default, 0 is no cap."""
    max_new_connections: int | None = None
    """Connections the vnic may start per second: None and 0 as above."""


@dataclass(frozen=True, slots=True)
class VnicUpdate:
    """A nic_update: None leaves a field as it is."""

    id: str
    ips: tuple[str, ...] | None = None
    security_groups: tuple[str, ...] | None = None
    ip_anti_spoof: bool | None = None
    packet_trace: bool | None = None
    packet_trace_path: str | None = None
    max_connections: int | None = None
    max_new_connections: int | None = None

    def apply_to(self, vnic: Vnic) -> Vnic:
        """The vnic after this update, validated like a new one."""
        changed = replace(
            vnic,
            ips=vnic.ips if self.ips is None else self.ips,
            security_groups=(
                vnic.security_groups if self.security_groups is None else self.security_groups
            ),
            ip_anti_spoof=(
                vnic.ip_anti_spoof if self.ip_anti_spoof is None else self.ip_anti_spoof
            ),
            packet_trace=vnic.packet_trace if self.packet_trace is None else self.packet_trace,
            packet_trace_path=(
                vnic.packet_trace_path if self.packet_trace_path is None else self.packet_trace_path
            ),
            max_connections=_kept(vnic.max_connections, self.max_connections),
            max_new_connections=_kept(vnic.max_new_connections, self.max_new_connections),
        )
        return make_vnic(changed)


def _kept(current: int | None, update: int | None) -> int | None:
    return current if update is None else update


def _dedup(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def make_vnic(vnic: Vnic) -> Vnic:
    """Validate ``vnic`` and return it in canonical form.

    Raises BadNic, BadIp or NotSupported naming the vnic and the field.
    """
    what = f"nic {shown(vnic.id)}"
    problem = check_id(vnic.id)
    if problem:
        raise BadNic(f"nic id {shown(vnic.id)} {problem}")
    if not is_mac(vnic.mac):
        raise BadNic(f"{what}: mac {shown(vnic.mac)} is not six hex pairs separated by colons")
    if int(vnic.mac[:2], 16) & 1:
        raise BadNic(f"{what}: mac {shown(vnic.mac)} is a multicast address")
    if not 0 <= vnic.vni <= MAX_VNI:
        raise BadNic(f"{what}: vni {vnic.vni} is out of range 0-{MAX_VNI}")
    ips: list[str] = []
    for ip in vnic.ips:
        canonical = canonical_ip(ip)
        if canonical is None:
            raise BadIp(f"{what}: ip {shown(ip)} is not an IPv4 or IPv6 address")
        ips.append(canonical)
    for sg_id in vnic.security_groups:
        problem = check_id(sg_id)
        if problem:
            raise BadNic(f"{what}: security group id {shown(sg_id)} {problem}")
    if vnic.type == VnicType.BENCH:
        raise NotSupported(f"{what}: type BENCH (built-in traffic generator) is not supported")
    if len(vnic.netns) > MAX_PATH or len(vnic.packet_trace_path) > MAX_PATH:
        raise BadNic(f"{what}: a path is longer than {MAX_PATH} characters")
    if vnic.type == VnicType.NETNS:
        if not vnic.netns:
            raise BadNic(f"{what}: type NETNS needs a path naming a network namespace")
        if "\0" in vnic.netns or "\n" in vnic.netns:
            raise BadNic(f"{what}: path {shown(vnic.netns)} is not a namespace name or path")
    if vnic.sniff_target_nic_id:
        problem = check_id(vnic.sniff_target_nic_id)
        if problem:
            raise BadNic(f"{what}: sniff_target_nic_id {shown(vnic.sniff_target_nic_id)} {problem}")
        if vnic.sniff_target_nic_id == vnic.id:
            raise BadNic(f"{what}: sniff_target_nic_id names the nic itself")
    for name in ("max_connections", "max_new_connections"):
        value = getattr(vnic, name)
        if value is not None and not 0 <= value <= MAX_LIMIT:
            raise BadNic(f"{what}: {name} {value} is out of range 0-{MAX_LIMIT}")
    if "\0" in vnic.packet_trace_path:
        raise BadNic(f"{what}: packet_trace_path {shown(vnic.packet_trace_path)} is not a path")
    return replace(
        vnic,
        ips=_dedup(ips),
        security_groups=_dedup(list(vnic.security_groups)),
        netns=vnic.netns if vnic.type == VnicType.NETNS else "",
    )
