"""Mirroring a vnic's frames to another vnic of the host (``sniff_target_nic_id``).

A vnic S naming a target T gets a copy, on T's port, of every frame to and
from S, after anti-spoofing and before filtering: T (an IDS VM) also sees
what S's security groups drop. The copies are made by nftables ``dup`` in
a ``netdev butterfly`` table, on the ingress hook of the ports where S's
frames enter the host: S's own port (frames from S) and every other port of
S's bridge, its VXLAN device included (frames to S: its MAC, or a group
address). A frame is copied only if the bridge's anti-spoofing lets it
through, so each copy rule repeats the checks of the port it sits on (the
MAC the port is locked to, the frame types, the source addresses with IP
anti-spoofing), from the same model data as ``ruleset``. Each rule counts
what it copies, under S's id as its comment: :meth:`Sniffer.copied`.

The table is rebuilt in one transaction whenever what it should hold
changes (a sniffing vnic, its target, or a vnic of its VNI changes): a
deleted S or T leaves no rule behind, and a T that comes back is mirrored
to again. A T in another VNI than S is mirrored to only when the daemon
allows it (``sniff-cross-vni``). Nothing here exists while no vnic sniffs.
"""

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from butterfly.dataplane.guard import ALL_OK
from butterfly.dataplane.naming import TABLE, tap_name, vxlan_name
from butterfly.dataplane.nft import Json, NftablesApi
from butterfly.errors import BadNic, shown
from butterfly.model import StateView, Vnic
from butterfly.model.firewall import AntiSpoof, vnic_filter

__all__ = ["NETDEV", "SniffPlan", "SniffRule", "Sniffer", "remove_table", "sniff_rules"]

log = logging.getLogger(__name__)

NETDEV = "netdev"
PRIORITY = -500
"""Before anything else on a port's ingress."""

_GROUP_BIT = {"&": [{"payload": {"protocol": "ether", "field": "daddr"}}, "01:00:00:00:00:00"]}
_ND_TARGET = {"payload": {"base": "th", "offset": 64, "len": 128}}


@dataclass(frozen=True, slots=True)
class SniffRule:
    """One copy rule: on ``port``'s ingress, frames meeting ``matches`` go to ``target``."""

    port: str
    source: str
    """The sniffed vnic's id (the rule's comment, its counter's owner)."""
    target: str
    """The target vnic's port."""
    matches: tuple[Json, ...]


def _match(protocol: str, field: str, right: Any, op: str = "==") -> Json:
    return {
        "match": {
            "op": op,
            "left": {"payload": {"protocol": protocol, "field": field}},
            "right": right,
        }
    }


