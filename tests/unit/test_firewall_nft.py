"""The nftables rendering of filters and the diff into transactions (no kernel).

The functional tests prove the rules on the kernel; these pin down the costs
the design promises: a member change is one set element, a rule change
rewrites one chain, a vnic is elements only.
"""

import json
from typing import Any

import pytest

from butterfly.dataplane.naming import limit_names, member_set, profile_chains, sg_in_chain
from butterfly.dataplane.ruleset import (
    BRIDGE,
    INET,
    PRESENT,
    Base,
    Chain,
    ConnLimits,
    Decl,
    Key,
    Layout,
    Obj,
    Structural,
    Verdict,
    diff,
    parse_listing,
)
from butterfly.model import State, Vnic, VnicType, make_rule, make_security_group, make_vnic
from butterfly.model.firewall import sg_filter, vnic_filter

LAYOUT = Layout(underlay_ifname="eth0", underlay_ip="192.0.2.1", vxlan_port=4789)


def _bootstrapped() -> dict[Key, Obj]:
    return {
        key: obj
        for key, obj in LAYOUT.infrastructure().items()
        if isinstance(obj, Decl) and obj.bootstrapped
    }


def _web(*members: str, port: int = 80) -> dict[Key, Obj]:
    sg = make_security_group(
        "web",
        members=list(members),
        rules=[
            make_rule(
                "web",
                direction=0,
                protocol=6,
                port_start=port,
                port_end=port,
                security_group="clients",
            ),
            make_rule("web", direction=0, protocol=1, cidr=("10.0.0.0", 8)),
        ],
    )
    return LAYOUT.sg(sg_filter("web", sg), sg.members)


def test_the_bootstrap_objects_are_never_made_by_json() -> None:
    with pytest.raises(Structural, match="bootstrap"):
        diff({}, LAYOUT.infrastructure())
    commands = diff(_bootstrapped(), LAYOUT.infrastructure())
    assert not any("table" in command.get("add", {}) for command in commands)


def test_adding_a_member_is_one_set_element() -> None:
    assert diff(_web("10.0.0.1"), _web("10.0.0.1", "10.0.0.2")) == [
        {
            "add": {
                "element": {
                    "family": INET,
                    "table": "butterfly",
                    "name": member_set("web", 4),
                    "elem": ["10.0.0.2"],
                }
            }
        }
    ]
    assert diff(_web("10.0.0.1", "2001:db8::1"), _web("10.0.0.1")) == [
        {
            "delete": {
                "element": {
                    "family": INET,
                    "table": "butterfly",
                    "name": member_set("web", 6),
                    "elem": ["2001:db8::1"],
                }
            }
        }
    ]


def test_changing_a_rule_rewrites_one_chain() -> None:
    commands = diff(_web(), _web(port=8080))
    assert commands[0] == {
        "flush": {"chain": {"family": INET, "table": "butterfly", "name": sg_in_chain("web")}}
    }
    assert {c["add"]["rule"]["chain"] for c in commands[1:]} == {sg_in_chain("web")}
    assert len(commands) == 1 + 2 * 1 + 1  # flush, the tcp rule (v4, v6), the icmp rule


