"""Restarts, repairs and clean-up: reconcile leaves right objects alone, fixes the rest."""

import hashlib
import json

import pytest

from butterfly.dataplane.naming import tap_name
from butterfly.errors import DataplaneError
from butterfly.model import State, Vnic, VnicType, make_rule, make_security_group, make_vnic
from butterfly_lab.lab import comparable_ruleset

from .conftest import Guest, Host, Lab, netns_vnic, plug, put_sg

pytestmark = pytest.mark.root


def _links(host: Host) -> dict[str, int]:
    return {link["ifname"]: link["ifindex"] for link in json.loads(host.ip("-j", "link", "show"))}


def _setup(lab: Lab) -> tuple[Host, State, list[Guest]]:
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    sg = make_security_group(
        "web",
        members=["10.0.0.9"],
        rules=[
            make_rule(
                "web", direction=0, protocol=6, port_start=80, port_end=80, cidr=("10.0.0.0", 24)
            ),
        ],
    )
    put_sg(dataplane, state, sg)
    guests = [lab.guest(), lab.guest()]
    for index, guest in enumerate(guests):
        plug(
            dataplane,
            state,
            netns_vnic(
                f"v{index}",
                guest,
                f"52:54:00:00:00:0{index + 1}",
                (f"10.0.0.{index + 1}",),
                security_groups=("web",),
            ),
        )
    plug(
        dataplane,
        state,
        make_vnic(Vnic(id="tap", mac="52:54:00:00:00:09", vni=42, type=VnicType.TAP)),
    )
    guests[1].listen("tcp", 80)
    assert guests[0].reaches("tcp", "10.0.0.2", 80)
    return host, state, guests


def test_a_restart_touches_nothing_and_keeps_established_flows(lab: Lab) -> None:
    host, state, guests = _setup(lab)
    held = guests[0].agent.call("hold", host="10.0.0.2", port=80, timeout=3)
    assert held["ok"]
    links = _links(host)
    rules = comparable_ruleset(host.exec("nft", "-a", "list", "ruleset"))
    host.dataplanes[0].close()
    host.dataplanes.clear()
    restarted = host.dataplane()
    restarted.reconcile(state)
    assert _links(host) == links
    listed = comparable_ruleset(host.exec("nft", "-a", "list", "ruleset"))
    assert listed == rules, "reconcile rewrote correct rules (what packets counted aside)"
    assert guests[0].agent.call("echo", conn_id=held["id"], timeout=3)["ok"]
    assert guests[0].reaches("tcp", "10.0.0.2", 80)


def test_reconcile_repairs_what_is_missing_and_removes_what_is_stale(lab: Lab) -> None:
    host, state, guests = _setup(lab)
    dataplane = host.dataplanes[0]
    host.ip("link", "del", tap_name("v0"))
    host.exec("nft", "flush", "chain", "inet", "butterfly", "filter")
    host.exec(
        "nft", "delete", "element", "inet", "butterfly", "m4_" + _digest("web"), "{ 10.0.0.9 }"
    )
    state.remove_vnic("tap")
    dataplane.reconcile(state)
    links = _links(host)
    assert tap_name("v0") in links
    assert tap_name("tap") not in links
    assert tap_name("v0") in guests[0].ip("link", "show")
    assert '"bfbr*"' in host.exec("nft", "list", "chain", "inet", "butterfly", "filter")
    assert "10.0.0.9" in host.exec(
        "nft", "list", "set", "inet", "butterfly", "m4_" + _digest("web")
    )
    assert guests[0].reaches("tcp", "10.0.0.2", 80)
    assert guests[1].blocked("tcp", "10.0.0.1", 81)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_a_changed_base_chain_rebuilds_the_tables_and_flows_survive(lab: Lab) -> None:
    host, state, guests = _setup(lab)
    held = guests[0].agent.call("hold", host="10.0.0.2", port=80, timeout=3)
    host.exec("nft", "delete", "chain", "inet", "butterfly", "raw_out")
    host.exec(
        "nft",
        "add",
        "chain",
        "inet",
        "butterfly",
        "raw_out",
        "{ type filter hook output priority 10; }",
    )
    host.dataplanes[0].reconcile(state)
    assert "priority raw" in host.exec("nft", "list", "chain", "inet", "butterfly", "raw_out")
    assert guests[0].agent.call("echo", conn_id=held["id"], timeout=3)["ok"]
    assert guests[0].reaches("tcp", "10.0.0.2", 80)


def test_cleanup_removes_every_butterfly_object_and_nothing_else(lab: Lab) -> None:
    host, state, _ = _setup(lab)
    host.ip("link", "add", "bf-foreign", "type", "veth", "peer", "name", "bf-foreign2")
    host.exec("nft", "add", "table", "inet", "other")
    dataplane = host.dataplanes[0]
    dataplane.reconcile(state)
    assert "bf-foreign" in _links(host)
    dataplane.cleanup()
    links = _links(host)
    assert {"bf-foreign", "bf-foreign2"} <= set(links)
    assert not [name for name in links if name.startswith(("bfbr", "bfvx", "bf-v", "bf-tap"))]
    tables = host.exec("nft", "list", "tables")
    assert "butterfly" not in tables and "inet other" in tables


def test_reconcile_repairs_all_it_can_and_names_what_it_cannot(lab: Lab) -> None:
    host, state, guests = _setup(lab)
    guests[0].close()
    state.put_vnic(make_vnic(Vnic(id="new", mac="52:54:00:00:00:0a", vni=42, type=VnicType.TAP)))
    with pytest.raises(DataplaneError, match=r"nic 'v0'.*not a network namespace"):
        host.dataplanes[0].reconcile(state)
    assert tap_name("new") in _links(host)
    assert guests[1].agent.call("listen", proto="tcp", port=81, family=4)["ok"]
