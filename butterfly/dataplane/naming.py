"""Kernel object names, derived from model ids with one fixed prefix.

Every link butterfly creates starts with ``bf``, so a clean-up finds all of
them by pattern and nothing else on the host is ever touched. Linux limits
interface names to 15 characters: a vnic id that does not fit (or uses
characters awkward in an interface name) is replaced by a digest of it.

Links also carry an alias (``ip link`` shows it) starting with ``butterfly``:
a link is butterfly's only when both its name and its alias say so. The
nftables objects live in butterfly's own tables; their names inside those
tables are digests of the ids, which nft accepts whatever the id holds.
"""

import glob
import hashlib
import os
import re
from collections.abc import Sequence

__all__ = [
    "BRIDGE_WILDCARD",
    "DYNAMIC_PREFIX",
    "LINK_ALIAS",
    "PORT_WILDCARDS",
    "PREFIX",
    "TABLE",
    "VXLAN_PREFIX",
    "anchor_alias",
    "anchor_name",
    "bridge_name",
    "is_butterfly_link",
    "is_butterfly_name",
    "limit_names",
    "member_set",
    "name_from_alias",
    "profile_chains",
    "retired_name",
    "sg_in_chain",
    "sg_out_chain",
    "spare_alias",
    "spare_name",
    "tap_name",
    "trace_path",
    "trace_pidfile",
    "trace_pidfiles",
    "vhost_socket_path",
    "vni_alias",
    "vni_of",
    "vnic_alias",
    "vxlan_name",
]

PREFIX = "bf"
IFNAMSIZ = 15
_READABLE = re.compile(r"[A-Za-z0-9_.-]{1,12}")
_LINK = re.compile(
    r"bfbr[0-9]{1,8}|bfvx[0-9]{1,8}|bf-[A-Za-z0-9_.-]{1,12}|bfh[0-9a-f]{12}|bfz[0-9a-f]{1,8}"
    r"|bfg-(?:filtered|open)|bfs[0-9a-f]{1,8}"
)
VXLAN_PREFIX = f"{PREFIX}vx"
"""What every :func:`vxlan_name` starts with."""
BRIDGE_WILDCARD = f"{PREFIX}br*"
"""nft's pattern of every :func:`bridge_name`."""
PORT_WILDCARDS = (f"{PREFIX}-*", f"{PREFIX}h*", f"{VXLAN_PREFIX}*")
"""nft's patterns of every bridge port butterfly makes (:func:`tap_name`, :func:`vxlan_name`)."""
LINK_ALIAS = "butterfly"
DYNAMIC_PREFIX = "dyn_"
"""Sets the packets fill (meters, connection counts): their elements are the
kernel's, never the data plane's to compare or remove."""
TABLE = "butterfly"
"""The name of butterfly's nftables table in each family it uses."""


def tap_name(vnic_id: str) -> str:
    """``bf-<id>`` when it fits, else ``bfh<12 hex digits of sha256(id)>``.

    The two forms cannot collide: readable names have a dash third.
    """
    if _READABLE.fullmatch(vnic_id):
        return f"{PREFIX}-{vnic_id}"
    return f"{PREFIX}h" + hashlib.sha256(vnic_id.encode()).hexdigest()[:12]


def retired_name(ifindex: int) -> str:
    """Where a removed port waits, off its bridge, until its request succeeds
    (then it is deleted; if the request fails it gets its name back)."""
    return f"{PREFIX}z{ifindex:x}"


def spare_name(ifindex: int) -> str:
    """Where an emptied VNI's bridge waits, down and without ports, for the
    next new VNI (see :class:`butterfly.dataplane.vni.Vnis`)."""
    return f"{PREFIX}s{ifindex:x}"


def spare_alias() -> str:
    return f"{LINK_ALIAS} spare bridge"


def bridge_name(vni: int) -> str:
    return f"{PREFIX}br{vni}"


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni}"


