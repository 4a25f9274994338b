"""The host's connection tracking table, as butterfly uses it.

One table holds every tenant's flows; the data plane gives each VNI a zone
of it (:mod:`butterfly.dataplane.nftables_state` allocates the zone ids).
Three jobs, one module each:

- :mod:`.sizing`: at start-up, the table made large enough for the host's
  memory and the timeouts of unanswered flows shortened (sysctls; the
  daemon calls :func:`size_conntrack` before it builds the data plane);
- :mod:`.sessions`: a vnic's entries in its VNI's zone, read and loaded
  (``nic_export`` / ``nic_import``) over ctnetlink with pyroute2, used by
  :class:`~butterfly.dataplane.kernel.KernelDataplane` through
  :class:`Conntrack`;
- :mod:`.zones`: how many entries each zone holds, for the metrics
  (:func:`zone_entries`), from one ctnetlink dump parsed with ``struct``
  (a host holds hundreds of thousands of entries; pyroute2 would decode
  every attribute of each).

:mod:`.sessions` and :mod:`.zones` both talk ctnetlink but stay apart: one
decodes a few entries fully, the other counts them all and decodes one
attribute. All three need CAP_NET_ADMIN (sizing: root) and act on the
network namespace of the calling thread. Nothing here imports the rest of
the data plane.
"""

from butterfly.dataplane.conntrack.sessions import LOADED_STATUS, Conntrack
from butterfly.dataplane.conntrack.sizing import Sizing, memory_bytes, size_conntrack
from butterfly.dataplane.conntrack.zones import zone_entries

__all__ = [
    "LOADED_STATUS",
    "Conntrack",
    "Sizing",
    "memory_bytes",
    "size_conntrack",
    "zone_entries",
]
