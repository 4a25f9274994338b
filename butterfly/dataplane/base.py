"""The seam between the service and the kernel: the :class:`Dataplane` protocol.

The service decides *what* must exist (it owns the store and the model);
a data plane makes the kernel match it. Every method is atomic: it either
makes its whole change or raises :class:`~butterfly.errors.DataplaneError`
with the kernel left as it was, so the service can roll back the store.

The data plane receives the desired state *after* the change as a read-only
:class:`~butterfly.model.StateView`, so it can look up the vnics that use a
security group without keeping a copy of its own.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from butterfly.model import SecurityGroup, StateView, Vnic
from butterfly.model.sessions import Session

__all__ = ["Attachment", "Counters", "Dataplane", "Progress", "SgChange", "VhostPorts"]


@dataclass(frozen=True, slots=True)
class Attachment:
    """Where a guest plugs into a vnic, as answered in nic_add and nic_details."""

    path: str
    """The vhost-user socket, the tap's name or the netns the veth went into."""
    mtu: int | None = None
    """None when the data plane does not set one."""
    packet_trace: bool = False
    """Whether the vnic is traced: its own setting, else the daemon's (-t)."""
    packet_trace_path: str = ""
    """The pcap file its trace goes (or would go) to."""


@dataclass(frozen=True, slots=True)
class Counters:
    """Bytes seen by the switch; "in" is what the vnic received from the switch
    (towards the guest) and "out" what the guest sent into the switch."""

    in_bytes: int = 0
    out_bytes: int = 0
    sniffed_frames: int | None = None
    """Frames to and from the vnic copied to its sniff target (None: it names none)."""
    sniffed_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class SgChange:
    """One security group before and after a request (None: absent)."""

    before: SecurityGroup | None
    after: SecurityGroup | None


class Progress(NamedTuple):
    """How far a reconcile is: ``done`` of ``total`` objects checked."""

    done: int
    total: int

    def next(self) -> "Progress":
        return Progress(self.done + 1, self.total)


class Dataplane(Protocol):
    """Makes the kernel match the desired state, one atomic step at a time."""

    def reconcile(self, state: StateView) -> None:
        """Make everything match ``state``: at start-up, or to repair after a failure.

        Creates what is missing, removes butterfly's objects the state does
        not have, and leaves correct objects untouched (no traffic cut).
        """

    def reconcile_steps(self, state: StateView) -> Iterator[Progress]:
        """:meth:`reconcile` one object at a time, yielding how far it is; the
        caller may apply requests between steps (start-up without a dark API)."""

    def plug(self, vnic: Vnic, replaced: Vnic | None, state: StateView) -> Attachment:
        """Create ``vnic`` (replacing ``replaced``, the previous vnic of that id)."""

    def update(self, before: Vnic, after: Vnic, state: StateView) -> None:
        """Apply a nic_update (addresses, security groups, anti-spoof, tracing)."""

    def unplug(self, vnic: Vnic, state: StateView) -> None:
        """Remove ``vnic``; ``state`` no longer holds it."""

    def update_security_groups(self, changes: Mapping[str, SgChange], state: StateView) -> None:
        """Security groups whose rules or members changed, were created or deleted."""

    def update_peers(self, vni: int, state: StateView) -> None:
        """The static flooding peers of ``vni`` changed (``state.peers(vni)``)."""

    def attachment(self, vnic: Vnic) -> Attachment:
        """Where ``vnic`` is plugged (nic_details)."""

    def counters(self, vnic: Vnic) -> Counters:
        """The kernel's byte counters of ``vnic`` (nic_stats)."""

    def sessions(self, vnic: Vnic) -> tuple[Session, ...]:
        """``vnic``'s firewall sessions: its VNI's conntrack entries with one of
        its addresses at an end (nic_export)."""

    def load_sessions(self, vnic: Vnic, sessions: Sequence[Session]) -> int:
        """Add ``sessions`` to ``vnic``'s VNI's conntrack zone, all or none
        (nic_import); how many were not there yet."""

    def graph(self, state: StateView) -> str:
        """The data path as a Graphviz DOT graph (app_status)."""

    def close(self) -> None:
        """Stop background work; the kernel objects stay and keep forwarding."""


class VhostPorts(Protocol):
    """A vhost-user backend, as a data plane uses it: guests' rings to and from a tap.

    The data plane owns the tap (created, enslaved, filtered, counted and
    traced by the kernel like any other port); the backend only moves frames
    between the tap and the guest that connects to the socket. So vhost-user
    vnics get the kernel's filtering and counters, not a second copy of them.
    """

    def serve(self, vnic_id: str, *, socket_path: str, tap_name: str) -> None:
        """Listen on ``socket_path`` and attach to the existing tap ``tap_name``.

        Serving a vnic again replaces its server (a connected guest is
        disconnected; QEMU with ``reconnect=1`` comes back). Raises
        DataplaneError, naming the socket or the tap, when either is unusable.
        """

    def stop(self, vnic_id: str) -> None:
        """Disconnect the vnic's guest and remove its socket; nothing when not served."""
