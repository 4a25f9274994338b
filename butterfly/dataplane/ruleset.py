"""butterfly's nftables ruleset: the objects it wants, and the commands that get there.

Owns the layout of butterfly's two tables, the rendering of the abstract
filters of :mod:`butterfly.model.firewall` into nftables JSON, the reading
back of a listing, and the diff between two sets of objects as one ordered
transaction. Pure: no I/O (the kernel data plane sends what this writes).

The layout. Bridged IP reaches the inet family through br_netfilter with the
*bridge* as iif/oif, so the inet family names a vnic by its bridge and MAC:
the receiver of a unicast frame by the destination MAC, the sender by the
source MAC. Both are trustworthy for filtered vnics, whose ports the data
plane sets up so (in the kernel bridge itself, at no cost per rule): the port
is locked (it forwards only frames from the MACs pinned to it, its own), it
learns nothing and gets no flooded unicast, so a unicast frame reaches it
only when addressed to its MAC. A broadcast or multicast frame is copied to
every port: the bridge's forward hook, which still sees the port, puts the
receiving vnic's id in that copy's mark, and the inet family dispatches on
it. The bridge family does what the inet family cannot, in one hook, with
the fewest rules for the common frame (each costs about a point of
throughput). Per-vnic data lives in maps and sets, not chains, so the number
of chains does not grow with the vnics (nft reads every chain on each
change), and per-vnic maps hold integers, not verdicts: adding a jump or goto
element makes the kernel validate every verdict map of the tables at commit,
a walk of all their elements (2 ms of a request at 10,000 vnics). A vnic's
elements name its profile's (or caps' class's) id; the few ids map to their
chains in ``in_profiles``, ``out_profiles`` and ``limit_classes`` (the id
passes through the mark's low 16 bits: ``dispatch`` below). A group frame
carries its receiver's profile id there from the bridge table::

    table bridge butterfly
      forward  forward -200      group frames: mark := @port_ids[oif] (profile id,
                                 0 for VXLAN and bypass ports; the sender
                                 mark kept); IP/ARP:
                                 a port in @unchecked: goto ip_unchecked, any
                                 other: goto spoof_ip (only while a vnic has IP
                                 anti-spoofing on; a port missing from the set
                                 is checked, and drops), else accept; anything
                                 else from or to a filtered vnic: drop
      spoof_ip                   by frame type: ARP sender (MAC and IP) and IP
                                 source in @port_macs, @port_ip4, IPv6 source in
                                 @port_ip6, neighbour advertisement target in
                                 @port_nd; from ::, only duplicate address
                                 detection of an address in @port_nd, router
                                 solicitations and MLD reports
      to_host  input -200        from a butterfly port: drop (nothing from a
                                 VNI reaches the host's stack; the bridges also
                                 forward LLDP's group, which skips this hook)
    table inet butterfly
      host_in  input -200        in through a butterfly link: drop (a second
                                 lock); VXLAN not from the underlay: drop
      zone     prerouting raw    own VXLAN packets: notrack, accept; a bridge in
                                 @quiet (no filtered vnic here): notrack, accept
                                 (a later "ct zone set" would track them again);
                                 ct zone := @zones[iif]
      raw_out  output raw        own VXLAN packets: notrack
      filter   forward 0         established, related: accept (first: the common
                                 case); not a butterfly bridge, or quiet: accept;
                                 dispatch @in_mac[iif . ether daddr] to
                                 @in_profiles; group frames: goto
                                 @in_profiles[mark] (receiver's in_P); goto
                                 out_check
      out_check                  dispatch @limits[iif . ether saddr] to
                                 @limit_classes (a jump to the sender's lim_C_R,
                                 if it has caps); dispatch @out_mac[iif . ether
                                 saddr] to @out_profiles (sender's out_P);
                                 accept (no proof: a sender with no out_P has
                                 its port's)
      lim_C_R                    new connection (its first packet) over R per
                                 second (meter dyn_rate_C_R) or over C tracked (dyn_conns_C_R,
                                 ct count): goto capped. Only new flows a
                                 receiver admitted get here, so only what would
                                 enter the table is counted
      capped                     count in dyn_drops (by sender); drop
      in_P                       NS/NA accept; jump si_S for each group S; drop
      out_P                      router advertisements and redirects, DHCP and
                                 DHCPv6 server messages: drop (what no tenant
                                 starts: a router needs a bypassing vnic); with
                                 OUTBOUND rules: ND/MLD accept; jump so_S for
                                 each group S; drop. Without: accept
      si_S / so_S                S's INBOUND rules ("goto out_check") / OUTBOUND
                                 rules ("accept")
      m4_S, m6_S                 S's members: every rule naming S uses these sets

Every accept also sets bits of the frame's mark (B: the bridge table's
checks passed, I: the receiver's groups, O: the sender's; established
flows get I and O): the port guard (:mod:`butterfly.dataplane.guard`)
drops a frame without the bits its port needs, so a table, chain, set or
element that another program removes makes frames drop, not pass. The
IP/ARP accept of ``forward`` sets B (ARP all three), its last rule (other
frame types between unfiltered ports) B; ``filter`` sets I and O for
established and quiet traffic, ``si_S`` sets I, ``out_P`` and ``so_S`` set
O; ``in_profiles`` is looked up with the mark's low 16 bits. No rule
proves O for a sender without filtering (a bypass vnic, a VXLAN device):
the port guard's program on that port's ingress marks its frames (U), so
a filtered vnic whose ``out_mac`` or ``filtered`` element is lost proves
neither and its frames drop.

Every drop rule also counts into a named counter of its table, one per
cause (:data:`DROP_COUNTERS`): the metrics read them, and only dropped
frames pay for them.

P is a *profile*: the list of security groups a vnic uses, shared by every
vnic using the same list; C_R a *limit class*, shared likewise. A member
change is one set element; a rule change rewrites one chain; a vnic is
elements only.

Every object is addressed by a :class:`Key`; a rule carries a digest of its
statements as its comment, so a chain read back from the kernel compares
equal to the wanted one exactly when it holds the same rules. Two objects
need nft's ``typeof`` declarations, which its JSON input lacks, and one set
the packets fill must be declared dynamic: they are made by
:data:`BOOTSTRAP`, in nft's own syntax, before any JSON.
"""

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from butterfly.dataplane.guard import ALL_OK, BRIDGE_OK, INBOUND_OK, OUTBOUND_OK, SENDER_OPEN
from butterfly.dataplane.naming import (
    BRIDGE_WILDCARD,
    DYNAMIC_PREFIX,
    PORT_WILDCARDS,
    TABLE,
    limit_names,
    member_set,
    profile_chains,
    sg_in_chain,
    sg_out_chain,
)
from butterfly.dataplane.nft import Json
from butterfly.model.addresses import ip_version
from butterfly.model.firewall import Match, SgFilter, VnicFilter

