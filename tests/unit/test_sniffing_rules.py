"""Which copy rules sniffing needs (butterfly.dataplane.sniffing, pure part, no kernel)."""

from butterfly.dataplane.guard import ALL_OK
from butterfly.dataplane.sniffing import _commands, passes_anti_spoofing, sniff_rules
from butterfly.model import State, Vnic, make_vnic
from butterfly.model.firewall import AntiSpoof


def _state(*vnics: Vnic) -> State:
    state = State()
    for vnic in vnics:
        state.put_vnic(make_vnic(vnic))
    return state


SOURCE = Vnic(id="s", mac="52:54:00:00:00:01", vni=1, ips=("10.0.0.1",), sniff_target_nic_id="t")
TARGET = Vnic(id="t", mac="52:54:00:00:00:02", vni=1)
OTHER = Vnic(id="o", mac="52:54:00:00:00:03", vni=1, bypass_filtering=True)


def test_no_target_no_rule() -> None:
    state = _state(SOURCE)
    assert sniff_rules(state, [SOURCE], cross_vni=False) == ()


def test_rules_sit_on_the_source_and_every_other_port_of_its_vni() -> None:
    state = _state(SOURCE, TARGET, OTHER)
    rules = sniff_rules(state, [SOURCE], cross_vni=False)
    assert {rule.port for rule in rules} == {"bf-s", "bf-t", "bf-o", "bfvx1"}
    assert {(rule.source, rule.target) for rule in rules} == {("s", "bf-t")}
    # A vnic that bypasses filtering sends anything: its rules check only the destination.
    assert [len(rule.matches) for rule in rules if rule.port == "bf-o"] == [1, 1]


def test_another_vni_needs_permission() -> None:
    target = Vnic(id="t", mac="52:54:00:00:00:02", vni=2)
    state = _state(SOURCE, target)
    assert sniff_rules(state, [SOURCE], cross_vni=False) == ()
    assert sniff_rules(state, [SOURCE], cross_vni=True) != ()


def test_anti_spoofing_alternatives() -> None:
    assert passes_anti_spoofing(None) == [()]
    mac_only = passes_anti_spoofing(AntiSpoof(mac="52:54:00:00:00:01", check_ip=False))
    assert len(mac_only) == 1
    checked = AntiSpoof(mac="52:54:00:00:00:01", check_ip=True, ipv4=("10.0.0.1",),
                        ipv6=("fe80::1",))  # fmt: skip
    alternatives = passes_anti_spoofing(checked)
    assert all(alternative[0] == mac_only[0][0] for alternative in alternatives)
    assert any("10.0.0.1" in str(alternative) for alternative in alternatives)


def test_a_copy_carries_the_guards_bits_and_the_original_does_not() -> None:
    """The copy leaves by the target's port, past the tables: without the bits
    its port guard drops it (test_switch_sniffing.py fails then)."""
    state = _state(SOURCE, TARGET)
    commands = _commands(sniff_rules(state, [SOURCE], cross_vni=False))
    rules = [command["add"]["rule"] for command in commands if "rule" in command.get("add", {})]
    assert rules
    for rule in rules:
        expr = rule["expr"]
        dup = next(i for i, statement in enumerate(expr) if "dup" in statement)
        before, after = expr[dup - 1]["mangle"], expr[dup + 1]["mangle"]
        assert before["value"]["|"][1] == ALL_OK
        assert after["value"]["&"][1] == ~ALL_OK & 0xFFFFFFFF
