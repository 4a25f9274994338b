"""The network namespace's multicast limits, raised before VXLAN devices need them.

A VXLAN device of a multicast VNI joins its VNI's group when it goes up, and
all such devices share the one UDP socket the kernel keeps per namespace,
port and family. That socket may hold at most
``net.ipv4.igmp_max_memberships`` IPv4 groups (20 by default: the 21st VNI
failed with ENOBUFS), and every membership is charged to its option memory,
capped by ``net.core.optmem_max`` (128 KiB on Linux 6.x: about 2,700 IPv4
groups, ENOBUFS beyond, or 2,300 IPv6 groups, ENOMEM beyond; IPv6 has no
count limit). Both settings belong to the network namespace, so butterflyd
raises them in its own, and only ever raises them.

Owns those two settings and the advice given when a device still cannot
join. Imports nothing of butterfly but the errors' wording.
"""

import errno
import logging
import os
from collections.abc import Iterator, Mapping

from butterfly.dataplane.kernel_errors import code_of, explain

__all__ = ["MEMBERSHIP_BYTES", "MulticastLimits"]

log = logging.getLogger(__name__)

MEMBERSHIP_BYTES = 64
"""Option memory per group: 48 bytes measured for IPv4, 56 for IPv6, rounded up."""
_OPTMEM_SLACK = 16384
"""Room for the shared socket's other option memory."""
_FIRST = 4096
"""The first raise covers this many groups: one log line for hosts of usual size."""
_STEP = 1024
"""Later raises round up to this, so that a growing host rarely writes them."""
IGMP = "net.ipv4.igmp_max_memberships"
OPTMEM = "net.core.optmem_max"


class MulticastLimits:
    """The limits of the namespace the caller's thread is in, for an IPv4
    (``version`` 4) or IPv6 underlay; ``proc_sys`` is where sysctls are read."""

    def __init__(self, version: int, *, proc_sys: str = "/proc/sys") -> None:
        self._names = (IGMP, OPTMEM) if version == 4 else (OPTMEM,)
        self._proc_sys = proc_sys
        self._problem: str | None = None
        self._room = 0
        """Groups the settings were last seen to hold (read again only beyond:
        four /proc reads were a tenth of a new VNI's nic_add)."""

    def ensure(self, groups: int) -> None:
        """Make room for ``groups`` memberships on the shared socket.

        A setting that cannot be raised is logged, not raised: the devices
        may fit anyway, and one that does not is refused by the kernel with
        :meth:`advice` as the remedy.
        """
        if groups <= self._room:
            return
        covered = max(_FIRST, -(-groups // _STEP) * _STEP)
        problems = []
        room = []
        for name in self._names:
            current = self._read(name)
            if current is None or current >= _needed(name, groups):
                room.append(_held(name, current) if current is not None else 0)
                continue
            wanted = _needed(name, covered)
            try:
                self._write(name, wanted)
            except OSError as exc:
                code = code_of(exc) or errno.EIO
                problems.append(f"{errno.errorcode.get(code, code)}: {os.strerror(code)}")
                log.warning(
                    "%s; multicast VNIs beyond %d will be refused",
                    explain(f"cannot raise {name} from {current}", code),
                    current if name == IGMP else current // MEMBERSHIP_BYTES,
                )
                room.append(0)
                continue
            room.append(covered)
            log.info(
                "raised %s from %d to %d in this network namespace, for up to %d multicast "
                "VNIs (each VNI's VXLAN device joins one group on a socket they share)",
                name,
                current,
                wanted,
                covered,
            )
        self._problem = "; ".join(problems) or None
        self._room = min(room)

    def remedies(self) -> Mapping[int, str]:
        """:meth:`advice` for the errnos of a VXLAN device that could not join
        its group (ENOBUFS, ENOMEM), read only when the kernel refuses one."""
        return _Remedies(self)

    def advice(self) -> str:
        """What to do when a VXLAN device could not join its group (ENOBUFS, ENOMEM)."""
        shown = " and ".join(f"{name} = {self._read(name)}" for name in self._names)
        why = f", which butterflyd could not raise ({self._problem})" if self._problem else ""
        return (
            f"the VXLAN devices of multicast VNIs join their groups on one shared socket, "
            f"limited by {shown}{why}: raise them with sysctl -w, or flood to static peers "
            "(--vxlan-peers) instead of multicast"
        )

    def _path(self, name: str) -> str:
        return os.path.join(self._proc_sys, *name.split("."))

    def _read(self, name: str) -> int | None:
        try:
            with open(self._path(name), encoding="ascii") as file:
                return int(file.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _write(self, name: str, value: int) -> None:
        with open(self._path(name), "w", encoding="ascii") as file:
            file.write(f"{value}\n")


def _needed(name: str, groups: int) -> int:
    return groups if name == IGMP else groups * MEMBERSHIP_BYTES + _OPTMEM_SLACK


def _held(name: str, value: int) -> int:
    """The groups a setting of ``value`` holds (the inverse of :func:`_needed`)."""
    return value if name == IGMP else max(0, value - _OPTMEM_SLACK) // MEMBERSHIP_BYTES


class _Remedies(Mapping[int, str]):
    """ENOBUFS and ENOMEM -> the limits' advice, computed when looked up."""

    _CODES = (errno.ENOBUFS, errno.ENOMEM)

    def __init__(self, limits: MulticastLimits) -> None:
        self._limits = limits

    def __getitem__(self, code: int) -> str:
        if code not in self._CODES:
            raise KeyError(code)
        return self._limits.advice()

    def __iter__(self) -> Iterator[int]:
        return iter(self._CODES)

    def __len__(self) -> int:
        return len(self._CODES)
