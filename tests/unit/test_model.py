"""The model's validation and normalisation: every rule of the specification,
each with a bad input whose message is asserted."""

import re

import pytest

from butterfly.errors import BadIp, BadNic, BadRequest, BadRule, NotSupported, shown
from butterfly.model import (
    MAX_VNI,
    Cidr,
    Direction,
    Rule,
    SecurityGroup,
    State,
    Vnic,
    VnicType,
    VnicUpdate,
    canonical_ip,
    check_sg_id,
    make_member,
    make_rule,
    make_security_group,
    make_vnic,
)


def vnic(**fields: object) -> Vnic:
    values: dict[str, object] = {"id": "vnic-1", "mac": "52:54:00:12:34:56", "vni": 42}
    values.update(fields)
    return Vnic(**values)  # type: ignore[arg-type]


def raises(error: type[Exception], message: str) -> pytest.RaisesExc[Exception]:
    return pytest.raises(error, match="^" + re.escape(message) + "$")


# MAC


@pytest.mark.parametrize(
    "mac", ["52:54:00:12:34:56", "52:54:00:AB:cd:EF", "00:00:00:00:00:00", "fe:ff:ff:ff:ff:ff"]
)
def test_good_mac_is_returned_as_given(mac: str) -> None:
    assert make_vnic(vnic(mac=mac)).mac == mac


@pytest.mark.parametrize(
    "mac",
    [
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52-54-00-12-34-56",
        "525400123456",
        "52:54:00:12:34:5",
        "52:54:00:12:34:567",
        "52:54:00:12:34:5g",
        " 52:54:00:12:34:56",
        "52:54:00:12:34:56\n",
        "",
    ],
)
def test_bad_mac(mac: str) -> None:
    with raises(
        BadNic,
        f"Bad NIC format: nic 'vnic-1': mac {mac!r} is not six hex pairs separated by colons",
    ):
        make_vnic(vnic(mac=mac))


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "33:33:00:00:00:01", "ff:ff:ff:ff:ff:ff"])
def test_multicast_mac(mac: str) -> None:
    with raises(BadNic, f"Bad NIC format: nic 'vnic-1': mac {mac!r} is a multicast address"):
        make_vnic(vnic(mac=mac))


# VNI


@pytest.mark.parametrize("vni", [0, 1, MAX_VNI])
def test_good_vni(vni: int) -> None:
    assert make_vnic(vnic(vni=vni)).vni == vni


@pytest.mark.parametrize("vni", [MAX_VNI + 1, 1 << 32, -1])
def test_bad_vni(vni: int) -> None:
    assert MAX_VNI == 16777215
    with raises(BadNic, f"Bad NIC format: nic 'vnic-1': vni {vni} is out of range 0-16777215"):
        make_vnic(vnic(vni=vni))


# IPs


def test_ips_are_canonical_and_deduplicated_in_order() -> None:
    made = make_vnic(
        vnic(ips=("2001:0db8:0000::1", "10.0.0.1", "2001:DB8::1", "10.0.0.1", "::1", "0::1"))
    )
    assert made.ips == ("2001:db8::1", "10.0.0.1", "::1")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("2001:DB8::A", "2001:db8::a"),
        ("fe80:0:0:0:0:0:0:1", "fe80::1"),
        ("::", "::"),
        ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
    ],
)
def test_canonical_ip(text: str, canonical: str) -> None:
    assert canonical_ip(text) == canonical


def test_ipv4_mapped_ipv6_is_written_as_inet_ntop_does() -> None:
    """RFC 5952 section 5, and what C peers (inet_ntop) and Python 3.13 print."""
    assert canonical_ip("::FFFF:10.0.0.1") == "::ffff:10.0.0.1"
    assert canonical_ip("::ffff:a00:1") == "::ffff:10.0.0.1"


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.256",
        "10.0.0",
        "10.0.0.1/32",
        "2001:db8::1::1",
        "fe80::1%eth0",
        " 10.0.0.1",
        "10.0.0.1 ",
        "",
        "bogus",
        "010.0.0.1",
    ],
)
def test_bad_ip(ip: str) -> None:
    assert canonical_ip(ip) is None
    with raises(BadIp, f"Bad IP format: nic 'vnic-1': ip {ip!r} is not an IPv4 or IPv6 address"):
        make_vnic(vnic(ips=("10.0.0.2", ip)))


# ids


