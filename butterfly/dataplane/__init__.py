"""The data plane: what makes the kernel carry the vnics of the model.

``base`` holds the :class:`Dataplane` protocol the service talks to;
``naming`` derives every kernel object's name from the model's ids; the
implementations sit beside them: ``control_only`` (no kernel) and
``kernel``, whose :class:`~butterfly.dataplane.kernel.KernelDataplane`
orders each request's steps and composes one module per kind of kernel
object:

- ``nftables_state``: the mirror of butterfly's nftables tables, the diff a
  request sends, the mark and conntrack zone ids (``ruleset`` says what the
  objects are, ``nft`` talks to libnftables);
- ``vni``: a VNI's bridge and VXLAN device, its flooding, EVPN neighbours;
- ``ports``: a vnic's tap or veth on its bridge, vhost-user serving;
- ``peer``: the end of a NETNS vnic's veth inside its namespace (``netns``);
- ``links``: what every link goes through (claim, fix, guard, rename back);
- ``tracing``: packet traces; ``graph``: the picture of the data path;
  ``cleanup``: removing everything butterfly made;
- ``settings``: what the daemon's configuration decides for all of them;
- ``netlink``: links through netlink (``rtlink`` reads them and sends the
  changes ``rtchange`` encodes; pyroute2 for the rest); ``deleter``: the
  thread that deletes the links a request left unused; ``forked``: a big
  transient read (the tables' listing) in a child process; ``journal``: the
  undo log that makes each request all or nothing.

The data plane takes model objects and makes the kernel match them; it
never imports the service, store or api.
"""

from butterfly.dataplane.base import (
    Attachment,
    Counters,
    Dataplane,
    Progress,
    SgChange,
    VhostPorts,
)

__all__ = ["Attachment", "Counters", "Dataplane", "Progress", "SgChange", "VhostPorts"]
