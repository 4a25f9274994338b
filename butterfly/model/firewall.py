"""Security groups and vnics translated into an abstract, kernel-neutral filter.

Owns the *meaning* of filtering, as the original Butterfly defines it:

- traffic into a vnic is dropped unless a rule of one of its security groups
  allows it (INBOUND rules: the peer is the sender);
- when the vnic's groups hold at least one OUTBOUND rule, traffic leaving
  it is restricted to those rules (the peer is the destination); with none,
  egress is open;
- replies, related ICMP errors, ARP and IPv6 neighbour discovery are the
  data plane's business (stateful filtering), not rules;
- anti-spoofing: a vnic sends only from its own MAC; with ``ip_anti_spoof``
  only from its own addresses (the link-local address derived from its MAC
  counts as its own, DHCP clients may send from 0.0.0.0);
- ``bypass_filtering`` removes all of it for that vnic.

A rule whose peer is a security group matches that group's *members*, looked
up by group id at packet time: :class:`Match` names the group instead of
copying its members, so a member change touches one set, not every vnic.

Pure model code: no I/O, no kernel names; imports only the model.
"""

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from butterfly.model.addresses import ip_version
from butterfly.model.security_group import ALL_PROTOCOLS, Direction, Rule, SecurityGroup
from butterfly.model.state import StateView
from butterfly.model.vnic import Vnic

__all__ = [
    "AntiSpoof",
    "Match",
    "SgFilter",
    "VnicFilter",
    "has_outbound",
    "link_local",
    "referenced_groups",
    "rule_matches",
    "sg_filter",
    "vnic_filter",
]


@dataclass(frozen=True, slots=True)
class Match:
    """Traffic of one address family that one rule allows.

    ``network`` and ``members_of`` describe the peer (the sender for inbound,
    the destination for outbound); both None means any address.
    """

    family: int
    """4 or 6."""
    protocol: int | None = None
    """IANA protocol number; None for every protocol."""
    ports: tuple[int, int] | None = None
    """Destination port range (TCP and UDP only), bounds included."""
    network: str | None = None
    """A prefix with its host bits cleared, e.g. ``10.0.0.0/8``."""
    members_of: str | None = None
    """The id of the security group whose members are the peers."""


@dataclass(frozen=True, slots=True)
class SgFilter:
    """What one security group allows, whichever vnics use it."""

    sg_id: str
    inbound: tuple[Match, ...] = ()
    outbound: tuple[Match, ...] = ()


@dataclass(frozen=True, slots=True)
class AntiSpoof:
    """What a vnic may claim to be when it sends."""

    mac: str
    check_ip: bool
    """True with ip_anti_spoof: only the addresses below may be sources."""
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    """The vnic's IPv6 addresses, then its MAC-derived link-local address."""


@dataclass(frozen=True, slots=True)
class VnicFilter:
    """The filtering of one vnic (None instead of this when it bypasses filtering)."""

    vnic_id: str
    security_groups: tuple[str, ...]
    """In the vnic's order; their rules add up."""
    restrict_outbound: bool
    """True when one of the groups holds an OUTBOUND rule."""
    anti_spoof: AntiSpoof


def rule_matches(rule: Rule) -> tuple[Match, ...]:
    """The matches of one rule: one per family a source group's members may have."""
    protocol = None if rule.protocol == ALL_PROTOCOLS else rule.protocol
    ports = None
    if rule.has_ports and rule.port_start is not None and rule.port_end is not None:
        ports = (rule.port_start, rule.port_end)
    if rule.security_group is not None:
        return tuple(
            Match(family=family, protocol=protocol, ports=ports, members_of=rule.security_group)
            for family in (4, 6)
        )
    if rule.cidr is None:
        return ()
    network = rule.cidr.network
    return (
        Match(
            family=network.version,
            protocol=protocol,
            ports=ports,
            network=None if network.prefixlen == 0 else str(network),
        ),
    )


def sg_filter(sg_id: str, sg: SecurityGroup | None) -> SgFilter:
    """The matches of ``sg`` by direction, in rule order, without duplicates.

    A group that does not exist (a vnic or a rule may name one before it is
    created) allows nothing.
    """
    if sg is None:
        return SgFilter(sg_id)
    inbound: dict[Match, None] = {}
    outbound: dict[Match, None] = {}
    for rule in sg.rules:
        target = inbound if rule.direction == Direction.INBOUND else outbound
        target.update(dict.fromkeys(rule_matches(rule)))
    return SgFilter(sg_id, tuple(inbound), tuple(outbound))


def has_outbound(sg: SecurityGroup | None) -> bool:
    return sg is not None and any(rule.direction == Direction.OUTBOUND for rule in sg.rules)


def referenced_groups(sgs: Iterable[SecurityGroup]) -> set[str]:
    """The ids of the groups whose members the rules of ``sgs`` refer to."""
    return {
        rule.security_group for sg in sgs for rule in sg.rules if rule.security_group is not None
    }


def link_local(mac: str) -> str:
    """The EUI-64 link-local address a guest derives from ``mac`` (RFC 4291)."""
    octets = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:]
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui))


def vnic_filter(vnic: Vnic, state: StateView) -> VnicFilter | None:
    """The filtering of ``vnic`` in ``state``; None when it bypasses filtering."""
    if vnic.bypass_filtering:
        return None
    ipv4 = tuple(ip for ip in vnic.ips if ip_version(ip) == 4)
    ipv6 = tuple(
        dict.fromkeys([*(ip for ip in vnic.ips if ip_version(ip) == 6), link_local(vnic.mac)])
    )
    return VnicFilter(
        vnic_id=vnic.id,
        security_groups=vnic.security_groups,
        restrict_outbound=any(has_outbound(state.sg(sg_id)) for sg_id in vnic.security_groups),
        anti_spoof=AntiSpoof(
            mac=vnic.mac.lower(), check_ip=vnic.ip_anti_spoof, ipv4=ipv4, ipv6=ipv6
        ),
    )