@pytest.mark.parametrize(
    ("nic_id", "problem"),
    [
        ("", "is empty"),
        ("x" * 129, "is longer than 128 characters"),
        ("a/b", "cannot be used as a file name"),
        (".", "cannot be used as a file name"),
        ("..", "cannot be used as a file name"),
        ("a b", "contains spaces or control characters"),
        ("a\tb", "contains spaces or control characters"),
        ("a\x00b", "contains spaces or control characters"),
        ("a\nb", "contains spaces or control characters"),
    ],
)
def test_bad_nic_id(nic_id: str, problem: str) -> None:
    with raises(BadNic, f"Bad NIC format: nic id {shown(nic_id)} {problem}"):
        make_vnic(vnic(id=nic_id))


@pytest.mark.parametrize("nic_id", ["x" * 128, "vnic_1.a-b", "é", "A:B", "0"])
def test_good_nic_id(nic_id: str) -> None:
    assert make_vnic(vnic(id=nic_id)).id == nic_id


def test_bad_sg_id_in_a_nic() -> None:
    with raises(
        BadNic,
        "Bad NIC format: nic 'vnic-1': security group id 'a b' contains spaces"
        " or control characters",
    ):
        make_vnic(vnic(security_groups=("ok", "a b")))


def test_sg_ids_of_a_nic_are_deduplicated_in_order() -> None:
    assert make_vnic(vnic(security_groups=("b", "a", "b"))).security_groups == ("b", "a")


@pytest.mark.parametrize(
    ("sg_id", "problem"), [("", "is empty"), ("a/b", "cannot be used as a file name")]
)
def test_check_sg_id(sg_id: str, problem: str) -> None:
    with raises(BadRequest, f"Bad Security Group format: security group id {sg_id!r} {problem}"):
        check_sg_id(sg_id)


# nic types and unsupported features


def test_bench_nic_is_not_supported() -> None:
    with raises(
        NotSupported, "nic 'vnic-1': type BENCH (built-in traffic generator) is not supported"
    ):
        make_vnic(vnic(type=VnicType.BENCH))


def test_sniff_target_is_an_id_of_another_nic() -> None:
    assert make_vnic(vnic(sniff_target_nic_id="ids")).sniff_target_nic_id == "ids"
    with raises(BadNic, "Bad NIC format: nic 'vnic-1': sniff_target_nic_id names the nic itself"):
        make_vnic(vnic(sniff_target_nic_id="vnic-1"))
    with raises(
        BadNic,
        "Bad NIC format: nic 'vnic-1': sniff_target_nic_id 'a b' contains spaces"
        " or control characters",
    ):
        make_vnic(vnic(sniff_target_nic_id="a b"))


def test_netns_nic_needs_a_namespace() -> None:
    with raises(
        BadNic, "Bad NIC format: nic 'vnic-1': type NETNS needs a path naming a network namespace"
    ):
        make_vnic(vnic(type=VnicType.NETNS))
    with raises(
        BadNic, "Bad NIC format: nic 'vnic-1': path 'a\\nb' is not a namespace name or path"
    ):
        make_vnic(vnic(type=VnicType.NETNS, netns="a\nb"))
    assert make_vnic(vnic(type=VnicType.NETNS, netns="blue")).netns == "blue"


def test_netns_is_dropped_for_other_types() -> None:
    assert make_vnic(vnic(type=VnicType.TAP, netns="blue")).netns == ""


def test_bad_packet_trace_path() -> None:
    with raises(BadNic, "Bad NIC format: nic 'vnic-1': packet_trace_path 'a\\x00b' is not a path"):
        make_vnic(vnic(packet_trace_path="a\0b"))


# nic_update


def test_update_replaces_lists_and_keeps_the_rest() -> None:
    before = make_vnic(
        vnic(ips=("10.0.0.1",), security_groups=("a",), ip_anti_spoof=True, packet_trace=True)
    )
    after = VnicUpdate(id="vnic-1", ips=("2001:0db8::1", "2001:db8::1")).apply_to(before)
    assert after.ips == ("2001:db8::1",)
    assert after.security_groups == ("a",)
    assert after.ip_anti_spoof is True
    assert after.packet_trace is True
    assert VnicUpdate(id="vnic-1").apply_to(before) == before
    cleared = VnicUpdate(id="vnic-1", ips=(), security_groups=()).apply_to(before)
    assert (cleared.ips, cleared.security_groups) == ((), ())
    toggled = VnicUpdate(id="vnic-1", ip_anti_spoof=False, packet_trace_path="/t").apply_to(before)
    assert (toggled.ip_anti_spoof, toggled.packet_trace_path) == (False, "/t")


