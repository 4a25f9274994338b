"""The translation of security groups and vnics into abstract filters (no kernel)."""

from butterfly.model import State, Vnic, VnicType, make_rule, make_security_group, make_vnic
from butterfly.model.firewall import (
    AntiSpoof,
    Match,
    has_outbound,
    link_local,
    referenced_groups,
    rule_matches,
    sg_filter,
    vnic_filter,
)

IN, OUT = 0, 1


def test_a_cidr_rule_is_one_match_of_its_family_with_host_bits_cleared() -> None:
    rule = make_rule(
        "s", direction=IN, protocol=6, port_start=80, port_end=90, cidr=("10.1.2.3", 8)
    )
    assert rule_matches(rule) == (
        Match(family=4, protocol=6, ports=(80, 90), network="10.0.0.0/8"),
    )
    v6 = make_rule("s", direction=IN, protocol=-1, cidr=("2001:db8::8001", 32))
    assert rule_matches(v6) == (Match(family=6, network="2001:db8::/32"),)


def test_a_zero_prefix_means_any_address_of_the_family() -> None:
    assert rule_matches(make_rule("s", direction=IN, protocol=1, cidr=("0.0.0.0", 0))) == (
        Match(family=4, protocol=1),
    )
    assert rule_matches(make_rule("s", direction=IN, protocol=58, cidr=("::", 0))) == (
        Match(family=6, protocol=58),
    )


def test_a_group_source_matches_its_members_of_both_families() -> None:
    rule = make_rule(
        "s", direction=IN, protocol=17, port_start=53, port_end=53, security_group="dns"
    )
    assert rule_matches(rule) == (
        Match(family=4, protocol=17, ports=(53, 53), members_of="dns"),
        Match(family=6, protocol=17, ports=(53, 53), members_of="dns"),
    )


def test_a_group_splits_by_direction_in_rule_order() -> None:
    sg = make_security_group(
        "s",
        members=[],
        rules=[
            make_rule(
                "s", direction=OUT, protocol=6, port_start=443, port_end=443, cidr=("0.0.0.0", 0)
            ),
            make_rule(
                "s", direction=IN, protocol=6, port_start=22, port_end=22, cidr=("10.0.0.0", 8)
            ),
            make_rule("s", direction=IN, protocol=-1, security_group="peers"),
        ],
    )
    filtered = sg_filter("s", sg)
    assert [m.ports for m in filtered.inbound] == [(22, 22), None, None]
    assert [m.family for m in filtered.inbound] == [4, 4, 6]
    assert filtered.outbound == (Match(family=4, protocol=6, ports=(443, 443)),)
    assert has_outbound(sg)
    assert referenced_groups([sg]) == {"peers"}


def test_a_missing_group_allows_nothing() -> None:
    assert sg_filter("ghost", None).inbound == sg_filter("ghost", None).outbound == ()
    assert not has_outbound(None)


def test_the_link_local_address_is_derived_from_the_mac() -> None:
    assert link_local("52:54:00:12:34:56") == "fe80::5054:ff:fe12:3456"
    assert link_local("00:00:00:00:00:01") == "fe80::200:ff:fe00:1"


def _state(*sgs_with_outbound: str) -> State:
    state = State()
    for sg_id in ("a", "b"):
        rules = []
        if sg_id in sgs_with_outbound:
            rules.append(make_rule(sg_id, direction=OUT, protocol=-1, cidr=("0.0.0.0", 0)))
        state.put_sg(make_security_group(sg_id, members=[], rules=rules))
    return state


def test_a_vnic_filter_holds_its_groups_addresses_and_outbound_restriction() -> None:
    vnic = make_vnic(
        Vnic(
            id="v",
            mac="52:54:00:AB:00:01",
            vni=1,
            type=VnicType.TAP,
            ips=("10.0.0.1", "2001:db8::1"),
            security_groups=("a", "b"),
            ip_anti_spoof=True,
        )
    )
    result = vnic_filter(vnic, _state("b"))
    assert result is not None
    assert result.security_groups == ("a", "b")
    assert result.restrict_outbound
    assert result.anti_spoof == AntiSpoof(
        mac="52:54:00:ab:00:01",
        check_ip=True,
        ipv4=("10.0.0.1",),
        ipv6=("2001:db8::1", "fe80::5054:ff:feab:1"),
    )
    unrestricted = vnic_filter(vnic, _state())
    assert unrestricted is not None and not unrestricted.restrict_outbound


def test_bypass_filtering_means_no_filter_at_all() -> None:
    vnic = make_vnic(
        Vnic(
            id="v",
            mac="52:54:00:00:00:01",
            vni=1,
            type=VnicType.TAP,
            bypass_filtering=True,
            security_groups=("a",),
        )
    )
    assert vnic_filter(vnic, _state("a")) is None
