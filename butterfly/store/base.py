"""The :class:`Store` protocol: load the whole state, change it in transactions.

Changes are expressed as small operations (one member, one rule) rather than
"save this security group", so that adding the 10,000th member of a group
writes one row, not 10,000.
"""

from contextlib import AbstractContextManager
from typing import Protocol

from butterfly.model import Rule, SecurityGroup, State, Vnic

__all__ = ["Store", "StoreTransaction"]


class StoreTransaction(Protocol):
    """Writes that become durable together when the transaction commits."""

    def put_vnic(self, vnic: Vnic) -> None: ...
    def delete_vnic(self, vnic_id: str) -> None: ...
    def put_sg(self, sg: SecurityGroup) -> None:
        """Create or fully replace a security group with its rules and members."""

    def delete_sg(self, sg_id: str) -> None: ...
    def add_rule(self, sg_id: str, rule: Rule) -> None: ...
    def delete_rule(self, sg_id: str, rule: Rule) -> None: ...
    def add_member(self, sg_id: str, member: str) -> None: ...
    def delete_member(self, sg_id: str, member: str) -> None: ...
    def set_peers(self, vni: int, peers: tuple[str, ...]) -> None: ...


class Store(Protocol):
    def load(self) -> State:
        """Everything that was committed, as a fresh State."""

    def transaction(self) -> AbstractContextManager[StoreTransaction]:
        """Commit on normal exit (durably, before returning), roll back on error."""

    def close(self) -> None: ...