def test_update_validates_like_a_new_nic() -> None:
    before = make_vnic(vnic())
    with raises(BadIp, "Bad IP format: nic 'vnic-1': ip '1.2.3' is not an IPv4 or IPv6 address"):
        VnicUpdate(id="vnic-1", ips=("1.2.3",)).apply_to(before)


# rules


def rule(**fields: object) -> Rule:
    values: dict[str, object] = {"direction": 0, "protocol": -1, "cidr": ("10.0.0.0", 8)}
    values.update(fields)
    return make_rule("sg-1", **values)  # type: ignore[arg-type]


def test_rule_canonical_form() -> None:
    made = rule(direction=1, protocol=6, port_start=22, port_end=80, cidr=("2001:0db8::8001", 8))
    assert made == Rule(Direction.OUTBOUND, 6, 22, 80, Cidr("2001:db8::8001", 8), None)
    assert str(made.cidr) == "2001:db8::8001/8"  # host bits kept
    assert made.cidr is not None and str(made.cidr.network) == "2000::/8"


@pytest.mark.parametrize("protocol", [-1, 0, 1, 47, 58, 132, 255])
def test_ports_are_dropped_for_non_tcp_udp(protocol: int) -> None:
    made = rule(protocol=protocol, port_start=10, port_end=20)
    assert (made.port_start, made.port_end) == (None, None)
    assert not made.has_ports
    assert made == rule(protocol=protocol)
    assert made.hash == rule(protocol=protocol).hash


@pytest.mark.parametrize("protocol", [-2, 256, 1 << 31])
def test_bad_protocol(protocol: int) -> None:
    with raises(
        BadRule,
        f"Bad Security Group rule format: security group 'sg-1': protocol"
        f" {protocol} is not -1 (all) or an IANA number 0-255",
    ):
        rule(protocol=protocol)


@pytest.mark.parametrize("direction", [2, -1, 100])
def test_bad_direction(direction: int) -> None:
    with raises(
        BadRule,
        f"Bad Security Group rule format: security group 'sg-1': direction"
        f" {direction} is not INBOUND (0) or OUTBOUND (1)",
    ):
        rule(direction=direction)


@pytest.mark.parametrize(("protocol", "name"), [(6, "tcp"), (17, "udp")])
def test_tcp_udp_need_both_ports(protocol: int, name: str) -> None:
    message = (
        f"Bad Security Group rule format: security group 'sg-1': a {name} rule needs"
        " port_start and port_end"
    )
    for ports in ({}, {"port_start": 1}, {"port_end": 1}):
        with raises(BadRule, message):
            rule(protocol=protocol, **ports)


def test_port_range() -> None:
    prefix = "Bad Security Group rule format: security group 'sg-1': "
    with raises(BadRule, prefix + "port_start 65536 is out of range 0-65535"):
        rule(protocol=6, port_start=65536, port_end=65536)
    with raises(BadRule, prefix + "port_end 70000 is out of range 0-65535"):
        rule(protocol=17, port_start=1, port_end=70000)
    with raises(BadRule, prefix + "port_start 81 is above port_end 80"):
        rule(protocol=6, port_start=81, port_end=80)
    assert rule(protocol=6, port_start=0, port_end=65535).port_end == 65535
    assert rule(protocol=17, port_start=53, port_end=53).port_start == 53


def test_exactly_one_source() -> None:
    message = (
        "Bad Security Group rule format: security group 'sg-1': a rule needs exactly one"
        " of cidr and security_group"
    )
    with raises(BadRule, message):
        rule(cidr=None)
    with raises(BadRule, message):
        rule(security_group="sg-2")
    assert rule(cidr=None, security_group="sg-2").security_group == "sg-2"


@pytest.mark.parametrize(
    ("address", "mask", "problem"),
    [
        ("10.0.0.0", 33, "cidr mask size 33 does not fit 0-32"),
        ("2001:db8::", 129, "cidr mask size 129 does not fit 0-128"),
        ("10.0.0.0", -1, "cidr mask size -1 does not fit 0-32"),
        ("10.0.0", 8, "cidr address '10.0.0' is not an IPv4 or IPv6 address"),
        ("10.0.0.0/8", 8, "cidr address '10.0.0.0/8' is not an IPv4 or IPv6 address"),
        ("", 0, "cidr address '' is not an IPv4 or IPv6 address"),
    ],
)
def test_bad_cidr(address: str, mask: int, problem: str) -> None:
    with raises(BadRule, f"Bad Security Group rule format: security group 'sg-1': {problem}"):
        rule(cidr=(address, mask))