def test_a_vnic_is_elements_and_a_shared_profile() -> None:
    state = State()
    vnic = make_vnic(
        Vnic(
            id="v",
            mac="52:54:00:00:00:01",
            vni=1,
            type=VnicType.TAP,
            ips=("10.0.0.1",),
            security_groups=("web",),
            ip_anti_spoof=True,
        )
    )
    state.put_vnic(vnic)
    objects = LAYOUT.vnic("bf-v", "bfbr1", vnic_filter(vnic, state), profile_id=3)
    assert {key.kind for key in objects} == {"element"}
    assert not any(isinstance(value, Verdict) for value in objects.values()), (
        "a jump or goto element makes the kernel validate every verdict map"
    )
    assert objects[Key("element", BRIDGE, "port_ids", "bf-v")] == 3, "group frames' dispatch"
    assert objects[Key("element", BRIDGE, "filtered", "bf-v")] is PRESENT
    assert objects[Key("element", BRIDGE, "port_ip4", ("bf-v", "10.0.0.1"))] is PRESENT
    assert Key("element", BRIDGE, "unchecked", "bf-v") not in objects, "its IPs are checked"
    named = ("bfbr1", "52:54:00:00:00:01")
    assert objects[Key("element", INET, "in_mac", named)] == 3
    assert objects[Key("element", INET, "out_mac", named)] == 3
    profile_in, profile_out = profile_chains(("web",))
    profile = LAYOUT.profile(("web",), restrict_outbound=False, profile_id=3)
    assert profile[Key("element", INET, "in_profiles", 3)] == Verdict(profile_in)
    assert profile[Key("element", INET, "out_profiles", 3)] == Verdict(profile_out)
    bypass = LAYOUT.vnic("bf-v", "bfbr1", None)
    assert bypass == {
        Key("element", BRIDGE, "port_ids", "bf-v"): 0,
        Key("element", BRIDGE, "unchecked", "bf-v"): PRESENT,
    }


def test_a_profile_restricts_outbound_only_when_asked() -> None:
    profile_in, profile_out = profile_chains(("a", "b"))
    open_profile = LAYOUT.profile(("a", "b"), restrict_outbound=False, profile_id=1)
    unrestricted = open_profile[Key("chain", INET, profile_out)]
    assert isinstance(unrestricted, Chain)
    assert len(unrestricted.rules) == 3  # router messages, DHCP servers, accept (proving it)
    assert json.loads(unrestricted.rules[-1].statements)[-1] == {"accept": None}
    restricted = LAYOUT.profile(("a", "b"), restrict_outbound=True, profile_id=1)
    out = restricted[Key("chain", INET, profile_out)]
    assert isinstance(out, Chain) and len(out.rules) == 6  # the same two, ND, a, b, drop
    assert out.rules[:2] == unrestricted.rules[:2]
    commands = diff(open_profile, restricted)
    assert {c.get("add", {}).get("rule", {}).get("chain") for c in commands} - {None} == {
        profile_out
    }
    assert Key("chain", INET, profile_in) in restricted


def test_removal_order_lets_the_kernel_release_references() -> None:
    old = {**_web("10.0.0.1"), **LAYOUT.profile(("web",), restrict_outbound=False, profile_id=1)}
    commands = diff(old, {})
    verbs = [(verb, next(iter(target))) for c in commands for verb, target in c.items()]
    flushes = [i for i, v in enumerate(verbs) if v[0] == "flush"]
    deletes = [i for i, v in enumerate(verbs) if v in {("delete", "chain"), ("delete", "set")}]
    assert flushes and deletes and max(flushes) < min(deletes)


def test_a_changed_base_chain_is_replaced_in_the_same_transaction() -> None:
    old = {Key("chain", INET, "raw_out"): Chain((), Base("filter", "output", 10))}
    new = {Key("chain", INET, "raw_out"): Chain((), Base("filter", "output", -300))}
    commands = diff(old, new)
    assert [next(iter(c)) for c in commands] == ["flush", "delete", "add"]
    assert commands[2]["add"]["chain"]["prio"] == -300


def test_a_changed_set_type_needs_a_rebuild() -> None:
    old = {Key("set", INET, "x"): Decl(("ipv4_addr",))}
    with pytest.raises(Structural):
        diff(old, {Key("set", INET, "x"): Decl(("ipv6_addr",))})


