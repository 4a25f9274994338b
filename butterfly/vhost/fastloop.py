"""Which loop moves a device's frames, and the calls into the C one.

Owns the choice between the two implementations of the per-frame work
(``--vhost-loop``): ``c``, the extension :mod:`butterfly.vhost._fastloop`
built by ``pip install``, which handles a whole burst per call without the
interpreter; ``python``, the loop in :mod:`butterfly.vhost.device`, kept as
the fallback where the extension was not built; ``auto``, the C loop when
it imports. Also owns the translation of the extension's ``RingError`` into
:class:`~butterfly.errors.ProtocolError`, so a device handles a hostile ring
the same whichever loop found it. Must not import the device.
"""

import importlib
from dataclasses import dataclass
from types import ModuleType

from butterfly.errors import ConfigError, ProtocolError

from .memory import GuestMemory
from .virtqueue import Virtqueue

__all__ = ["LOOPS", "Burst", "describe", "receive", "resolve", "transmit"]

LOOPS = ("auto", "c", "python")


def _extension() -> tuple[ModuleType | None, str]:
    """The C loop, or None and why it does not import (for ``butterfly status``)."""
    try:
        return importlib.import_module("butterfly.vhost._fastloop"), ""
    except ImportError as e:
        return None, str(e)


_fastloop, _not_built = _extension()


def resolve(choice: str) -> str:
    """The loop ``choice`` means here: ``c`` or ``python``.

    Raises ConfigError when ``c`` is asked for and the extension was not built.
    """
    if choice not in LOOPS:
        raise ConfigError(f"vhost-loop: {choice!r} is not one of {', '.join(LOOPS)}")
    if choice == "python":
        return "python"
    if _fastloop is None:
        if choice == "c":
            raise ConfigError(
                "vhost-loop: c asked for, but butterfly.vhost._fastloop was not built "
                "(pip install needs gcc and python3.11-dev)"
            )
        return "python"
    return "c"


def describe(choice: str) -> str:
    """The loop ``choice`` runs here and why, for an operator: "c", or
    "python" with the reason the C loop does not run."""
    loop = resolve(choice)
    if loop == "c":
        return "c"
    if choice == "python":
        return "python (--vhost-loop python)"
    return f"python (C extension not built: {_not_built})"


@dataclass(frozen=True, slots=True)
class Burst:
    """What one call moved; ``no_buffers`` and ``tap_errno`` only on receive."""

    packets: int
    octets: int
    """Frame bytes, virtio-net headers not counted."""
    dropped: int
    more: bool
    """Work remains: come back without waiting for a kick or the tap."""
    no_buffers: bool = False
    """The guest posted no receive buffer: stop reading the tap until it kicks."""
    tap_errno: int = 0


def _ring(queue: Virtqueue, memory: GuestMemory) -> tuple[object, ...]:
    return (
        memory.regions,
        *queue.views(),
        queue.index,
        queue.size,
        queue.last_avail,
        queue.used_idx,
        queue.event_idx,
        queue.indirect,
        queue.call_fd,
    )


def transmit(queue: Virtqueue, memory: GuestMemory, *, tap: int, header: int, budget: int) -> Burst:
    """Guest to tap: up to ``budget`` chains, one writev each, one call of the driver."""
    assert _fastloop is not None
    try:
        last_avail, used_idx, packets, octets, dropped, more = _fastloop.transmit(
            tap, header, budget, *_ring(queue, memory)
        )
    except _fastloop.RingError as e:
        raise ProtocolError(str(e)) from None
    queue.last_avail = last_avail
    queue.used_idx = used_idx
    return Burst(packets, octets, dropped, more)


def receive(
    queue: Virtqueue,
    memory: GuestMemory,
    *,
    tap: int,
    header: int,
    budget: int,
    mergeable: bool,
    scratch: memoryview,
) -> Burst:
    """Tap to guest: up to ``budget`` frames, each read straight into a chain
    (spread over several with MRG_RXBUF), one call of the driver."""
    assert _fastloop is not None
    try:
        last_avail, used_idx, packets, octets, dropped, more, no_buffers, tap_errno = (
            _fastloop.receive(tap, header, budget, mergeable, scratch, *_ring(queue, memory))
        )
    except _fastloop.RingError as e:
        raise ProtocolError(str(e)) from None
    queue.last_avail = last_avail
    queue.used_idx = used_idx
    return Burst(packets, octets, dropped, more, no_buffers, tap_errno)