__all__ = [
    "BOOTSTRAP",
    "BRIDGE",
    "DROPS",
    "DROP_COUNTERS",
    "INET",
    "MAX_ID",
    "NO_LIMITS",
    "PRESENT",
    "Base",
    "Chain",
    "ConnLimits",
    "Decl",
    "Key",
    "Layout",
    "Listing",
    "Obj",
    "Structural",
    "Verdict",
    "diff",
    "parse_listing",
    "profile_elements",
    "rule",
    "tables",
]

BRIDGE = "bridge"
INET = "inet"
MAX_ID = 0xFFFF
"""Profile ids and conntrack zones are 16-bit."""
METER_SIZE = 4 * (MAX_ID + 1)
"""Elements of a set the packets fill (one per sender vnic, with room for churn)."""

BOOTSTRAP = f"""add table bridge {TABLE}
add set bridge {TABLE} port_nd {{ typeof iifname . @th,64,128; }}
add table inet {TABLE}
add map inet {TABLE} zones {{ typeof iifname : ct zone; }}
add set inet {TABLE} {DYNAMIC_PREFIX}drops {{
    type ifname . ether_addr; flags dynamic; counter; size {METER_SIZE};
}}
"""
"""nft commands (its own syntax) making the objects JSON cannot declare."""

_ND_TARGET: Json = {"payload": {"base": "th", "offset": 64, "len": 128}}
_ND_TYPES = [
    "nd-router-solicit",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "mld-listener-query",
    "mld-listener-report",
    "mld-listener-done",
    "mld2-listener-report",
]
"""What a vnic may send ahead of its OUTBOUND rules (a router's messages are not)."""
_NEIGHBOUR_TYPES = ["nd-neighbor-solicit", "nd-neighbor-advert"]
"""What a vnic receives ahead of its groups (anti-spoofing checked their sender)."""
_ROUTER_TYPES = ["nd-router-advert", "nd-redirect"]
_UNSPECIFIED_TYPES = ["nd-router-solicit", "mld-listener-report", "mld2-listener-report"]
"""What a host without an address yet sends from ``::`` besides duplicate address
detection (RFC 4861 6.3.7, RFC 3810 5.2.13)."""
_SERVER_PORTS = [["udp", 67, 68], ["udp", 547, 546]]
"""DHCP and DHCPv6 server to client: (protocol, source port, destination port)."""
_FRAME_TYPES = ["ip", "ip6", "arp"]


ElementKey = int | str | tuple[str, ...]


class Key(NamedTuple):
    """One object: kind is table, counter, chain, map, set or element."""

    kind: str
    family: str
    name: str = ""
    element: ElementKey | None = None
    """For elements: the key inside set or map ``name``."""


@dataclass(frozen=True, slots=True)
class Base:
    type: str
    hook: str
    prio: int
    policy: str = "accept"


@dataclass(frozen=True, slots=True)
class NftRule:
    digest: str
    statements: str = field(default="", compare=False)
    """The canonical JSON of the statements (empty when read back)."""


@dataclass(frozen=True, slots=True)
class Chain:
    rules: tuple[NftRule, ...] = ()
    base: Base | None = None


@dataclass(frozen=True, slots=True)
class Decl:
    """A table (no types), a set (key type) or a map (key type, value type)."""

    types: tuple[str, ...] = ()
    bootstrapped: bool = False
    """Made by :data:`BOOTSTRAP`, not by JSON commands."""
    options: tuple[tuple[str, int], ...] = field(default=(), compare=False)
    """More of the declaration (a meter's size and timeout); read back as they
    were made, since nothing changes them."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A verdict map's value: go to ``chain`` (or jump to it: come back after)."""

    chain: str
    jump: bool = False


class ConnLimits(NamedTuple):
    """What a vnic may start: tracked connections at once, new ones per second (0: no cap)."""

    connections: int
    per_second: int


NO_LIMITS = ConnLimits(0, 0)


PRESENT = True
"""The value of a set element (sets have keys only)."""