def _meta(key: str, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": {"meta": {"key": key}}, "right": right}}


def _set(values: Iterable[str]) -> Json:
    return {"set": sorted(values)}


def _hex128(address: str) -> str:
    return f"0x{int(ipaddress.IPv6Address(address)):032x}"


def passes_anti_spoofing(anti_spoof: AntiSpoof | None) -> list[tuple[Json, ...]]:
    """What a port's anti-spoofing lets through, as alternatives (one rule each):
    everything for a vnic that bypasses filtering (None)."""
    if anti_spoof is None:
        return [()]
    mac = _match("ether", "saddr", anti_spoof.mac)
    if not anti_spoof.check_ip:
        return [(mac, _match("ether", "type", _set(["ip", "ip6", "arp"])))]
    ipv6 = _set(anti_spoof.ipv6)
    alternatives: list[tuple[Json, ...]] = [
        (
            mac,
            _match("ip", "saddr", "0.0.0.0"),
            _match("udp", "sport", 68),
            _match("udp", "dport", 67),
        ),
        (mac, _match("ip6", "saddr", "::"), _meta("l4proto", "ipv6-icmp")),
        (mac, _match("ip6", "saddr", ipv6), _meta("l4proto", "ipv6-icmp", "!=")),
        (mac, _match("ip6", "saddr", ipv6), _match("icmpv6", "type", "nd-neighbor-advert", "!=")),
        (
            mac,
            _match("ip6", "saddr", ipv6),
            _match("icmpv6", "type", "nd-neighbor-advert"),
            {
                "match": {
                    "op": "==",
                    "left": _ND_TARGET,
                    "right": _set(_hex128(ip) for ip in anti_spoof.ipv6),
                }
            },
        ),
        (
            mac,
            _match("arp", "saddr ether", anti_spoof.mac),
            _match("arp", "saddr ip", _set(["0.0.0.0", *anti_spoof.ipv4])),
        ),
    ]
    if anti_spoof.ipv4:
        alternatives.append((mac, _match("ip", "saddr", _set(anti_spoof.ipv4))))
    return alternatives


def _anti_spoof(vnic: Vnic, state: StateView) -> AntiSpoof | None:
    filtering = vnic_filter(vnic, state)
    return None if filtering is None else filtering.anti_spoof


def sniff_rules(
    state: StateView, sources: Iterable[Vnic], *, cross_vni: bool
) -> tuple[SniffRule, ...]:
    """The copy rules ``sources`` (vnics with a sniff target) need in ``state``."""
    rules: list[SniffRule] = []
    for source in sorted(sources, key=lambda vnic: vnic.id):
        target = state.vnic(source.sniff_target_nic_id)
        if target is None or target.id == source.id:
            continue
        if target.vni != source.vni and not cross_vni:
            log.warning(
                "nic %r: sniff target %r is in vni %d, not %d: not mirrored (sniff-cross-vni off)",
                source.id, target.id, target.vni, source.vni,
            )  # fmt: skip
            continue
        copy_to = tap_name(target.id)
        for matches in passes_anti_spoofing(_anti_spoof(source, state)):
            rules.append(SniffRule(tap_name(source.id), source.id, copy_to, matches))
        to_source = (
            _match("ether", "daddr", source.mac.lower()),
            {"match": {"op": "==", "left": _GROUP_BIT, "right": "01:00:00:00:00:00"}},
        )
        senders = [(vxlan_name(source.vni), None)] + [
            (tap_name(vnic.id), _anti_spoof(vnic, state))
            for vnic in state.vnics_in(source.vni)
            if vnic.id != source.id
        ]
        for port, anti_spoof in senders:
            for matches in passes_anti_spoofing(anti_spoof):
                for destination in to_source:
                    rules.append(SniffRule(port, source.id, copy_to, (*matches, destination)))
    return tuple(rules)


_MARK: Json = {"meta": {"key": "mark"}}


def _guarded_dup(target: str) -> tuple[Json, ...]:
    """Copy to ``target`` carrying the bits its port guard wants (the copy is
    sent straight out of that port, past the tables that would set them: see
    :mod:`butterfly.dataplane.guard`), and clear them again on the original,
    which the tables have yet to prove."""
    return (
        {"mangle": {"key": _MARK, "value": {"|": [_MARK, ALL_OK]}}},
        {"dup": {"addr": target}},
        {"mangle": {"key": _MARK, "value": {"&": [_MARK, ~ALL_OK & 0xFFFFFFFF]}}},
    )


def _commands(rules: tuple[SniffRule, ...]) -> list[Json]:
    """Replace the whole table by ``rules`` (none: no table)."""
    table = {"family": NETDEV, "name": TABLE}
    commands: list[Json] = [{"add": {"table": table}}, {"delete": {"table": table}}]
    if not rules:
        return commands
    commands.append({"add": {"table": table}})
    for port in dict.fromkeys(rule.port for rule in rules):
        chain = {"family": NETDEV, "table": TABLE, "name": port, "type": "filter",
                 "hook": "ingress", "dev": port, "prio": PRIORITY, "policy": "accept"}  # fmt: skip
        commands.append({"add": {"chain": chain}})
    for rule in rules:
        expr = [
            *rule.matches,
            {"counter": {"packets": 0, "bytes": 0}},
            *_guarded_dup(rule.target),
        ]
        commands.append(
            {"add": {"rule": {"family": NETDEV, "table": TABLE, "chain": rule.port,
                              "comment": rule.source, "expr": expr}}}
        )  # fmt: skip
    return commands


@dataclass(frozen=True, slots=True)
class SniffPlan:
    """The sniffing vnics of a state and the rules they need."""

    sources: tuple[Vnic, ...]
    rules: tuple[SniffRule, ...]


class Sniffer:
    """The mirroring of one host: which vnics sniff, and the table that copies.

    The data plane tells it about every vnic it plugs, updates or unplugs
    (:meth:`affects`), so deciding that a request leaves mirroring alone costs
    a few set lookups, not a scan of the state.
    """

    def __init__(self, nft: NftablesApi, *, cross_vni: bool) -> None:
        self._nft = nft
        self._cross_vni = cross_vni
        self._applied = SniffPlan((), ())
        self._known = False
        """False until the kernel's table has been written once by this daemon."""

    def check(self, vnic: Vnic, state: StateView) -> None:
        """BadNic when ``vnic`` names a sniff target this daemon may not copy to."""
        target = state.vnic(vnic.sniff_target_nic_id) if vnic.sniff_target_nic_id else None
        if target is not None and target.vni != vnic.vni and not self._cross_vni:
            raise BadNic(
                f"nic {shown(vnic.id)}: sniff target {shown(target.id)} is in vni "
                f"{target.vni}, not {vnic.vni}; the daemon's sniff-cross-vni option is off"
            )

    def affects(self, *vnics: Vnic | None) -> bool:
        """Whether a change of ``vnics`` can change what is mirrored."""
        sources = self._applied.sources
        ids = {source.id for source in sources}
        targets = {source.sniff_target_nic_id for source in sources}
        vnis = {source.vni for source in sources}
        return any(
            vnic.sniff_target_nic_id or {vnic.id} & (ids | targets) or vnic.vni in vnis
            for vnic in vnics
            if vnic is not None
        )

    def plan(self, state: StateView, changed: Iterable[Vnic] = ()) -> SniffPlan:
        """What ``state`` needs, knowing that only ``changed`` vnics changed."""
        sources = {source.id: source for source in self._applied.sources}
        for vnic in changed:
            current = state.vnic(vnic.id)
            sources.pop(vnic.id, None)
            if current is not None and current.sniff_target_nic_id:
                sources[vnic.id] = current
        return self._plan(state, sources.values())

    def rescan(self, state: StateView) -> SniffPlan:
        """Every sniffing vnic of ``state`` (at reconcile: the table is made again)."""
        self._known = False
        return self._plan(state, (vnic for vnic in state.vnics() if vnic.sniff_target_nic_id))

    def _plan(self, state: StateView, sources: Iterable[Vnic]) -> SniffPlan:
        ordered = tuple(sorted(sources, key=lambda vnic: vnic.id))
        return SniffPlan(ordered, sniff_rules(state, ordered, cross_vni=self._cross_vni))

    @property
    def applied(self) -> SniffPlan:
        return self._applied

    def apply(self, plan: SniffPlan) -> None:
        """Make the table hold ``plan``'s rules, in one transaction."""
        if not self._known or plan.rules != self._applied.rules:
            self._nft.apply(_commands(plan.rules))
            self._known = True
        self._applied = plan

    def copied(self, vnic_id: str) -> tuple[int, int]:
        """Frames and bytes copied for ``vnic_id`` since its rules were made."""
        if not any(rule.source == vnic_id for rule in self._applied.rules):
            return 0, 0
        objects = self._nft.list({"table": {"family": NETDEV, "name": TABLE}}) or []
        frames = octets = 0
        for obj in objects:
            rule = obj.get("rule")
            if rule is None or rule.get("comment") != vnic_id:
                continue
            for statement in rule.get("expr", []):
                if "counter" in statement:
                    frames += statement["counter"]["packets"]
                    octets += statement["counter"]["bytes"]
        return frames, octets


def remove_table(nft: NftablesApi) -> None:
    """--cleanup: the mirroring table goes with the rest."""
    nft.apply(_commands(()))
