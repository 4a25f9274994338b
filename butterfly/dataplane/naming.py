"""Kernel object names, derived from model ids with one fixed prefix.

Every link butterfly creates starts with ``bf``, so a clean-up finds all of
them by pattern and nothing else on the host is ever touched. Linux limits
interface names to 15 characters: a vnic id that does not fit (or uses
characters awkward in an interface name) is replaced by a digest of it.
"""

import hashlib
import os
import re

__all__ = ["PREFIX", "bridge_name", "tap_name", "vhost_socket_path", "vxlan_name"]

PREFIX = "bf"
IFNAMSIZ = 15
_READABLE = re.compile(r"[A-Za-z0-9_.-]{1,12}")


def tap_name(vnic_id: str) -> str:
    """``bf-<id>`` when it fits, else ``bfh<12 hex digits of sha256(id)>``.

    The two forms cannot collide: readable names have a dash third.
    """
    if _READABLE.fullmatch(vnic_id):
        return f"{PREFIX}-{vnic_id}"
    return f"{PREFIX}h" + hashlib.sha256(vnic_id.encode()).hexdigest()[:12]


def bridge_name(vni: int) -> str:
    return f"{PREFIX}br{vni}"


def vxlan_name(vni: int) -> str:
    return f"{PREFIX}vx{vni}"


def vhost_socket_path(socket_dir: str, vnic_id: str) -> str:
    """The original's socket naming, which orchestrators already rely on."""
    return os.path.join(socket_dir, f"qemu-vhost-{vnic_id}")
