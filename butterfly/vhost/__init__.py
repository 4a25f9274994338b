"""The vhost-user backend: guests' virtqueues to and from a tap, in worker processes.

The one part of butterfly that moves packets itself. The kernel data plane
creates a tap per vhost-user vnic and asks a :class:`VhostSupervisor` to
serve ``<socket-dir>/qemu-vhost-<id>`` for it (through
:class:`VhostUserServer`); everything else here is internal:

    protocol     vhost-user messages, feature bits, framing with fds
    memory       the frontend's memory regions, mapped; address checks
    virtqueue    split rings: chains, used ring, notification suppression
    tap          the tap fd, its vnet header and offloads
    device       one vnic: socket, session, packet work (the Python loop)
    fastloop     which loop runs (--vhost-loop); calls into _fastloop
    _fastloop    the C loop: a burst of frames per call (built by pip install)
    worker       a worker process's event loop and control channel
    counters     per-vnic counters shared with the daemon
    supervisor   worker processes and the API above

Must not import butterfly.service, api, daemon or store.
"""

from .counters import VnicCounters
from .supervisor import VhostSupervisor, VhostUserServer

__all__ = ["VhostSupervisor", "VhostUserServer", "VnicCounters"]
