"""Why the kernel refused a change, said so that an operator can act on it.

Owns the one table from an errno to its likely cause and what to do about
it. :mod:`~butterfly.dataplane.netlink`, :mod:`~butterfly.dataplane.nft`,
:mod:`~butterfly.dataplane.netns` and :mod:`~butterfly.dataplane.limits`
build their :class:`~butterfly.errors.DataplaneError` messages through
:func:`explain`, so a reply never carries a bare ``[Errno 105] None``: it
names the object (the caller's ``what``), the cause and the remedy.

Imports nothing of butterfly but the errors; knows no kernel object names.
"""

import errno
import os
from collections.abc import Mapping

__all__ = ["ERRNO_ADVICE", "code_of", "explain", "explain_text"]

_PRIVILEGE = (
    "butterflyd is not allowed to make this change",
    "run butterflyd as root (it needs CAP_NET_ADMIN in its network namespace)",
)
_UNSUPPORTED = (
    "this kernel does not support it",
    "run butterflyd on a kernel with the feature (Linux 5.18 or later, with bridge, "
    "VXLAN, tun and nftables)",
)

ERRNO_ADVICE: Mapping[int, tuple[str, str]] = {
    errno.ENOBUFS: (
        "a kernel limit of this network namespace is reached or its buffers are full",
        "raise the limit named in butterflyd's log (for multicast VNIs "
        "net.ipv4.igmp_max_memberships and net.core.optmem_max) or free some, then retry",
    ),
    errno.ENOMEM: (
        "the kernel could not allocate memory for it (or a per-socket limit, "
        "net.core.optmem_max, is reached)",
        "free memory on the host or raise net.core.optmem_max, then retry",
    ),
    errno.EEXIST: (
        "an object with that name or address already exists",
        "remove or rename the other object (see ip link show), or run "
        "butterflyd --cleanup if it is left over from butterfly, then retry",
    ),
    errno.ENODEV: (
        "the device is gone (deleted or renamed outside butterfly)",
        "retry; restarting butterflyd repairs butterfly's own devices",
    ),
    errno.ENOENT: (
        "it does not exist",
        "check the name given; restarting butterflyd repairs butterfly's own objects",
    ),
    errno.EPERM: _PRIVILEGE,
    errno.EACCES: _PRIVILEGE,
    errno.ENOSPC: (
        "a kernel table is full (forwarding entries, an nftables set or map)",
        "remove objects that are no longer used or raise the table's limit, then retry",
    ),
    errno.ENAMETOOLONG: (
        "a name is longer than the kernel accepts",
        "use a shorter name (a path of at most 4095 bytes, each part at most 255)",
    ),
    errno.EROFS: (
        "the setting is read-only here (a container's /proc/sys, say)",
        "set it from outside (the host, or the container's configuration), or give "
        "butterflyd a writable /proc/sys",
    ),
    errno.EXFULL: (
        "a Linux bridge holds at most 1,024 ports and this VNI's bridge is full",
        "put this vnic in another VNI, or on another host",
    ),
    errno.EBUSY: (
        "the object is in use by something else",
        "retry once whatever holds it lets it go",
    ),
    errno.EINVAL: (
        "the kernel rejected the values given",
        "check the request's values; butterflyd's log at debug level shows the change",
    ),
    errno.EOPNOTSUPP: _UNSUPPORTED,
    errno.EAFNOSUPPORT: _UNSUPPORTED,
    errno.EPROTONOSUPPORT: _UNSUPPORTED,
    errno.EMFILE: (
        "butterflyd has too many files open",
        "raise butterflyd's open-file limit (LimitNOFILE, ulimit -n)",
    ),
    errno.ENFILE: (
        "the host has too many files open",
        "raise fs.file-max or close files elsewhere",
    ),
    errno.EADDRNOTAVAIL: (
        "the address is not available on this host",
        "check the underlay address (--ip) and the addresses given",
    ),
    errno.ENETUNREACH: (
        "the underlay cannot reach that network",
        "check the underlay's routes and the peer's address",
    ),
}


def code_of(exc: BaseException) -> int | None:
    """The errno an exception carries (pyroute2's NetlinkError keeps it in ``code``)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return code
    number = getattr(exc, "errno", None)
    return number if isinstance(number, int) and number > 0 else None


def explain(what: str, code: int | None, advice: Mapping[int, str] | None = None) -> str:
    """``what: cause (ENAME); remedy``: ``advice`` overrides the remedy for this operation."""
    if code is None:
        return f"{what}: the kernel refused it without saying why; see butterflyd's log and retry"
    name = errno.errorcode.get(code, f"errno {code}")
    cause, remedy = ERRNO_ADVICE.get(
        code, (os.strerror(code)[:1].lower() + os.strerror(code)[1:], "see butterflyd's log")
    )
    if advice is not None and code in advice:
        remedy = advice[code]
    return f"{what}: {cause} ({name}: {os.strerror(code)}); {remedy}"


def explain_text(what: str, text: str) -> str:
    """A tool's error ``text`` (nft's), with the remedy of the first errno it quotes."""
    for code, (_, remedy) in ERRNO_ADVICE.items():
        if os.strerror(code) in text:
            return f"{what}: {text} ({errno.errorcode[code]}); {remedy}"
    return f"{what}: {text}"
