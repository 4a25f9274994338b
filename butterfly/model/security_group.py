"""Security groups, their rules and their members.

A security group is a list of allow rules plus a list of member addresses.
A rule whose source is another security group matches that group's members,
whatever they are at the time: rules refer to groups by id, never copy their
members. Like :mod:`butterfly.model.vnic`, everything is built through
``make_*`` functions that validate and normalise.
"""

import enum
import hashlib
from dataclasses import dataclass, replace

from butterfly.errors import BadIp, BadRequest, BadRule, shown
from butterfly.model.addresses import Cidr, canonical_ip, ip_version
from butterfly.model.ids import check_id

__all__ = [
    "ALL_PROTOCOLS",
    "TCP",
    "UDP",
    "Direction",
    "Rule",
    "SecurityGroup",
    "check_sg_id",
    "make_member",
    "make_rule",
    "make_security_group",
]

ALL_PROTOCOLS = -1
TCP = 6
UDP = 17
MAX_PORT = 65535


class Direction(enum.IntEnum):
    """The wire protocol's values."""

    INBOUND = 0
    OUTBOUND = 1


@dataclass(frozen=True, slots=True)
class Rule:
    """Allow traffic of ``protocol`` (and port range) from a source.

    For INBOUND rules the source is the sender; for OUTBOUND rules it is the
    destination the vnic talks to. Exactly one of ``cidr`` and
    ``security_group`` is set; ports are set for TCP and UDP only.
    """

    direction: Direction
    protocol: int
    port_start: int | None = None
    port_end: int | None = None
    cidr: Cidr | None = None
    security_group: str | None = None

    @property
    def has_ports(self) -> bool:
        return self.protocol in (TCP, UDP)

    @property
    def hash(self) -> str:
        """A short stable digest that names the rule for ``sg rule del``."""
        text = "|".join(
            str(part)
            for part in (
                int(self.direction),
                self.protocol,
                self.port_start,
                self.port_end,
                self.cidr,
                self.security_group,
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SecurityGroup:
    id: str
    members: tuple[str, ...] = ()
    """Canonical addresses, in the order they were added."""
    rules: tuple[Rule, ...] = ()
    """In the order they were added, without duplicates."""

    def with_rule(self, rule: Rule) -> "SecurityGroup":
        return self if rule in self.rules else replace(self, rules=(*self.rules, rule))

    def without_rule(self, rule: Rule) -> "SecurityGroup":
        return replace(self, rules=tuple(r for r in self.rules if r != rule))

    def with_member(self, member: str) -> "SecurityGroup":
        if member in self.members:
            return self
        return replace(self, members=(*self.members, member))

    def without_member(self, member: str) -> "SecurityGroup":
        return replace(self, members=tuple(m for m in self.members if m != member))


def check_sg_id(sg_id: str) -> None:
    problem = check_id(sg_id)
    if problem:
        raise BadRequest(f"Bad Security Group format: security group id {shown(sg_id)} {problem}")


def make_rule(
    sg_id: str,
    *,
    direction: int,
    protocol: int,
    port_start: int | None = None,
    port_end: int | None = None,
    cidr: tuple[str, int] | None = None,
    security_group: str | None = None,
) -> Rule:
    """Validate one rule of ``sg_id`` and return it in canonical form."""
    what = f"security group {shown(sg_id)}"
    if direction not in (Direction.INBOUND, Direction.OUTBOUND):
        raise BadRule(f"{what}: direction {direction} is not INBOUND (0) or OUTBOUND (1)")
    if not ALL_PROTOCOLS <= protocol <= 255:
        raise BadRule(f"{what}: protocol {protocol} is not -1 (all) or an IANA number 0-255")
    if protocol in (TCP, UDP):
        name = "tcp" if protocol == TCP else "udp"
        if port_start is None or port_end is None:
            raise BadRule(f"{what}: a {name} rule needs port_start and port_end")
        for label, port in (("port_start", port_start), ("port_end", port_end)):
            if not 0 <= port <= MAX_PORT:
                raise BadRule(f"{what}: {label} {port} is out of range 0-{MAX_PORT}")
        if port_start > port_end:
            raise BadRule(f"{what}: port_start {port_start} is above port_end {port_end}")
    else:
        port_start = port_end = None
    if (cidr is None) == (security_group is None):
        raise BadRule(f"{what}: a rule needs exactly one of cidr and security_group")
    canonical_cidr = None
    if cidr is not None:
        address, mask_size = cidr
        canonical = canonical_ip(address)
        if canonical is None:
            raise BadRule(f"{what}: cidr address {shown(address)} is not an IPv4 or IPv6 address")
        limit = 128 if ip_version(canonical) == 6 else 32
        if not 0 <= mask_size <= limit:
            raise BadRule(f"{what}: cidr mask size {mask_size} does not fit 0-{limit}")
        canonical_cidr = Cidr(canonical, mask_size)
    if security_group is not None:
        problem = check_id(security_group)
        if problem:
            raise BadRule(f"{what}: source security group {shown(security_group)} {problem}")
    return Rule(
        direction=Direction(direction),
        protocol=protocol,
        port_start=port_start,
        port_end=port_end,
        cidr=canonical_cidr,
        security_group=security_group,
    )


def make_member(sg_id: str, member: str) -> str:
    """The canonical form of a member address of ``sg_id``."""
    canonical = canonical_ip(member)
    if canonical is None:
        raise BadIp(
            f"security group {shown(sg_id)}: member {shown(member)} is not an IPv4 or IPv6 address"
        )
    return canonical


def make_security_group(sg_id: str, *, members: list[str], rules: list[Rule]) -> SecurityGroup:
    """A whole security group (sg_add): members canonical, both lists de-duplicated."""
    check_sg_id(sg_id)
    canonical = [make_member(sg_id, member) for member in members]
    return SecurityGroup(
        id=sg_id,
        members=tuple(dict.fromkeys(canonical)),
        rules=tuple(dict.fromkeys(rules)),
    )