def _as_listing(family: str, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``nft -j list table`` answers after ``commands`` (nft's own shape)."""
    listing: list[dict[str, Any]] = [{"table": {"family": family, "name": "butterfly"}}]
    sets: dict[str, dict[str, Any]] = {}
    for command in commands:
        ((verb, target),) = command.items()
        ((kind, spec),) = target.items()
        if verb != "add" or spec["family"] != family:
            continue
        if kind in ("set", "map"):
            sets[spec["name"]] = {kind: dict(spec)}
            listing.append(sets[spec["name"]])
        elif kind == "element":
            holder = sets[spec["name"]]
            next(iter(holder.values())).setdefault("elem", []).extend(spec["elem"])
        elif kind == "counter":
            listing.append({"counter": {**spec, "handle": 1, "packets": 0, "bytes": 0}})
        elif kind == "chain":
            listing.append({"chain": spec})
        elif kind == "rule":
            listing.append({"rule": spec})
    copied: list[dict[str, Any]] = json.loads(json.dumps(listing))
    return copied


def test_a_listing_read_back_equals_what_was_wanted() -> None:
    state = State()
    vnic = make_vnic(
        Vnic(
            id="v",
            mac="52:54:00:00:00:01",
            vni=1,
            type=VnicType.TAP,
            ips=("10.0.0.1", "2001:db8::1"),
            security_groups=("web",),
            ip_anti_spoof=True,
        )
    )
    state.put_vnic(vnic)
    wanted = {
        **{
            k: v
            for k, v in LAYOUT.infrastructure().items()
            if not (isinstance(v, Decl) and v.bootstrapped)
        },
        **_web("10.0.0.9", "2001:db8::9"),
        **LAYOUT.vnic(
            "bf-v",
            "bfbr1",
            vnic_filter(vnic, state),
            ConnLimits(100, 10),
            profile_id=1,
            class_id=1,
        ),
        **LAYOUT.limit_class(ConnLimits(100, 10), 1),
        **LAYOUT.profile(("web",), restrict_outbound=False, profile_id=1),
        **LAYOUT.vni("bfbr1", "bfvx1", 5),
    }
    bootstrapped_sets = ("zones", "port_nd")
    wanted = {k: v for k, v in wanted.items() if k.name not in bootstrapped_sets}
    commands = diff({}, wanted)
    read_back: dict[Key, Obj] = {}
    for family in (BRIDGE, INET):
        read_back.update(parse_listing(family, _as_listing(family, commands)).objects)
    read_back = {k: v for k, v in read_back.items() if k.kind != "table"}
    assert diff(read_back, wanted) == []


def test_a_vnic_with_caps_jumps_to_its_class_and_one_without_has_none() -> None:
    state = State()
    vnic = make_vnic(Vnic(id="v", mac="52:54:00:00:00:01", vni=1, type=VnicType.TAP))
    state.put_vnic(vnic)
    filtering = vnic_filter(vnic, state)
    capped = LAYOUT.vnic("bf-v", "bfbr1", filtering, ConnLimits(100, 0), class_id=2)
    element = Key("element", INET, "limits", ("bfbr1", "52:54:00:00:00:01"))
    assert capped[element] == 2
    assert element not in LAYOUT.vnic("bf-v", "bfbr1", filtering)
    only_count = LAYOUT.limit_class(ConnLimits(100, 0), 2)
    assert only_count[Key("element", INET, "limit_classes", 2)] == Verdict(
        limit_names(100, 0)[0], jump=True
    )
    assert Key("set", INET, limit_names(100, 0)[2]) in only_count
    assert Key("set", INET, limit_names(100, 0)[1]) not in only_count
    chain = only_count[Key("chain", INET, limit_names(100, 0)[0])]
    assert isinstance(chain, Chain) and len(chain.rules) == 1


def test_what_the_packets_put_in_meters_is_not_read_back() -> None:
    """Elements of the dyn_ sets are the kernel's: a reconcile never removes them."""
    listing = [
        {
            "set": {
                "family": "inet",
                "name": "dyn_drops",
                "table": "butterfly",
                "type": ["ifname", "ether_addr"],
                "elem": [{"elem": {"val": {"concat": ["bfbr1", "52:54:00:00:00:01"]}}}],
            }
        }
    ]
    objects = parse_listing(INET, listing).objects
    assert list(objects) == [Key("set", INET, "dyn_drops")]
