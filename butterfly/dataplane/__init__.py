"""The data plane: what makes the kernel carry the vnics of the model.

``base`` holds the :class:`Dataplane` protocol the service talks to;
``naming`` derives every kernel object's name from the model's ids; the
implementations sit beside them. The data plane takes model objects and
makes the kernel match them; it never imports the service, store or api.
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