@pytest.mark.parametrize(
    ("address", "mask"), [("0.0.0.0", 0), ("10.1.2.3", 32), ("::", 0), ("2001:db8::1", 128)]
)
def test_good_cidr_masks(address: str, mask: int) -> None:
    made = rule(cidr=(address, mask))
    assert made.cidr == Cidr(address, mask)


def test_bad_source_sg_id() -> None:
    with raises(
        BadRule,
        "Bad Security Group rule format: security group 'sg-1': source security"
        " group 'a b' contains spaces or control characters",
    ):
        rule(cidr=None, security_group="a b")


# members and security groups


def test_members_are_canonical() -> None:
    assert make_member("sg-1", "2001:0DB8::0001") == "2001:db8::1"
    with raises(
        BadIp,
        "Bad IP format: security group 'sg-1': member '10.0.0.1/32' is not an IPv4 or IPv6 address",
    ):
        make_member("sg-1", "10.0.0.1/32")


def test_make_security_group_deduplicates_in_order() -> None:
    one = rule(protocol=6, port_start=1, port_end=2)
    other = rule(cidr=None, security_group="x")
    sg = make_security_group(
        "sg-1",
        members=["10.0.0.2", "10.0.0.1", "10.0.0.2", "::1", "0:0::1"],
        rules=[one, other, one],
    )
    assert sg == SecurityGroup("sg-1", ("10.0.0.2", "10.0.0.1", "::1"), (one, other))


def test_make_security_group_validates() -> None:
    with raises(BadRequest, "Bad Security Group format: security group id '' is empty"):
        make_security_group("", members=[], rules=[])
    with raises(
        BadIp, "Bad IP format: security group 'sg-1': member 'x' is not an IPv4 or IPv6 address"
    ):
        make_security_group("sg-1", members=["10.0.0.1", "x"], rules=[])


def test_security_group_with_and_without() -> None:
    one = rule()
    sg = SecurityGroup("s").with_member("10.0.0.2").with_member("10.0.0.1").with_rule(one)
    assert sg.with_member("10.0.0.2") is sg
    assert sg.with_rule(one) is sg
    assert sg.members == ("10.0.0.2", "10.0.0.1")
    assert sg.without_member("10.0.0.2").members == ("10.0.0.1",)
    assert sg.without_rule(one).rules == ()
    assert sg.without_member("10.9.9.9") == sg


def test_rule_hash_is_stable_and_distinguishes_rules() -> None:
    assert rule().hash == rule().hash
    assert len(rule().hash) == 16
    assert rule().hash != rule(direction=1).hash
    assert rule(cidr=("10.0.0.0", 8)).hash != rule(cidr=("10.0.0.0", 9)).hash


# the state's indexes


def test_state_indexes_follow_replacements() -> None:
    state = State()
    state.put_vnic(make_vnic(vnic(id="a", vni=1, security_groups=("s1",))))
    state.put_vnic(make_vnic(vnic(id="b", vni=1, security_groups=("s1", "s2"))))
    assert [v.id for v in state.vnics_using("s1")] == ["a", "b"]
    assert [v.id for v in state.vnics_in(1)] == ["a", "b"]
    old = state.put_vnic(make_vnic(vnic(id="a", vni=2, security_groups=("s2",))))
    assert old is not None and old.vni == 1
    assert [v.id for v in state.vnics_using("s1")] == ["b"]
    assert [v.id for v in state.vnics_using("s2")] == ["a", "b"]
    assert [v.id for v in state.vnics_in(1)] == ["b"]
    state.remove_vnic("b")
    assert state.vnics_using("s1") == [] and state.vnics_in(1) == []
    assert [v.id for v in state.vnics()] == ["a"]
    assert state.remove_vnic("missing") is None


def test_state_knows_each_vnis_sniffers_through_replacements_and_removals() -> None:
    """The fast path asks whether a VNI is sniffed on every request: from this
    index, not by reading the VNI's vnics."""
    state = State()
    state.put_vnic(make_vnic(vnic(id="a", vni=1)))
    state.put_vnic(make_vnic(vnic(id="b", vni=1, sniff_target_nic_id="a")))
    state.put_vnic(make_vnic(vnic(id="c", vni=2, sniff_target_nic_id="d")))
    assert [v.id for v in state.sniffers_in(1)] == ["b"]
    assert [v.id for v in state.sniffers_in(2)] == ["c"]
    state.put_vnic(make_vnic(vnic(id="b", vni=2, sniff_target_nic_id="c")))  # moved
    assert state.sniffers_in(1) == []
    assert [v.id for v in state.sniffers_in(2)] == ["b", "c"]
    state.put_vnic(make_vnic(vnic(id="c", vni=2)))  # stops sniffing
    assert [v.id for v in state.sniffers_in(2)] == ["b"]
    state.remove_vnic("b")
    assert state.sniffers_in(2) == []
    # A request failing puts the previous version back (the service's undo).
    state.put_vnic(make_vnic(vnic(id="b", vni=2, sniff_target_nic_id="c")))
    assert [v.id for v in state.sniffers_in(2)] == ["b"]