def vni_of(name: str) -> int:
    """The VNI of a :func:`bridge_name` or :func:`vxlan_name` (both prefixes are
    four characters long)."""
    return int(name[len(PREFIX) + 2 :])


def vhost_socket_path(socket_dir: str, vnic_id: str) -> str:
    """The original's socket naming, which orchestrators already rely on."""
    return os.path.join(socket_dir, f"qemu-vhost-{vnic_id}")


def vni_alias(vni: int) -> str:
    return f"{LINK_ALIAS} vni {vni}"


def anchor_name(kind: str) -> str:
    """The tap that keeps the port guard's blocks of ``kind`` (``filtered``,
    ``open``) alive (see :mod:`butterfly.dataplane.guard`)."""
    return f"{PREFIX}g-{kind}"


def anchor_alias(kind: str) -> str:
    return f"{LINK_ALIAS} guard {kind}"


def vnic_alias(vnic_id: str) -> str:
    return f"{LINK_ALIAS} vnic {vnic_id}"


def name_from_alias(alias: str | None, kind: str) -> str | None:
    """The name a link of this alias and kind is given by butterfly (None: not
    butterfly's alias): the way back for a link another program renamed."""
    words = (alias or "").split(" ", 2)
    if len(words) != 3 or words[0] != LINK_ALIAS:
        return None
    if words[1] == "vnic":
        return tap_name(words[2])
    if words[1] == "guard" and words[2] in ("filtered", "open") and kind == "tun":
        return anchor_name(words[2])
    if words[1] == "vni" and words[2].isdigit() and kind in ("bridge", "vxlan"):
        vni = int(words[2])
        return bridge_name(vni) if kind == "bridge" else vxlan_name(vni)
    return None


def is_butterfly_link(name: str, alias: str | None) -> bool:
    """True for a link butterfly created: its name's pattern and its alias agree."""
    return is_butterfly_name(name) and (alias or "").startswith(LINK_ALIAS + " ")


def is_butterfly_name(name: str) -> bool:
    """True for a name of butterfly's pattern (the alias comes in a second change)."""
    return _LINK.fullmatch(name) is not None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def profile_chains(sg_ids: Sequence[str]) -> tuple[str, str]:
    """The inbound and outbound chains shared by vnics using exactly ``sg_ids``."""
    digest = _digest("\0".join(sg_ids))
    return f"in_{digest}", f"out_{digest}"


def limit_names(connections: int, per_second: int) -> tuple[str, str, str]:
    """The chain, rate meter and connection count set of vnics with these caps."""
    suffix = f"{connections}_{per_second}"
    return f"lim_{suffix}", f"{DYNAMIC_PREFIX}rate_{suffix}", f"{DYNAMIC_PREFIX}conns_{suffix}"


def sg_in_chain(sg_id: str) -> str:
    return f"si_{_digest(sg_id)}"


def sg_out_chain(sg_id: str) -> str:
    return f"so_{_digest(sg_id)}"


def member_set(sg_id: str, family: int) -> str:
    """The set of a security group's IPv4 (family 4) or IPv6 members."""
    return f"m{family}_{_digest(sg_id)}"


def trace_path(socket_dir: str, vnic_id: str) -> str:
    """Default pcap file of a traced vnic (ends in .pcap, as tcpdump's AppArmor profile wants)."""
    return os.path.join(socket_dir, f"trace-{vnic_id}.pcap")


_TRACE_PIDFILE = ".bf-trace-{}.pid"


def trace_pidfile(socket_dir: str, vnic_id: str) -> str:
    """Where the pid of a vnic's tracing process is kept across daemon restarts."""
    return os.path.join(socket_dir, _TRACE_PIDFILE.format(_digest(vnic_id)))


def trace_pidfiles(socket_dir: str) -> str:
    """The glob pattern of every :func:`trace_pidfile` in ``socket_dir``."""
    return os.path.join(glob.escape(socket_dir), _TRACE_PIDFILE.format("*"))
