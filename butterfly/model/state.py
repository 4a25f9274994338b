"""The desired state of a switch: every vnic and security group, by id.

The service keeps one :class:`State` in memory, mirrored by the store, and
hands it (read-only, as :class:`StateView`) to the data plane, which needs to
ask "which vnics use this security group" without scanning 10,000 vnics.
"""

from collections.abc import Callable, Hashable, Iterator
from typing import Protocol, TypeVar

from butterfly.model.security_group import SecurityGroup
from butterfly.model.vnic import Vnic

__all__ = ["State", "StateView"]

K = TypeVar("K", bound=Hashable)


class StateView(Protocol):
    """What the data plane may read of the desired state."""

    def vnic(self, vnic_id: str) -> Vnic | None: ...
    def sg(self, sg_id: str) -> SecurityGroup | None: ...
    def vnics(self) -> Iterator[Vnic]: ...
    def sgs(self) -> Iterator[SecurityGroup]: ...
    def vnics_using(self, sg_id: str) -> list[Vnic]: ...
    def vnics_in(self, vni: int) -> list[Vnic]: ...
    def count_in(self, vni: int) -> int: ...
    def any_in(self, vni: int, test: Callable[[Vnic], bool]) -> bool: ...
    def sniffers_in(self, vni: int) -> list[Vnic]: ...
    def any_with_groups(self, groups: tuple[str, ...], test: Callable[[Vnic], bool]) -> bool: ...
    def peers(self, vni: int) -> tuple[str, ...]: ...
    def checks_ips(self) -> bool: ...
    def vnic_with_mac(self, vni: int, mac: str) -> Vnic | None: ...


class State:
    """Vnics and security groups with the indexes the data plane needs."""

    def __init__(self) -> None:
        self._vnics: dict[str, Vnic] = {}
        self._sgs: dict[str, SecurityGroup] = {}
        self._by_sg: dict[str, set[str]] = {}
        self._by_vni: dict[int, set[str]] = {}
        self._peers: dict[int, tuple[str, ...]] = {}
        self._ip_checked: set[str] = set()
        self._by_mac: dict[tuple[int, str], str] = {}
        self._by_groups: dict[tuple[str, ...], set[str]] = {}
        """Security groups (in a vnic's order) -> the vnics with exactly those."""
        self._sniffers: dict[int, set[str]] = {}
        """VNI -> its vnics that copy their frames to another (sniff_target_nic_id)."""

    def vnic(self, vnic_id: str) -> Vnic | None:
        return self._vnics.get(vnic_id)

    def sg(self, sg_id: str) -> SecurityGroup | None:
        return self._sgs.get(sg_id)

    def vnics(self) -> Iterator[Vnic]:
        """In id order, as listings want them."""
        return (self._vnics[key] for key in sorted(self._vnics))

    def sgs(self) -> Iterator[SecurityGroup]:
        return (self._sgs[key] for key in sorted(self._sgs))

    def vnic_count(self) -> int:
        return len(self._vnics)

    def vnics_using(self, sg_id: str) -> list[Vnic]:
        return [self._vnics[v] for v in sorted(self._by_sg.get(sg_id, ()))]

    def vnics_in(self, vni: int) -> list[Vnic]:
        return [self._vnics[v] for v in sorted(self._by_vni.get(vni, ()))]

    def count_in(self, vni: int) -> int:
        """How many vnics ``vni`` has (without listing them: up to 10,000)."""
        return len(self._by_vni.get(vni, ()))

    def any_in(self, vni: int, test: Callable[[Vnic], bool]) -> bool:
        """Whether a vnic of ``vni`` passes ``test``: in no order, stopping at
        the first (a request asks it of VNIs of up to 10,000 vnics)."""
        return any(test(self._vnics[v]) for v in self._by_vni.get(vni, ()))

    def any_with_groups(self, groups: tuple[str, ...], test: Callable[[Vnic], bool]) -> bool:
        """Whether a vnic with exactly these security groups, in this order,
        passes ``test`` (as :meth:`any_in`: a group may have 10,000 users)."""
        return any(test(self._vnics[v]) for v in self._by_groups.get(groups, ()))

    def sniffers_in(self, vni: int) -> list[Vnic]:
        """The vnics of ``vni`` that copy their frames to another, in id order."""
        return [self._vnics[v] for v in sorted(self._sniffers.get(vni, ()))]

    def peers(self, vni: int) -> tuple[str, ...]:
        """Static VXLAN flooding peers (underlay addresses) of ``vni``."""
        return self._peers.get(vni, ())

    def checks_ips(self) -> bool:
        """Whether a vnic has IP anti-spoofing on (and filtering not bypassed)."""
        return bool(self._ip_checked)

    def vnic_with_mac(self, vni: int, mac: str) -> Vnic | None:
        """The vnic of ``vni`` with this MAC (any case), if any."""
        vnic_id = self._by_mac.get((vni, mac.lower()))
        return None if vnic_id is None else self._vnics[vnic_id]

    def all_peers(self) -> dict[int, tuple[str, ...]]:
        return dict(sorted(self._peers.items()))

    def set_peers(self, vni: int, peers: tuple[str, ...]) -> tuple[str, ...]:
        """Replace the peers of ``vni``; returns the previous ones."""
        old = self._peers.pop(vni, ())
        if peers:
            self._peers[vni] = peers
        return old

    def put_vnic(self, vnic: Vnic) -> Vnic | None:
        """Insert or replace; returns the replaced vnic."""
        old = self.remove_vnic(vnic.id)
        self._vnics[vnic.id] = vnic
        for sg_id in vnic.security_groups:
            self._by_sg.setdefault(sg_id, set()).add(vnic.id)
        self._by_vni.setdefault(vnic.vni, set()).add(vnic.id)
        self._by_groups.setdefault(vnic.security_groups, set()).add(vnic.id)
        if vnic.ip_anti_spoof and not vnic.bypass_filtering:
            self._ip_checked.add(vnic.id)
        self._by_mac[(vnic.vni, vnic.mac.lower())] = vnic.id
        if vnic.sniff_target_nic_id:
            self._sniffers.setdefault(vnic.vni, set()).add(vnic.id)
        return old

    def remove_vnic(self, vnic_id: str) -> Vnic | None:
        old = self._vnics.pop(vnic_id, None)
        if old is not None:
            for sg_id in old.security_groups:
                _discard(self._by_sg, sg_id, old.id)
            _discard(self._by_vni, old.vni, old.id)
            _discard(self._by_groups, old.security_groups, old.id)
            _discard(self._sniffers, old.vni, old.id)
            self._ip_checked.discard(old.id)
            if self._by_mac.get(mac := (old.vni, old.mac.lower())) == old.id:
                del self._by_mac[mac]
        return old

    def put_sg(self, sg: SecurityGroup) -> SecurityGroup | None:
        old = self._sgs.get(sg.id)
        self._sgs[sg.id] = sg
        return old

    def remove_sg(self, sg_id: str) -> SecurityGroup | None:
        return self._sgs.pop(sg_id, None)


def _discard(index: dict[K, set[str]], key: K, vnic_id: str) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(vnic_id)
        if not members:
            del index[key]
