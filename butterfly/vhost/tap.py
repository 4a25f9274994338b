"""The kernel side of a vhost-user vnic: an existing tap opened with a vnet header.

Owns the tap file descriptor and the two settings that make offloads work
end to end: the vnet header size (the virtio-net header, passed through
unchanged between guest buffers and the tap) and the offloads the kernel may
use towards the guest (TUNSETOFFLOAD), derived from what the guest accepted.
The tap itself is created and enslaved by the kernel data plane, not here.
"""

import errno
import fcntl
import os
import struct

from butterfly.errors import DataplaneError

from .protocol import Feature

__all__ = ["header_size", "offload_flags", "open_tap", "set_guest_features"]

_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_TUNSETVNETHDRSZ = 0x400454D8
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_MULTI_QUEUE = 0x0100
_IFF_VNET_HDR = 0x4000
_TUN_F_CSUM = 0x01
_TUN_F_TSO4 = 0x02
_TUN_F_TSO6 = 0x04
_TUN_F_TSO_ECN = 0x08


def header_size(features: int) -> int:
    """The virtio-net header's size: num_buffers exists with VERSION_1 or MRG_RXBUF."""
    return 12 if features & (Feature.VERSION_1 | Feature.MRG_RXBUF) else 10


def offload_flags(features: int) -> int:
    """What the kernel may hand the guest: only what the guest said it can take.

    Segmentation offloads need checksum offload too (virtio 5.1.3.1), so
    without GUEST_CSUM the kernel segments and checksums everything itself.
    """
    if not features & Feature.GUEST_CSUM:
        return 0
    flags = _TUN_F_CSUM
    if features & Feature.GUEST_TSO4:
        flags |= _TUN_F_TSO4
    if features & Feature.GUEST_TSO6:
        flags |= _TUN_F_TSO6
    if flags & (_TUN_F_TSO4 | _TUN_F_TSO6) and features & Feature.GUEST_ECN:
        flags |= _TUN_F_TSO_ECN
    return flags


def open_tap(name: str) -> int:
    """Attach to the existing tap ``name``; a non-blocking fd with a vnet header.

    A multi-queue tap refuses a single-queue attach (and the reverse), so the
    other mode is tried before giving up.
    """
    if not name or len(name.encode()) > 15:
        raise DataplaneError(f"vhost: tap name {name!r} is not a valid interface name")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        for extra in (0, _IFF_MULTI_QUEUE):
            ifreq = struct.pack(
                "16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR | extra
            )
            try:
                fcntl.ioctl(fd, _TUNSETIFF, ifreq)
                break
            except OSError as e:
                if e.errno != errno.EINVAL or extra:
                    raise
        set_guest_features(fd, 0)
    except OSError as e:
        os.close(fd)
        raise DataplaneError(f"vhost: cannot attach to tap {name}: {e.strerror}") from None
    return fd


def set_guest_features(fd: int, features: int) -> None:
    """Match the tap's vnet header and offloads to the guest's negotiated features."""
    fcntl.ioctl(fd, _TUNSETVNETHDRSZ, struct.pack("i", header_size(features)))
    fcntl.ioctl(fd, _TUNSETOFFLOAD, offload_flags(features))
