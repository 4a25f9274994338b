"""What the daemon's configuration decides for every part of the kernel data plane.

Owns :class:`KernelSettings`, fixed when the data plane is built and read by
its parts (:mod:`.nftables_state`, :mod:`.vni`, :mod:`.ports`,
:mod:`.tracing`, :mod:`.graph`): the underlay, MTUs, how VNIs flood, which
vnic types get a port, the default connection caps. Pure: no kernel calls.
"""

from dataclasses import dataclass

from butterfly.dataplane.ruleset import ConnLimits
from butterfly.dataplane.underlay import Underlay
from butterfly.model import Vnic, VnicType

__all__ = ["TAP_TYPES", "VHOST_TAP_QUEUE", "KernelSettings", "what"]

TAP_TYPES = (VnicType.TAP, VnicType.VHOST_USER_SERVER)
"""Types whose port is a persistent tap (a vhost-user backend serves the second)."""

VHOST_TAP_QUEUE = 4096
"""Frames a vhost-user vnic's tap holds for the backend's worker, against the
kernel's 1,000: what a sender sharing the worker's CPU writes in one scheduler
slice (at most 3 ms, about 3,000 frames of 64 bytes at 1 Mpps). With 1,000 the
tap overflowed each time such a sender ran a whole slice, and the worker, woken
for fewer frames each time, carried 0.3-0.4 x the filtered path's frames per
core; with 4,096, 1.2 x (``butterfly-bench frames``, switch to guest). The
price: a guest that stops taking frames (posts no buffers) leaves up to 4,096
of them queued in its tap instead of 1,000, as the kernel's vhost-net would."""


def what(vnic: Vnic) -> str:
    """How every message of the data plane names a vnic."""
    return f"nic {vnic.id!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelSettings:
    """See :class:`~butterfly.dataplane.kernel.KernelDataplane` for each option."""

    underlay: Underlay
    socket_dir: str
    vnic_mtu: int
    vxlan_mtu: int
    vxlan_port: int
    offload: bool
    trace_default: bool
    static_peers: tuple[str, ...]
    multicast: bool
    evpn: bool
    limits: ConnLimits
    defer_deletes: bool
    vhost: bool
    """Whether a vhost-user backend serves VHOST_USER_SERVER vnics."""

    def has_port(self, vnic: Vnic) -> bool:
        """Whether ``vnic`` gets a port (and so filtering) from this data plane."""
        return vnic.type in (VnicType.TAP, VnicType.NETNS) or (
            self.vhost and vnic.type == VnicType.VHOST_USER_SERVER
        )

    def tap_queue(self, vnic: Vnic) -> int | None:
        """The transmit queue length of ``vnic``'s tap; None: the kernel's default
        (a TAP vnic's reader is QEMU, whose taps we keep as it expects them)."""
        return VHOST_TAP_QUEUE if vnic.type == VnicType.VHOST_USER_SERVER else None

    def filtered(self, vnic: Vnic) -> bool:
        return self.has_port(vnic) and not vnic.bypass_filtering

    def vnic_limits(self, vnic: Vnic) -> ConnLimits:
        """The vnic's own caps, else the daemon's."""
        connections, per_second = self.limits
        return ConnLimits(
            connections if vnic.max_connections is None else vnic.max_connections,
            per_second if vnic.max_new_connections is None else vnic.max_new_connections,
        )