def test_state_asks_a_vni_until_a_vnic_passes() -> None:
    state = State()
    for vnic_id in "abc":
        state.put_vnic(make_vnic(vnic(id=vnic_id, vni=1, bypass_filtering=vnic_id == "b")))
    asked: list[str] = []

    def bypassing(one: Vnic) -> bool:
        asked.append(one.id)
        return one.bypass_filtering

    assert state.any_in(1, bypassing)
    assert asked[-1] == "b" and len(asked) <= 3
    assert not state.any_in(2, bypassing)
    state.remove_vnic("b")
    assert not state.any_in(1, bypassing)


def test_state_knows_the_vnics_of_each_exact_list_of_groups() -> None:
    """A profile's chains stay while a filtered vnic has exactly its groups:
    asked of this index on every request, not of all the first group's users."""
    state = State()
    state.put_vnic(make_vnic(vnic(id="a", security_groups=("s1", "s2"))))
    state.put_vnic(make_vnic(vnic(id="b", security_groups=("s2", "s1"))))
    state.put_vnic(make_vnic(vnic(id="c", security_groups=("s1", "s2"), bypass_filtering=True)))

    def filtered(one: Vnic) -> bool:
        return not one.bypass_filtering

    assert state.any_with_groups(("s1", "s2"), filtered)
    assert state.any_with_groups(("s2", "s1"), filtered)
    assert not state.any_with_groups(("s1",), filtered)
    old = state.put_vnic(make_vnic(vnic(id="a", security_groups=("s1",))))  # an update
    assert not state.any_with_groups(("s1", "s2"), filtered), "only c, which bypasses"
    assert state.any_with_groups(("s1",), filtered)
    assert old is not None
    state.put_vnic(old)  # a failed request's undo
    assert state.any_with_groups(("s1", "s2"), filtered)
    assert not state.any_with_groups(("s1",), filtered)
    state.remove_vnic("a")
    state.remove_vnic("c")
    assert not state.any_with_groups(("s1", "s2"), bool)


def test_state_finds_a_vnic_by_mac_within_its_vni() -> None:
    state = State()
    state.put_vnic(make_vnic(vnic(id="a", vni=1, mac="52:54:00:00:00:AA")))
    assert state.vnic_with_mac(1, "52:54:00:00:00:aa") is not None
    assert state.vnic_with_mac(2, "52:54:00:00:00:aa") is None
    state.put_vnic(make_vnic(vnic(id="a", vni=2, mac="52:54:00:00:00:aa")))
    assert state.vnic_with_mac(1, "52:54:00:00:00:aa") is None
    state.remove_vnic("a")
    assert state.vnic_with_mac(2, "52:54:00:00:00:aa") is None


def test_state_knows_whether_a_vnic_checks_ips() -> None:
    state = State()
    state.put_vnic(make_vnic(vnic(id="a", ip_anti_spoof=True, bypass_filtering=True)))
    assert not state.checks_ips()
    state.put_vnic(make_vnic(vnic(id="a", ip_anti_spoof=True)))
    assert state.checks_ips()
    state.put_vnic(make_vnic(vnic(id="a")))
    assert not state.checks_ips()
    state.put_vnic(make_vnic(vnic(id="a", ip_anti_spoof=True)))
    state.remove_vnic("a")
    assert not state.checks_ips()


def test_state_lists_sorted_and_peers() -> None:
    state = State()
    for sg_id in ("b", "a", "c"):
        state.put_sg(SecurityGroup(sg_id))
    assert [sg.id for sg in state.sgs()] == ["a", "b", "c"]
    assert state.set_peers(5, ("192.0.2.1",)) == ()
    assert state.set_peers(3, ("192.0.2.2",)) == ()
    assert state.all_peers() == {3: ("192.0.2.2",), 5: ("192.0.2.1",)}
    assert state.set_peers(5, ()) == ("192.0.2.1",)
    assert state.peers(5) == ()
    assert state.all_peers() == {3: ("192.0.2.2",)}
