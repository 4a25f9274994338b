"""Durable desired state: the SQLite file that is butterfly's source of truth.

``base`` defines the :class:`Store` protocol the service uses; ``sqlite``
implements it. The store knows the model's objects and SQL, nothing of the
kernel or the wire protocol.
"""

from butterfly.store.base import Store, StoreTransaction
from butterfly.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store", "StoreTransaction"]