Obj = Chain | Decl | Verdict | int | bool


class Structural(Exception):
    """Objects differ in a way an incremental change cannot fix (a set's or
    map's type): the tables must be rebuilt."""


def rule(*statements: Json) -> NftRule:
    text = json.dumps(list(statements), sort_keys=True, separators=(",", ":"))
    return NftRule(hashlib.sha256(text.encode()).hexdigest()[:16], text)


# expressions


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _payload(protocol: str, name: str) -> Json:
    return {"payload": {"protocol": protocol, "field": name}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _concat(*parts: Json) -> Json:
    return {"concat": list(parts)}


def _set(values: Iterable[Any]) -> Json:
    return {"set": sorted(values)}


def _goto(chain: str) -> Json:
    return {"goto": {"target": chain}}


def _jump(chain: str) -> Json:
    return {"jump": {"target": chain}}


def _vmap(key: Json, name: str) -> Json:
    return {"vmap": {"key": key, "data": "@" + name}}


def _set_from_map(target: Json, key: Json, name: str) -> Json:
    return {"mangle": {"key": target, "value": {"map": {"key": key, "data": "@" + name}}}}


def _dispatch(key: Json, ids: str, verdicts: str, *bits: int) -> tuple[NftRule, ...]:
    """Go (or jump) to the chain of ``key``'s class: its id from map ``ids``
    (integers, one element per vnic), then the verdict from ``verdicts`` (one
    element per class), the id passing through the mark's low 16 bits. Setting
    the mark from a map replaces all of it, so there is one rule per value
    the guard's bits may have here (``bits``), each putting them back; a miss
    changes nothing. A frame with other guard bits is not dispatched (it lacks
    a bit its port needs anyway)."""
    mask = 0
    for value in bits:
        mask |= value
    return tuple(
        rule(
            _match({"&": [_meta("mark"), mask]}, value),
            _set_from_map(_meta("mark"), key, ids),
            _prove(value),
            _vmap({"&": [_meta("mark"), MAX_ID]}, verdicts),
        )
        for value in bits
    )


_ACCEPT: Json = {"accept": None}
_DROP: Json = {"drop": None}

DROP_COUNTERS = {
    "drop_sg_in": (INET, "security_group_in"),
    "drop_sg_out": (INET, "security_group_out"),
    "drop_spoof_ip": (BRIDGE, "ip_spoofing"),
    "drop_frame_type": (BRIDGE, "frame_type"),
}
"""Named counter -> (its table's family, the drop cause the metrics call it)."""


def _drop(counter: str) -> tuple[Json, Json]:
    """The statements that count a frame into ``counter`` and drop it."""
    return {"counter": counter}, _DROP


_IIF = _meta("iifname")
_IP_OR_ARP = _match(_payload("ether", "type"), _set(_FRAME_TYPES))
_IP = _match(_payload("ether", "type"), _set(["ip", "ip6"]))
_ARP = _match(_payload("ether", "type"), "arp")
_SENDER = _concat(_IIF, _payload("ether", "saddr"))
"""A filtered vnic, by its bridge and MAC (see the layout)."""
_SENDER_TYPES = ("ifname", "ether_addr")
DROPS = f"{DYNAMIC_PREFIX}drops"
_GROUP_FRAME = _match({"&": [_payload("ether", "daddr"), "01:00:00:00:00:00"]}, "01:00:00:00:00:00")
"""A broadcast or multicast frame (the group bit of its destination MAC)."""


_SENDER_MARKED = _match({"&": [_meta("mark"), SENDER_OPEN]}, SENDER_OPEN)
_SENDER_UNMARKED = _match({"&": [_meta("mark"), SENDER_OPEN]}, 0)


def _prove(bits: int) -> Json:
    """Set ``bits`` of the mark: the proof the port guard wants (see
    :mod:`butterfly.dataplane.guard`) that this part of the filter accepted."""
    return {"mangle": {"key": _meta("mark"), "value": {"|": [_meta("mark"), bits]}}}


_IP_OR_ARP_ACCEPT = (
    rule(_IP, _prove(BRIDGE_OK), _ACCEPT),
    rule(_ARP, _prove(ALL_OK), _ACCEPT),
)
"""IP frames proven by the bridge table; ARP (no group looks at it) by all."""
_UNCHECKED = "ip_unchecked"
"""The chain of IP and ARP from a port in the ``unchecked`` set (no IP anti-spoofing)."""


def _icmpv6_types(types: list[str], *statements: Json) -> NftRule:
    return rule(_match(_payload("icmpv6", "type"), _set(types)), *statements)


def _no_server_rules() -> tuple[NftRule, ...]:
    """What no vnic may start (a profile's outbound side): router advertisements,
    redirects, DHCP and DHCPv6 server messages. A router or DHCP server needs a
    vnic that bypasses filtering."""
    server = {"set": [{"concat": ports} for ports in _SERVER_PORTS]}
    return (
        _icmpv6_types(_ROUTER_TYPES, _DROP),
        rule(
            _match(
                _concat(_meta("l4proto"), _payload("th", "sport"), _payload("th", "dport")),
                server,
            ),
            _DROP,
        ),
    )


def _hex128(address: str) -> str:
    return f"0x{int(ipaddress.IPv6Address(address)):032x}"


def _not_in(left: Json, name: str) -> NftRule:
    return rule(_match(left, "@" + name, "!="), *_drop("drop_spoof_ip"))


def _spoof_chains() -> dict[str, Chain]:
    """IP anti-spoofing, the same for every port (its data is in sets), through
    one chain per frame type so a frame meets only its own checks. The source
    MAC needs no rule: the port is locked to it. Reached by a goto from the
    base chain, each ends with its own accept, which sets the guard's bits."""
    return {
        "spoof_ip": Chain(
            (
                rule(
                    {
                        "vmap": {
                            "key": _payload("ether", "type"),
                            "data": {
                                "set": [
                                    ["ip", _goto("spoof_ip4")],
                                    ["ip6", _goto("spoof_ip6")],
                                    ["arp", _goto("spoof_arp")],
                                ]
                            },
                        }
                    }
                ),
            )
        ),
        "spoof_ip4": Chain(
            (
                rule(
                    _match(_payload("ip", "saddr"), "0.0.0.0"),
                    _match(_payload("udp", "sport"), 68),
                    _match(_payload("udp", "dport"), 67),
                    _prove(BRIDGE_OK),
                    _ACCEPT,
                ),
                _not_in(_concat(_IIF, _payload("ip", "saddr")), "port_ip4"),
                rule(_prove(BRIDGE_OK), _ACCEPT),
            )
        ),
        "spoof_ip6": Chain(
            (
                rule(
                    _match(_payload("icmpv6", "type"), "nd-neighbor-advert"),
                    _match(_concat(_IIF, _ND_TARGET), "@port_nd", "!="),
                    *_drop("drop_spoof_ip"),
                ),
                rule(
                    _match(_payload("ip6", "saddr"), "::"),
                    _match(_payload("icmpv6", "type"), "nd-neighbor-solicit"),
                    _match(_concat(_IIF, _ND_TARGET), "@port_nd"),
                    _prove(BRIDGE_OK),
                    _ACCEPT,
                ),
                rule(
                    _match(_payload("ip6", "saddr"), "::"),
                    _match(_payload("icmpv6", "type"), _set(_UNSPECIFIED_TYPES)),
                    _prove(BRIDGE_OK),
                    _ACCEPT,
                ),
                _not_in(_concat(_IIF, _payload("ip6", "saddr")), "port_ip6"),
                rule(_prove(BRIDGE_OK), _ACCEPT),
            )
        ),
        "spoof_arp": Chain(
            (
                _not_in(_concat(_IIF, _payload("arp", "saddr ether")), "port_macs"),
                rule(_match(_payload("arp", "saddr ip"), "0.0.0.0"), _prove(ALL_OK), _ACCEPT),
                _not_in(_concat(_IIF, _payload("arp", "saddr ip")), "port_ip4"),
                rule(_prove(ALL_OK), _ACCEPT),
            )
        ),
    }


@dataclass(frozen=True, slots=True)
class Layout:
    """The wanted objects, by group, for one host's underlay and VXLAN port."""

    underlay_ifname: str
    underlay_ip: str
    vxlan_port: int

    def infrastructure(self, check_ips: bool = False) -> dict[Key, Obj]:
        """Tables, base chains, maps, shared sets and chains: always there.

        ``check_ips``: a vnic of this host has IP anti-spoofing on, so IP and
        ARP frames are looked up in ``port_in`` (a rule the others never pay).
        """
        ip = "ip6" if ip_version(self.underlay_ip) == 6 else "ip"
        bridge_decls = {
            "port_ids": ("ifname", "mark"),
            "unchecked": ("ifname",),
            "filtered": ("ifname",),
            "port_macs": ("ifname", "ether_addr"),
            "port_ip4": ("ifname", "ipv4_addr"),
            "port_ip6": ("ifname", "ipv6_addr"),
        }
        inet_decls = {
            "quiet": ("ifname",),
            "in_mac": ("ifname", "ether_addr", "mark"),
            "out_mac": ("ifname", "ether_addr", "mark"),
            "limits": ("ifname", "ether_addr", "mark"),
            "in_profiles": ("mark", "verdict"),
            "out_profiles": ("mark", "verdict"),
            "limit_classes": ("mark", "verdict"),
        }
        objects: dict[Key, Obj] = {
            Key("table", BRIDGE): Decl(bootstrapped=True),
            Key("table", INET): Decl(bootstrapped=True),
            Key("set", BRIDGE, "port_nd"): Decl(("ifname", "integer"), bootstrapped=True),
            Key("map", INET, "zones"): Decl(("ifname", "integer"), bootstrapped=True),
            Key("set", INET, DROPS): Decl(("ifname", "ether_addr"), bootstrapped=True),
        }
        for counter, (family, _) in DROP_COUNTERS.items():
            objects[Key("counter", family, counter)] = Decl()
        for family, decls in ((BRIDGE, bridge_decls), (INET, inet_decls)):
            for name, types in decls.items():
                kind = "map" if len(types) > 1 and types[-1] in ("mark", "verdict") else "set"
                objects[Key(kind, family, name)] = Decl(types)
        chains = {
            (BRIDGE, "forward"): Chain(
                (
                    # The receiver's id replaces the mark: keep the sender mark.
                    rule(
                        _GROUP_FRAME,
                        _SENDER_MARKED,
                        _set_from_map(_meta("mark"), _meta("oifname"), "port_ids"),
                        _prove(SENDER_OPEN),
                    ),
                    rule(
                        _GROUP_FRAME,
                        _SENDER_UNMARKED,
                        _set_from_map(_meta("mark"), _meta("oifname"), "port_ids"),
                    ),
                    *(
                        # A port missing from unchecked (a flushed set) is
                        # checked: its frames drop rather than skip anti-spoofing.
                        (
                            rule(_IP_OR_ARP, _match(_IIF, "@unchecked"), _goto(_UNCHECKED)),
                            rule(_IP_OR_ARP, _goto("spoof_ip")),
                        )
                        if check_ips
                        else _IP_OR_ARP_ACCEPT
                    ),
                    rule(_match(_IIF, "@filtered"), *_drop("drop_frame_type")),
                    rule(_match(_meta("oifname"), "@filtered"), *_drop("drop_frame_type")),
                    rule(_prove(BRIDGE_OK), _ACCEPT),
                ),
                Base("filter", "forward", -200),
            ),
            (BRIDGE, "to_host"): Chain(
                (rule(_match(_IIF, {"set": list(PORT_WILDCARDS)}), _DROP),),
                Base("filter", "input", -200),
            ),
            (INET, "host_in"): Chain(
                (
                    rule(_match(_IIF, {"set": [BRIDGE_WILDCARD, *PORT_WILDCARDS]}), _DROP),
                    rule(
                        _match(_IIF, self.underlay_ifname, "!="),
                        _match(_payload("udp", "dport"), self.vxlan_port),
                        _DROP,
                    ),
                ),
                Base("filter", "input", -200),
            ),
            (INET, "zone"): Chain(
                (
                    rule(
                        _match(_IIF, self.underlay_ifname),
                        _match(_payload("udp", "dport"), self.vxlan_port),
                        {"notrack": None},
                        _ACCEPT,
                    ),
                    rule(_match(_IIF, "@quiet"), {"notrack": None}, _ACCEPT),
                    rule(_set_from_map({"ct": {"key": "zone"}}, _IIF, "zones")),
                ),
                Base("filter", "prerouting", -300),
            ),
            (INET, "raw_out"): Chain(
                (
                    rule(
                        _match(_payload(ip, "saddr"), self.underlay_ip),
                        _match(_payload("udp", "dport"), self.vxlan_port),
                        {"notrack": None},
                    ),
                ),
                Base("filter", "output", -300),
            ),
            (INET, "filter"): Chain(
                (
                    rule(
                        _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
                        _prove(INBOUND_OK | OUTBOUND_OK),
                        _ACCEPT,
                    ),
                    rule(_match(_IIF, BRIDGE_WILDCARD, "!="), _ACCEPT),
                    rule(_match(_IIF, "@quiet"), _prove(INBOUND_OK | OUTBOUND_OK), _ACCEPT),
                    # The bridge table proved B; a sender without filtering has U.
                    *_dispatch(
                        _concat(_IIF, _payload("ether", "daddr")),
                        "in_mac",
                        "in_profiles",
                        BRIDGE_OK | SENDER_OPEN,
                        BRIDGE_OK,
                    ),
                    rule(_GROUP_FRAME, _vmap({"&": [_meta("mark"), MAX_ID]}, "in_profiles")),
                    rule(_goto("out_check")),
                ),
                Base("filter", "forward", 0),
            ),
            (INET, "capped"): Chain(
                (
                    # Its own rule: a full set must not spare the drop.
                    rule({"set": {"op": "update", "elem": _SENDER, "set": "@" + DROPS}}),
                    rule(_DROP),
                )
            ),
            (INET, "out_check"): Chain(
                (
                    # A filtered sender (no U), its receiver's groups passed or
                    # not needed (I or not).
                    *_dispatch(
                        _SENDER, "limits", "limit_classes", BRIDGE_OK | INBOUND_OK, BRIDGE_OK
                    ),
                    *_dispatch(
                        _SENDER, "out_mac", "out_profiles", BRIDGE_OK | INBOUND_OK, BRIDGE_OK
                    ),
                    # No proof: a sender without filtering has its port's own.
                    rule(_ACCEPT),
                )
            ),
        }
        chains.update({(BRIDGE, name): chain for name, chain in _spoof_chains().items()})
        chains[(BRIDGE, _UNCHECKED)] = Chain(
            (_IP_OR_ARP_ACCEPT[0], rule(_prove(ALL_OK), _ACCEPT))  # IP or ARP only here
        )
        for (family, name), chain in chains.items():
            objects[Key("chain", family, name)] = chain
        return objects

    def vni(self, bridge: str, vxlan: str, zone: int, quiet: bool = False) -> dict[Key, Obj]:
        """A VNI's conntrack zone, and its VXLAN port's mark reset.

        ``quiet``: no vnic of this host in the VNI is filtered, so no rule
        needs the state of its connections: they are not tracked at all.
        """
        objects: dict[Key, Obj] = {
            Key("element", INET, "zones", bridge): zone,
            Key("element", BRIDGE, "port_ids", vxlan): 0,
            Key("element", BRIDGE, "unchecked", vxlan): PRESENT,
        }
        if quiet:
            objects[Key("element", INET, "quiet", bridge)] = PRESENT
        return objects

    def vnic(
        self,
        port: str,
        bridge: str,
        vnic_filter: VnicFilter | None,
        limits: ConnLimits = NO_LIMITS,
        *,
        profile_id: int = 0,
        class_id: int = 0,
    ) -> dict[Key, Obj]:
        """A vnic's anti-spoofing data and the ids of its profile (also the mark
        of group frames towards it) and of its caps' class (whose objects
        :meth:`profile` and :meth:`limit_class` make). The ids may be 0 where
        only the keys matter (what a vnic had).

        A vnic that bypasses filtering only gets its mark reset (0: no
        profile) and no IP check.
        """
        if vnic_filter is None:
            return {
                Key("element", BRIDGE, "port_ids", port): 0,
                Key("element", BRIDGE, "unchecked", port): PRESENT,
            }
        spoof = vnic_filter.anti_spoof
        objects: dict[Key, Obj] = {
            Key("element", BRIDGE, "port_ids", port): profile_id,
            Key("element", BRIDGE, "filtered", port): PRESENT,
            Key("element", INET, "in_mac", (bridge, spoof.mac)): profile_id,
            Key("element", INET, "out_mac", (bridge, spoof.mac)): profile_id,
        }
        if any(limits):
            objects[Key("element", INET, "limits", (bridge, spoof.mac))] = class_id
        if not spoof.check_ip:
            objects[Key("element", BRIDGE, "unchecked", port)] = PRESENT
        else:
            objects[Key("element", BRIDGE, "port_macs", (port, spoof.mac))] = PRESENT
            for ip in spoof.ipv4:
                objects[Key("element", BRIDGE, "port_ip4", (port, ip))] = PRESENT
            for ip in spoof.ipv6:
                objects[Key("element", BRIDGE, "port_ip6", (port, ip))] = PRESENT
                objects[Key("element", BRIDGE, "port_nd", (port, _hex128(ip)))] = PRESENT
        return objects

    def limit_class(self, limits: ConnLimits, class_id: int) -> dict[Key, Obj]:
        """The chain and meters of the vnics with these caps, which drop (and count
        in @dyn_drops, by sender) a new connection over them, and the class's id
        in ``limit_classes``. A meter must be made in the transaction that makes
        its chain (nft marks it dynamic then)."""
        chain, rate_set, count_set = limit_names(*limits)
        rules: list[NftRule] = []
        objects: dict[Key, Obj] = {
            Key("element", INET, "limit_classes", class_id): Verdict(chain, jump=True)
        }
        capped = _goto("capped")
        if limits.per_second:
            limit = {"rate": limits.per_second, "burst": limits.per_second, "per": "second"}
            meter = {"limit": {**limit, "inv": True}}
            # A sender quiet for a minute starts again with a full bucket.
            rate_options = (("size", METER_SIZE), ("timeout", 60))
            objects[Key("set", INET, rate_set)] = Decl(_SENDER_TYPES, options=rate_options)
            rules.append(rule(_NEW, _UNCONFIRMED, _meter("update", rate_set, meter), capped))
        if limits.connections:
            count = {"ct count": {"val": limits.connections, "inv": True}}
            # The kernel removes a sender's element once it has no connection.
            count_options = (("size", METER_SIZE),)
            objects[Key("set", INET, count_set)] = Decl(_SENDER_TYPES, options=count_options)
            rules.append(rule(_NEW, _meter("add", count_set, count), capped))
        objects[Key("chain", INET, chain)] = Chain(tuple(rules))
        return objects

    def profile(
        self, sg_ids: Sequence[str], restrict_outbound: bool, profile_id: int
    ) -> dict[Key, Obj]:
        """The chains of the vnics using exactly these security groups, and the
        profile's id in ``in_profiles`` and ``out_profiles``."""
        profile_in, profile_out = profile_chains(sg_ids)
        outbound: tuple[NftRule, ...] = (*_no_server_rules(), rule(_prove(OUTBOUND_OK), _ACCEPT))
        if restrict_outbound:
            outbound = (
                *_no_server_rules(),
                _icmpv6_types(_ND_TYPES, _prove(OUTBOUND_OK), _ACCEPT),
                *(rule(_jump(sg_out_chain(sg))) for sg in sg_ids),
                rule(*_drop("drop_sg_out")),
            )
        inbound = (
            _icmpv6_types(_NEIGHBOUR_TYPES, _prove(INBOUND_OK | OUTBOUND_OK), _ACCEPT),
            *(rule(_jump(sg_in_chain(sg))) for sg in sg_ids),
            rule(*_drop("drop_sg_in")),
        )
        return {
            Key("chain", INET, profile_in): Chain(inbound),
            Key("chain", INET, profile_out): Chain(outbound),
            **profile_elements(profile_in, profile_out, profile_id),
        }

    def sg(self, sg_filter: SgFilter, members: Iterable[str]) -> dict[Key, Obj]:
        """A security group's two rule chains and two member sets."""
        sg_id = sg_filter.sg_id
        objects: dict[Key, Obj] = {
            Key("chain", INET, sg_in_chain(sg_id)): Chain(
                tuple(
                    rule(*_match_statements(m, "saddr"), _prove(INBOUND_OK), _goto("out_check"))
                    for m in sg_filter.inbound
                )
            ),
            Key("chain", INET, sg_out_chain(sg_id)): Chain(
                tuple(
                    rule(*_match_statements(m, "daddr"), _prove(OUTBOUND_OK), _ACCEPT)
                    for m in sg_filter.outbound
                )
            ),
            Key("set", INET, member_set(sg_id, 4)): Decl(("ipv4_addr",)),
            Key("set", INET, member_set(sg_id, 6)): Decl(("ipv6_addr",)),
        }
        sets = {4: member_set(sg_id, 4), 6: member_set(sg_id, 6)}
        for ip in members:
            objects[Key("element", INET, sets[ip_version(ip)], ip)] = PRESENT
        return objects


_NEW = _match({"ct": {"key": "state"}}, "new", "in")
# A flow's first packet: its entry is confirmed only after the forward hook.
# Conntrack calls every packet of a UDP flow "new" until a reply, so the rate
# of new connections counts only this one (a fast one-way stream is one flow).
_UNCONFIRMED = _match({"&": [{"ct": {"key": "status"}}, "confirmed"]}, 0)


def profile_elements(profile_in: str, profile_out: str, profile_id: int) -> dict[Key, Obj]:
    """A profile's id: its elements in the verdict maps of the dispatch."""
    return {
        Key("element", INET, "in_profiles", profile_id): Verdict(profile_in),
        Key("element", INET, "out_profiles", profile_id): Verdict(profile_out),
    }


def _meter(op: str, name: str, statement: Json) -> Json:
    return {"set": {"op": op, "elem": _SENDER, "set": "@" + name, "stmt": [statement]}}


def _match_statements(match: Match, peer: str) -> list[Json]:
    ip = "ip6" if match.family == 6 else "ip"
    statements: list[Json] = []
    if match.members_of is not None:
        statements.append(
            _match(_payload(ip, peer), "@" + member_set(match.members_of, match.family))
        )
    elif match.network is not None:
        address, length = match.network.split("/")
        full = 128 if match.family == 6 else 32
        right: Any = (
            address if int(length) == full else {"prefix": {"addr": address, "len": int(length)}}
        )
        statements.append(_match(_payload(ip, peer), right))
    else:
        statements.append(_match(_meta("nfproto"), "ipv6" if match.family == 6 else "ipv4"))
    if match.ports is not None and match.protocol is not None:
        name = "tcp" if match.protocol == 6 else "udp"
        low, high = match.ports
        statements.append(
            _match(_payload(name, "dport"), low if low == high else {"range": [low, high]})
        )
    elif match.protocol is not None:
        statements.append(_match(_meta("l4proto"), match.protocol))
    return statements


def tables() -> tuple[Key, Key]:
    return Key("table", BRIDGE), Key("table", INET)


# diff


def _ref(key: Key) -> Json:
    return {"family": key.family, "table": TABLE, "name": key.name}


def _element(key: Key, value: Obj | None) -> Any:
    """An element as nft's JSON wants it: the key, or [key, value] in a map."""
    element: Any = key.element
    if isinstance(element, tuple):
        element = {"concat": list(element)}
    if value is None or value is PRESENT:
        return element
    if isinstance(value, Verdict):
        return [element, {"jump" if value.jump else "goto": {"target": value.chain}}]
    return [element, value]


def diff(old: Mapping[Key, Obj], new: Mapping[Key, Obj]) -> list[Json]:
    """The commands, in a valid order for one transaction, that turn ``old`` into ``new``.

    Keys absent from a mapping are absent objects. A base chain whose hook
    changed is replaced (nothing refers to base chains). Objects made by the
    bootstrap are never made here. Raises :class:`Structural` when a set or
    map changed type, which needs the tables rebuilt.
    """
    replace: list[Json] = []
    declare: list[Json] = []
    drop_elements: dict[tuple[str, str], list[Any]] = {}
    fill: list[Json] = []
    add_elements: dict[tuple[str, str], list[Any]] = {}
    flush_doomed: list[Json] = []
    remove: list[Json] = []
    remove_last: list[Json] = []
    for key in sorted(set(old) | set(new), key=_order):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key.kind == "element":
            where = (key.family, key.name)
            if before is not None:
                drop_elements.setdefault(where, []).append(_element(key, None))
            if after is not None:
                add_elements.setdefault(where, []).append(_element(key, after))
        elif key.kind == "chain":
            assert before is None or isinstance(before, Chain)
            assert after is None or isinstance(after, Chain)
            ref = _ref(key)
            if after is None:
                flush_doomed.append({"flush": {"chain": ref}})
                remove.append({"delete": {"chain": ref}})
                continue
            if before is not None and before.base != after.base:
                replace += [{"flush": {"chain": ref}}, {"delete": {"chain": ref}}]
                before = None
            if before is None:
                spec = dict(ref)
                if after.base is not None:
                    spec.update(
                        type=after.base.type,
                        hook=after.base.hook,
                        prio=after.base.prio,
                        policy=after.base.policy,
                    )
                declare.append({"add": {"chain": spec}})
            else:
                fill.append({"flush": {"chain": ref}})
            fill.extend(
                {
                    "add": {
                        "rule": {
                            "family": key.family,
                            "table": TABLE,
                            "chain": key.name,
                            "expr": json.loads(r.statements),
                            "comment": r.digest,
                        }
                    }
                }
                for r in after.rules
            )
        else:
            assert before is None or isinstance(before, Decl)
            assert after is None or isinstance(after, Decl)
            if before is not None and after is not None:
                raise Structural(f"{key.kind} {key.family} {key.name} changed declaration")
            if after is not None:
                if after.bootstrapped:
                    raise Structural(f"{key.kind} {key.family} {key.name} needs the bootstrap")
                declare.append({"add": {key.kind: _declaration(key, after)}})
            elif key.kind == "table":
                remove_last.append({"delete": {"table": {"family": key.family, "name": TABLE}}})
            else:
                remove.append({"delete": {key.kind: _ref(key)}})
    return [
        *replace,
        *declare,
        *_elements("delete", drop_elements),
        *fill,
        *_elements("add", add_elements),
        *flush_doomed,
        *remove,
        *remove_last,
    ]


def _declaration(key: Key, decl: Decl) -> Json:
    if key.kind == "table":
        return {"family": key.family, "name": TABLE}
    if key.kind == "counter":
        return _ref(key)
    if key.kind == "map":
        keys: Any = list(decl.types[:-1]) if len(decl.types) > 2 else decl.types[0]
        return {**_ref(key), "type": keys, "map": decl.types[-1]}
    types: Any = list(decl.types) if len(decl.types) > 1 else decl.types[0]
    return {**_ref(key), "type": types, **dict(decl.options)}


_KIND_ORDER = {"table": 0, "counter": 1, "map": 2, "set": 3, "chain": 4, "element": 5}


def _order(key: Key) -> tuple[int, str, str, str]:
    """Tables, maps, sets, chains, elements: makers before users, users before the used."""
    return (_KIND_ORDER[key.kind], key.family, key.name, str(key.element))


def _elements(command: str, elements: dict[tuple[str, str], list[Any]]) -> list[Json]:
    return [
        {command: {"element": {"family": family, "table": TABLE, "name": name, "elem": elems}}}
        for (family, name), elems in elements.items()
    ]


# reading back


@dataclass
class Listing:
    """butterfly's tables as the kernel holds them."""

    objects: dict[Key, Obj] = field(default_factory=dict)

    def allocations(self, name: str) -> dict[str, int]:
        """Bridge -> zone (``zones``)."""
        return {
            str(key.element): value
            for key, value in self.objects.items()
            if key.kind == "element" and key.name == name and type(value) is int and value
        }

    def classes(self, name: str) -> dict[str, int]:
        """Chain -> its id, from a verdict map of ids (``in_profiles``, ``limit_classes``)."""
        return {
            value.chain: key.element
            for key, value in self.objects.items()
            if key.kind == "element"
            and key.name == name
            and isinstance(value, Verdict)
            and type(key.element) is int
        }


_ADDRESS_TYPES = ("ipv4_addr", "ipv6_addr")


def parse_listing(family: str, objects: Iterable[Json]) -> Listing:
    """The objects of ``nft list table FAMILY butterfly`` (JSON), as :class:`Key` s."""
    listing = Listing()
    chains: dict[str, list[NftRule]] = {}
    bases: dict[str, Base | None] = {}
    bootstrapped = {
        Key("set", BRIDGE, "port_nd"),
        Key("map", INET, "zones"),
        Key("set", INET, DROPS),
    }
    for obj in objects:
        if "table" in obj:
            listing.objects[Key("table", family)] = Decl(bootstrapped=True)
        elif "chain" in obj:
            spec = obj["chain"]
            chains.setdefault(spec["name"], [])
            bases[spec["name"]] = (
                Base(spec["type"], spec["hook"], int(spec["prio"]), spec.get("policy", "accept"))
                if "hook" in spec
                else None
            )
        elif "rule" in obj:
            spec = obj["rule"]
            chains.setdefault(spec["chain"], []).append(NftRule(str(spec.get("comment", ""))))
        elif "counter" in obj:
            listing.objects[Key("counter", family, obj["counter"]["name"])] = Decl()
        elif "map" in obj or "set" in obj:
            kind = "map" if "map" in obj else "set"
            spec = obj[kind]
            types = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
            if kind == "map":
                types = [*types, spec["map"]]
            key = Key(kind, family, spec["name"])
            listing.objects[key] = Decl(tuple(types), bootstrapped=key in bootstrapped)
            if spec["name"].startswith(DYNAMIC_PREFIX):
                continue
            for element in spec.get("elem", []):
                if kind == "map":
                    element_key, value = element
                    listing.objects[
                        Key("element", family, spec["name"], _element_key(element_key, types))
                    ] = _map_value(value)
                else:
                    listing.objects[
                        Key("element", family, spec["name"], _element_key(element, types))
                    ] = PRESENT
    for name, rules in chains.items():
        listing.objects[Key("chain", family, name)] = Chain(tuple(rules), bases.get(name))
    return listing


def _element_key(element: Any, types: Sequence[str]) -> ElementKey:
    """An element key read back, spelled as :class:`Layout` spells it."""
    if isinstance(element, dict) and "elem" in element:
        element = element["elem"]["val"]
    if isinstance(element, dict) and "concat" in element:
        return tuple(
            _canonical(part, kind) for part, kind in zip(element["concat"], types, strict=False)
        )
    if types[0] in _ADDRESS_TYPES:
        return str(ipaddress.ip_address(element))
    return element if isinstance(element, int | str) else str(element)


def _canonical(part: Any, kind: str) -> str:
    if kind in _ADDRESS_TYPES:
        return str(ipaddress.ip_address(part))
    if kind == "integer":
        return f"0x{int(part, 16) if isinstance(part, str) else int(part):032x}"
    return str(part).lower() if kind == "ether_addr" else str(part)


def _map_value(value: Any) -> Obj:
    if isinstance(value, dict):
        for verdict in ("goto", "jump"):
            if verdict in value:
                return Verdict(value[verdict]["target"], jump=verdict == "jump")
        raise ValueError(f"unexpected map value {value!r}")
    return int(value, 0) if isinstance(value, str) else int(value)
