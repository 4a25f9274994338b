"""Use cases: apply requests to the store and the data plane as one unit.

Imports the model and the store/data plane *protocols*; never a concrete
backend (the daemon picks those) and never the API.
"""

from butterfly.dataplane.base import Attachment, Counters
from butterfly.service.switch import Switch, VnicDetails

__all__ = ["Attachment", "Counters", "Switch", "VnicDetails"]
