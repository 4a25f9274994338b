"""The use cases of the switch: apply one request to the store and the kernel.

Every change runs through :meth:`Switch._change`: validate, write the store
(uncommitted), update the in-memory state, ask the data plane to make the
kernel match, then commit. If any step fails, the store rolls back, the
in-memory state is restored and the data plane has already undone its own
step, so a failed request changes nothing. The service is used by one thread
at a time (the API server's).
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from butterfly.dataplane import Attachment, Counters, Dataplane, SgChange
from butterfly.errors import (
    BadNic,
    BadRequest,
    BadSessions,
    NicNotFound,
    SgNotFound,
    StoreError,
    shown,
)
from butterfly.model import (
    MAX_VNI,
    Rule,
    SecurityGroup,
    State,
    StateView,
    Vnic,
    VnicUpdate,
    canonical_ip,
    check_sg_id,
    make_member,
    make_vnic,
)
from butterfly.model.sessions import SessionExport, decode_sessions, encode_sessions
from butterfly.store.base import Store, StoreTransaction

__all__ = ["Switch", "VnicDetails"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VnicDetails:
    vnic: Vnic
    attachment: Attachment


class _Change:
    """One request's writes: to the store transaction and to the memory state,
    with the undo steps that restore the memory state if the request fails."""

    def __init__(self, state: State, tx: StoreTransaction) -> None:
        self.state = state
        self.tx = tx
        self._undo: list[Callable[[], object]] = []

    def put_vnic(self, vnic: Vnic) -> Vnic | None:
        self.tx.put_vnic(vnic)
        old = self.state.put_vnic(vnic)
        if old is None:
            self._undo.append(lambda: self.state.remove_vnic(vnic.id))
        else:
            self._undo.append(lambda: self.state.put_vnic(old))
        return old

    def remove_vnic(self, vnic: Vnic) -> None:
        self.tx.delete_vnic(vnic.id)
        self.state.remove_vnic(vnic.id)
        self._undo.append(lambda: self.state.put_vnic(vnic))

    def put_sg(self, sg: SecurityGroup, old: SecurityGroup | None) -> None:
        """Record ``sg`` in memory; the caller has already written the store."""
        self.state.put_sg(sg)
        if old is None:
            self._undo.append(lambda: self.state.remove_sg(sg.id))
        else:
            self._undo.append(lambda: self.state.put_sg(old))

    def remove_sg(self, sg: SecurityGroup) -> None:
        self.tx.delete_sg(sg.id)
        self.state.remove_sg(sg.id)
        self._undo.append(lambda: self.state.put_sg(sg))

    def set_peers(self, vni: int, peers: tuple[str, ...]) -> None:
        self.tx.set_peers(vni, peers)
        old = self.state.set_peers(vni, peers)
        self._undo.append(lambda: self.state.set_peers(vni, old))

    def undo(self) -> None:
        for step in reversed(self._undo):
            step()
        self._undo.clear()


class Switch:
    """vnics, security groups and VNI peers: the operations the API offers."""

    def __init__(self, *, store: Store, dataplane: Dataplane, state: State) -> None:
        self._store = store
        self._dataplane = dataplane
        self._state = state

    @property
    def state(self) -> StateView:
        return self._state

    @contextmanager
    def _change(self) -> Iterator[_Change]:
        change: _Change | None = None
        applied = False
        try:
            with self._store.transaction() as tx:
                change = _Change(self._state, tx)
                yield change
                applied = True
        except StoreError:
            if change is not None:
                change.undo()
            if applied:
                log.error("the store failed to commit: repairing the kernel to the store")
                self._dataplane.reconcile(self._state)
            raise
        except BaseException:
            if change is not None:
                change.undo()
            raise

    # vnics

    def add_vnic(self, vnic: Vnic) -> Attachment:
        """Create a vnic; an existing vnic of that id is fully replaced."""
        vnic = make_vnic(vnic)
        if self._state.vnic(vnic.id) == vnic:
            return self._dataplane.attachment(vnic)
        other = self._state.vnic_with_mac(vnic.vni, vnic.mac)
        if other is not None and other.id != vnic.id:
            raise BadNic(
                f"nic {shown(vnic.id)}: mac {vnic.mac} is already used by nic "
                f"{shown(other.id)} in vni {vnic.vni}"
            )
        with self._change() as change:
            old = change.put_vnic(vnic)
            return self._dataplane.plug(vnic, old, self._state)

    def update_vnic(self, update: VnicUpdate) -> Vnic:
        before = self._get_vnic(update.id)
        after = update.apply_to(before)
        if after == before:
            return after
        with self._change() as change:
            change.put_vnic(after)
            self._dataplane.update(before, after, self._state)
        return after

    def delete_vnic(self, vnic_id: str) -> None:
        vnic = self._state.vnic(vnic_id)
        if vnic is None:
            return
        with self._change() as change:
            change.remove_vnic(vnic)
            self._dataplane.unplug(vnic, self._state)

    def vnic_ids(self) -> list[str]:
        return [vnic.id for vnic in self._state.vnics()]

    def vnic_details(self, vnic_id: str) -> list[VnicDetails]:
        """One vnic, or every vnic (sorted by id) when ``vnic_id`` is empty."""
        vnics = list(self._state.vnics()) if not vnic_id else [self._get_vnic(vnic_id)]
        return [VnicDetails(vnic, self._dataplane.attachment(vnic)) for vnic in vnics]

    def vnic_counters(self, vnic_id: str) -> Counters:
        return self._dataplane.counters(self._get_vnic(vnic_id))

    def export_vnic(self, vnic_id: str) -> bytes:
        """The vnic's firewall sessions, as the blob of :mod:`butterfly.model.sessions`."""
        vnic = self._get_vnic(vnic_id)
        sessions = self._dataplane.sessions(vnic)
        log.info("nic %s: exported %d firewall sessions", vnic.id, len(sessions))
        return encode_sessions(SessionExport(vni=vnic.vni, nic_id=vnic.id, sessions=sessions))

    def import_sessions(self, vnic_id: str, data: bytes) -> int:
        """Load a blob of ``export_vnic`` (from another host) into the vnic; how
        many sessions were new. Every check comes before the kernel is touched."""
        vnic = self._get_vnic(vnic_id)
        export = decode_sessions(data)
        if export.vni != vnic.vni:
            raise BadSessions(
                f"nic {shown(vnic.id)} is in vni {vnic.vni}, the blob's sessions are of "
                f"vni {export.vni} (nic {shown(export.nic_id)})"
            )
        for index, session in enumerate(export.sessions):
            if not session.involves(vnic.ips):
                flow = session.original
                raise BadSessions(
                    f"session {index} ({flow.src} -> {flow.dst}) has none of nic "
                    f"{shown(vnic.id)}'s addresses at an end"
                )
        loaded = self._dataplane.load_sessions(vnic, export.sessions)
        log.info(
            "nic %s: imported %d firewall sessions (%d new)",
            vnic.id,
            len(export.sessions),
            loaded,
        )
        return loaded

    def _get_vnic(self, vnic_id: str) -> Vnic:
        vnic = self._state.vnic(vnic_id)
        if vnic is None:
            raise NicNotFound(vnic_id)
        return vnic

    # security groups

    def put_sg(self, sg: SecurityGroup) -> None:
        """Create or replace a whole security group (already validated)."""
        old = self._state.sg(sg.id)
        if old == sg:
            return
        with self._change() as change:
            change.tx.put_sg(sg)
            change.put_sg(sg, old)
            self._dataplane.update_security_groups({sg.id: SgChange(old, sg)}, self._state)

    def delete_sg(self, sg_id: str) -> None:
        """Vnics keep naming a deleted group; it just grants nothing until re-created."""
        sg = self._state.sg(sg_id)
        if sg is None:
            return
        with self._change() as change:
            change.remove_sg(sg)
            self._dataplane.update_security_groups({sg_id: SgChange(sg, None)}, self._state)

    def sg_ids(self) -> list[str]:
        return [sg.id for sg in self._state.sgs()]

    def sg_details(self, sg_id: str) -> list[SecurityGroup]:
        return list(self._state.sgs()) if not sg_id else [self._get_sg(sg_id)]

    def add_rule(self, sg_id: str, rule: Rule) -> None:
        check_sg_id(sg_id)
        old = self._state.sg(sg_id)
        new = (old or SecurityGroup(sg_id)).with_rule(rule)
        if new is old:
            return
        with self._change() as change:
            change.tx.add_rule(sg_id, rule)
            change.put_sg(new, old)
            self._dataplane.update_security_groups({sg_id: SgChange(old, new)}, self._state)

    def delete_rule(self, sg_id: str, rule: Rule) -> None:
        old = self._state.sg(sg_id)
        if old is None or rule not in old.rules:
            return
        new = old.without_rule(rule)
        with self._change() as change:
            change.tx.delete_rule(sg_id, rule)
            change.put_sg(new, old)
            self._dataplane.update_security_groups({sg_id: SgChange(old, new)}, self._state)

    def rules(self, sg_id: str) -> tuple[Rule, ...]:
        return self._get_sg(sg_id).rules

    def add_member(self, sg_id: str, member: str) -> None:
        check_sg_id(sg_id)
        member = make_member(sg_id, member)
        old = self._state.sg(sg_id)
        new = (old or SecurityGroup(sg_id)).with_member(member)
        if new is old:
            return
        with self._change() as change:
            change.tx.add_member(sg_id, member)
            change.put_sg(new, old)
            self._dataplane.update_security_groups({sg_id: SgChange(old, new)}, self._state)

    def delete_member(self, sg_id: str, member: str) -> None:
        member = make_member(sg_id, member)
        old = self._state.sg(sg_id)
        if old is None or member not in old.members:
            return
        new = old.without_member(member)
        with self._change() as change:
            change.tx.delete_member(sg_id, member)
            change.put_sg(new, old)
            self._dataplane.update_security_groups({sg_id: SgChange(old, new)}, self._state)

    def members(self, sg_id: str) -> tuple[str, ...]:
        return self._get_sg(sg_id).members

    def _get_sg(self, sg_id: str) -> SecurityGroup:
        sg = self._state.sg(sg_id)
        if sg is None:
            raise SgNotFound(sg_id)
        return sg

    # static VXLAN peers

    def add_peer(self, vni: int, peer: str) -> None:
        peer = _check_peer(vni, peer)
        peers = self._state.peers(vni)
        if peer in peers:
            return
        with self._change() as change:
            change.set_peers(vni, (*peers, peer))
            self._dataplane.update_peers(vni, self._state)

    def delete_peer(self, vni: int, peer: str) -> None:
        peer = _check_peer(vni, peer)
        peers = self._state.peers(vni)
        if peer not in peers:
            return
        with self._change() as change:
            change.set_peers(vni, tuple(p for p in peers if p != peer))
            self._dataplane.update_peers(vni, self._state)

    def peers(self) -> dict[int, tuple[str, ...]]:
        return self._state.all_peers()

    # the whole switch

    def graph(self) -> str:
        return self._dataplane.graph(self._state)


def _check_peer(vni: int, peer: str) -> str:
    if not 0 <= vni <= MAX_VNI:
        raise BadRequest(f"Bad VNI format: vni {vni} is out of range 0-{MAX_VNI}")
    canonical = canonical_ip(peer)
    if canonical is None:
        raise BadRequest(
            f"Bad IP format: vni {vni}: peer {shown(peer)} is not an IPv4 or IPv6 address"
        )
    return canonical
