"""A port's checksum and segmentation offloads, as ``ethtool -K IF tx off tso off`` sets them.

Owns the one setting --no-offload makes on NETNS vnics' veths: the
transmit checksum and TCP segmentation offloads of each end, through
pyroute2's ethtool ioctls. Off on the outside end, the kernel checksums and
segments every frame before the namespace gets it; off on the inside end,
the namespace's own stack does so for what it sends. (Taps are not set
here: a tap's reader sets its offloads with TUNSETOFFLOAD, which overrides
ethtool; the vhost-user backend does so from what it offered the guest.)
The ioctl reaches the interface of the calling thread's network namespace.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2.ethtool.ioctl import IoctlEthtool, NoSuchDevice, NotSupportedError

from butterfly.errors import DataplaneError

__all__ = ["OFFLOADS", "offloads", "turn_off_offloads"]

OFFLOADS = ("tx-checksumming", "tcp-segmentation-offload")
"""The offloads --no-offload turns off, by ethtool's long names."""


def turn_off_offloads(ifname: str) -> None:
    """Turn :data:`OFFLOADS` off on ``ifname`` (nothing changes if already off)."""
    with _ethtool(ifname) as ethtool:
        for name in OFFLOADS:
            ethtool.set_offload_flag(name, 0)


def offloads(ifname: str) -> dict[str, bool]:
    """``ifname``'s offloads by ethtool's long names (``ethtool -k``'s first lines)."""
    with _ethtool(ifname) as ethtool:
        flags: dict[str, bool] = ethtool.get_offload_flags()
        return flags


@contextmanager
def _ethtool(ifname: str) -> Iterator[Any]:
    """pyroute2's ethtool on one interface; its errors become DataplaneError."""
    ethtool = IoctlEthtool(ifname)
    try:
        yield ethtool
    except NoSuchDevice:
        raise DataplaneError(f"offloads of {ifname}: no such interface") from None
    except NotSupportedError:
        raise DataplaneError(f"offloads of {ifname}: not supported by the device") from None
    except OSError as error:
        raise DataplaneError(f"offloads of {ifname}: {error.strerror}") from None
    finally:
        ethtool.close()
