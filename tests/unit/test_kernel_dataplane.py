"""What KernelDataplane changes for a request, in which order, and how it undoes it (no kernel).

The data plane runs on the in-memory kernel of :mod:`kernel_fakes`: links in
dicts, one log of every change (nft's transactions included). These tests
pin the order the design depends on (filtering before a port forwards, the
guard before a link joins its bridge, a port gone before its rules), what a
failure gives back, and how far a repair looks; the functional tests prove
the same on a real kernel. Only TAP vnics and static peers: a veth's
namespace, multicast sysctls and the deletion thread are the kernel's.
"""

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kernel_fakes import UNDERLAY, UNDERLAY_IP, FakeKernel

from butterfly.dataplane.base import SgChange
from butterfly.dataplane.fastpath import LOADING, FastPathMode, prepare
from butterfly.dataplane.guard import GUARD_PRIO, SENDER_MARK, SENDER_PRIO, GuardKind
from butterfly.dataplane.kernel import KernelDataplane
from butterfly.dataplane.naming import (
    bridge_name,
    member_set,
    retired_name,
    tap_name,
    vxlan_name,
)
from butterfly.dataplane.watch import Scope
from butterfly.errors import ConfigError, DataplaneError, NotSupported
from butterfly.model import State, Vnic, VnicType, make_security_group, make_vnic
from butterfly.model.sessions import FlowTuple, Session

PEER = "192.0.2.9"
GUARD_FILTERED = "bf-guard-filtered"
FAST_PATH_FILTER = "bf-fastpath"


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
def dataplane(kernel: FakeKernel, tmp_path: Path) -> KernelDataplane:
    return _dataplane(kernel, tmp_path)


def _dataplane(kernel: FakeKernel, tmp_path: Path, **options: Any) -> KernelDataplane:
    options.setdefault("static_peers", (PEER,))
    return KernelDataplane(
        kernel=kernel.io(), underlay_ip=UNDERLAY_IP, socket_dir=str(tmp_path), **options
    )


def _vnic(vnic_id: str, vni: int = 7, **fields: Any) -> Vnic:
    mac = f"52:54:00:00:00:{len(vnic_id):02x}"
    return make_vnic(Vnic(id=vnic_id, mac=mac, vni=vni, type=VnicType.TAP, **fields))


def _plug(dataplane: KernelDataplane, state: State, vnic: Vnic) -> None:
    replaced = state.put_vnic(vnic)
    dataplane.plug(vnic, replaced, state)


def _position(events: list[str], event: str) -> int:
    return events.index(event)


def test_a_first_vnic_gets_its_rules_then_bridge_vxlan_and_port_in_that_order(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    vnic = _vnic("a")
    _plug(dataplane, state, vnic)
    events = kernel.events
    before = _position
    assert events[:2] == ["nft bootstrap", "nft"], "filtering exists before any link"
    assert before(events, "add bridge bfbr7") < before(events, "add vxlan bfvx7")
    assert before(events, "add vxlan bfvx7") < before(events, "add tap bf-a")
    # Each link is guarded before it joins its bridge.
    assert before(events, "guard bfvx7 bf-guard-open") < before(events, "set bfvx7 master=bfbr7")
    assert before(events, f"guard bf-a {GUARD_FILTERED}") < before(events, "set bf-a master=bfbr7")
    # A filtered port is locked to its MAC before anything can use it.
    assert events[-2:] == ["set port bf-a locked=True", f"pin bf-a {vnic.mac}"]
    assert f"flood bfvx7 {PEER}" in events
    assert kernel.netlink.names() == {"bfbr7", "bfvx7", "bf-a"}


def test_a_second_vnic_of_the_vni_reuses_its_devices(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    _plug(dataplane, state, _vnic("a"))
    kernel.events.clear()
    _plug(dataplane, state, _vnic("bb", bypass_filtering=True))
    assert kernel.events == [
        "nft",
        "add tap bf-bb",
        "guard bf-bb bf-guard-open",
        "set bf-bb master=bfbr7",
        "set bf-bb up=True",
    ], "an unfiltered port keeps the bridge's defaults and pins nothing"


def test_the_guards_blocks_and_their_anchors_come_before_the_first_port(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    """Ports carry no program of their own: each is bound to the two shared
    blocks of its kind, which hold the programs from before the first port."""
    state = State()
    _plug(dataplane, state, _vnic("a"))
    _plug(dataplane, state, _vnic("bb", bypass_filtering=True))
    events, netlink = kernel.events, kernel.netlink
    first_port = _position(events, "guard bfvx7 bf-guard-open")
    for kind in GuardKind:
        anchor = netlink.by_name[kind.anchor]
        assert _position(events, f"add tap {kind.anchor}") < first_port
        assert netlink.bound[anchor.index] == kind.blocks and not anchor.up
        assert netlink.blocks[kind.blocks.egress] == {GUARD_PRIO: kind.value}
        assert _position(events, f"block {kind.blocks.egress:x} 2 {kind.value}") < first_port
    assert netlink.blocks[GuardKind.OPEN.blocks.ingress] == {SENDER_PRIO: SENDER_MARK}
    assert netlink.blocks.get(GuardKind.FILTERED.blocks.ingress, {}) == {}
    bound = {name: netlink.bound.get(netlink.by_name[name].index) for name in netlink.names()}
    open_, filtered = GuardKind.OPEN.blocks, GuardKind.FILTERED.blocks
    assert bound == {"bfbr7": None, "bfvx7": open_, "bf-a": filtered, "bf-bb": open_}


def test_turning_filtering_off_and_on_rebinds_the_port_and_a_failure_binds_it_back(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    _plug(dataplane, state, _vnic("a"))
    index = kernel.netlink.by_name["bf-a"].index
    kernel.events.clear()
    _plug(dataplane, state, _vnic("a", bypass_filtering=True))
    assert "guard bf-a bf-guard-open" in kernel.events
    assert kernel.netlink.bound[index] == GuardKind.OPEN.blocks
    kernel.events.clear()
    kernel.log.fail_on = "set port bf-a locked=True"
    with pytest.raises(DataplaneError, match="refused"):
        _plug(dataplane, state, _vnic("a"))
    assert kernel.events[:2] == ["nft", "guard bf-a bf-guard-filtered"]
    assert "guard bf-a bf-guard-open" in kernel.events, "bound back"
    assert kernel.netlink.bound[index] == GuardKind.OPEN.blocks
    kernel.log.fail_on = None
    _plug(dataplane, state, _vnic("a"))
    assert kernel.netlink.bound[index] == GuardKind.FILTERED.blocks


def test_a_reconcile_gives_the_blocks_exactly_their_programs_and_a_repair_what_is_missing(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    _plug(dataplane, state, _vnic("a"))
    netlink = kernel.netlink
    wanted = {block: dict(filters) for block, filters in netlink.blocks.items()}
    filtered = GuardKind.FILTERED.blocks.egress
    del netlink.blocks[filtered][GUARD_PRIO]
    kernel.events.clear()
    dataplane.repair(state, Scope(links=frozenset({"bf-a"})))
    assert kernel.events == [f"block {filtered:x} 2 {GUARD_FILTERED}"], "only what is missing"
    netlink.blocks[GuardKind.OPEN.blocks.ingress][7] = "someone's"
    netlink.delete_link(netlink.by_name[GuardKind.OPEN.anchor].index)
    dataplane.reconcile(state)
    assert netlink.blocks == wanted
    anchor = netlink.by_name[GuardKind.OPEN.anchor]
    assert netlink.bound[anchor.index] == GuardKind.OPEN.blocks, "a deleted anchor is made again"


def test_a_failed_plug_takes_back_every_step_in_reverse(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    vnic = _vnic("a")
    state.put_vnic(vnic)
    kernel.log.fail_on = "pin bf-a"
    with pytest.raises(DataplaneError, match=r"nic 'a'.*refused: pin bf-a"):
        dataplane.plug(vnic, None, state)
    undo = kernel.events[kernel.events.index("set port bf-a locked=True") + 1 :]
    assert undo == [
        "set port bf-a locked=False",
        "set bf-a up=False",
        "set bf-a master=-",
        "no guard bf-a",
        "delete bf-a",
        "unflood bfvx7 192.0.2.9",
        "set bfvx7 up=False",
        "set bfvx7 master=-",
        "no guard bfvx7",
        "delete bfg-filtered",
        "delete bfg-open",
        "delete bfvx7",
        "set bfbr7 up=False",
        "delete bfbr7",
        "nft",
        "nft",
    ], "the links in reverse (the guard's anchors too), then the rules, then the tables"
    assert kernel.netlink.names() == set()
    assert dataplane.conntrack_zones() == {}
    kernel.events.clear()
    dataplane.plug(vnic, None, state)
    assert kernel.netlink.names() == {"bfbr7", "bfvx7", "bf-a"}, "a retry starts afresh"


def test_an_unplug_takes_the_port_off_before_its_rules_and_the_vni_after(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    vnic = _vnic("a")
    _plug(dataplane, state, vnic)
    index = kernel.netlink.by_name["bf-a"].index
    kernel.events.clear()
    state.remove_vnic("a")
    dataplane.unplug(vnic, state)
    retired = retired_name(index)
    assert kernel.events == [
        "set bf-a up=False",
        f"rename bf-a {retired}",
        "nft",
        f"delete {retired}",
        "delete bfvx7",
        "delete bfbr7",
    ], "deletions only once the request has succeeded"
    assert kernel.netlink.names() == set()
    assert dataplane.conntrack_zones() == {}


def test_a_failed_unplug_gives_back_the_very_same_port(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    vnic = _vnic("a")
    _plug(dataplane, state, vnic)
    before = dict(kernel.netlink.by_name)
    kernel.events.clear()
    state.remove_vnic("a")
    kernel.nft.fail_next = True
    with pytest.raises(DataplaneError, match="nftables refused"):
        dataplane.unplug(vnic, state)
    retired = retired_name(before["bf-a"].index)
    assert kernel.events == [
        "set bf-a up=False",
        f"rename bf-a {retired}",
        f"rename {retired} bf-a",
        "set bf-a up=True",
    ], "nothing deleted"
    assert kernel.netlink.by_name == before, "same ifindex, MAC, bridge and state"


def test_moving_a_vnic_to_another_vni_keeps_its_tap(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    _plug(dataplane, state, _vnic("a", vni=7))
    index = kernel.netlink.by_name["bf-a"].index
    kernel.events.clear()
    _plug(dataplane, state, _vnic("a", vni=8))
    events = kernel.events
    assert "add tap bf-a" not in events
    assert kernel.netlink.by_name["bf-a"].index == index, "the guest stays attached"
    assert kernel.netlink.by_name["bf-a"].master == kernel.netlink.by_name["bfbr8"].index
    assert events[-2:] == ["delete bfvx7", "delete bfbr7"], "the old VNI goes after success"
    assert kernel.netlink.names() == {"bfbr8", "bfvx8", "bf-a"}


def test_a_link_of_that_name_that_is_not_butterflys_is_refused_and_left_alone(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    foreign = replace(UNDERLAY, index=99, name="bf-a", kind="tun", alias="someone else's")
    kernel.netlink.put(foreign)
    state = State()
    vnic = _vnic("a")
    state.put_vnic(vnic)
    with pytest.raises(DataplaneError, match="interface bf-a exists and is not butterfly's"):
        dataplane.plug(vnic, None, state)
    assert not [event for event in kernel.events if "bf-a" in event]
    assert kernel.netlink.by_name["bf-a"] == foreign
    assert kernel.netlink.names() == {"bf-a"}, "the VNI's devices made for it are gone again"


def test_a_vhost_user_vnic_without_a_backend_is_refused_before_any_change(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    vnic = make_vnic(Vnic(id="v", mac="52:54:00:00:00:09", vni=7))
    state.put_vnic(vnic)
    with pytest.raises(NotSupported, match="without a vhost-user backend"):
        dataplane.plug(vnic, None, state)
    assert kernel.events == []


def test_a_repair_of_one_port_looks_at_that_port_only(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    for vnic_id in ("a", "bb"):
        _plug(dataplane, state, _vnic(vnic_id))
    for name in ("bf-a", "bf-bb"):
        kernel.netlink.put(replace(kernel.netlink.by_name[name], up=False))
    kernel.events.clear()
    dataplane.repair(state, Scope(links=frozenset({tap_name("a")})))
    assert kernel.events == ["set bf-a up=True"]
    assert not kernel.netlink.by_name["bf-bb"].up, "outside the scope"


def test_a_repair_of_a_bridge_remakes_it_and_brings_back_its_ports(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    for vnic_id in ("a", "bb"):
        _plug(dataplane, state, _vnic(vnic_id))
    kernel.netlink.delete_link(kernel.netlink.by_name[bridge_name(7)].index)
    kernel.events.clear()
    dataplane.repair(state, Scope(links=frozenset({bridge_name(7)})))
    bridge = kernel.netlink.by_name[bridge_name(7)]
    assert kernel.events[0] == "add bridge bfbr7"
    assert "nft" not in kernel.events, "the tables were not in the scope"
    for name in (vxlan_name(7), "bf-a", "bf-bb"):
        assert kernel.netlink.by_name[name].master == bridge.index


def test_a_reconcile_renames_strays_back_and_deletes_what_no_vnic_wants(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    for vnic_id in ("a", "bb"):
        _plug(dataplane, state, _vnic(vnic_id))
    renamed = kernel.netlink.by_name["bf-a"]
    kernel.netlink.put(replace(renamed, name="eth9"))
    state.remove_vnic("bb")  # as if deleted while the daemon was down
    kernel.events.clear()
    dataplane.reconcile(state)
    assert "rename eth9 bf-a" in kernel.events
    assert kernel.netlink.by_name["bf-a"].index == renamed.index
    assert "bf-bb" not in kernel.netlink.names()
    assert kernel.netlink.names() == {"bfbr7", "bfvx7", "bf-a"}


def test_static_peers_are_synced_both_ways(dataplane: KernelDataplane, kernel: FakeKernel) -> None:
    state = State()
    _plug(dataplane, state, _vnic("a"))
    state.set_peers(7, ("192.0.2.20",))
    kernel.events.clear()
    dataplane.update_peers(7, state)
    assert kernel.events == ["flood bfvx7 192.0.2.20"]
    state.set_peers(7, ())
    kernel.events.clear()
    dataplane.update_peers(7, state)
    assert kernel.events == ["unflood bfvx7 192.0.2.20"]
    assert kernel.netlink.flooding[kernel.netlink.by_name["bfvx7"].index] == {PEER}


def test_close_closes_every_kernel_interface(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    dataplane.close()
    assert kernel.closed()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"evpn": True}, "underlay evpn: FRR floods every VNI"),
        ({"static_peers": ("2001:db8::9",)}, "vxlan-peers: peer 2001:db8::9 is not of"),
        ({"underlay_ip": "198.51.100.1"}, "ip 198.51.100.1: no interface holds this address"),
    ],
)
def test_a_refused_option_closes_the_kernel_it_was_given(
    kernel: FakeKernel, tmp_path: Path, options: dict[str, Any], error: str
) -> None:
    arguments: dict[str, Any] = {"underlay_ip": UNDERLAY_IP, "static_peers": (PEER,), **options}
    with pytest.raises(ConfigError, match=error):
        KernelDataplane(kernel=kernel.io(), socket_dir=str(tmp_path), **arguments)
    assert kernel.closed()


def test_sessions_move_through_the_zone_of_the_vnics_vni(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    vnic = _vnic("a", ips=("10.0.0.1",))
    session = Session(
        protocol=6,
        original=FlowTuple("10.0.0.1", "10.0.0.2", sport=40000, dport=22),
        reply=FlowTuple("10.0.0.2", "10.0.0.1", sport=22, dport=40000),
        status=6,
        timeout=300,
    )
    state.put_vnic(vnic)
    with pytest.raises(DataplaneError, match="nic 'a': vni 7 has no conntrack zone here"):
        dataplane.load_sessions(vnic, [session])
    dataplane.plug(vnic, None, state)
    zone = dataplane.conntrack_zones()[7]
    assert dataplane.load_sessions(vnic, [session]) == 1
    assert kernel.conntrack.zones == {zone: [session]}
    assert dataplane.sessions(vnic) == (session,)
    assert dataplane.sessions(replace(vnic, vni=8)) == (), "another VNI has no zone"


def test_with_evpn_a_repair_leaves_a_mac_frr_moved_to_another_host(
    kernel: FakeKernel, tmp_path: Path
) -> None:
    """A live migration's old host: FRR took the vnic's MAC to the VXLAN device;
    a repair does not pin it back (the hosts would take it from each other),
    once FRR withdrew it, it does."""
    dataplane = _dataplane(kernel, tmp_path, evpn=True, static_peers=())
    state = State()
    vnic = _vnic("a")
    _plug(dataplane, state, vnic)
    assert kernel.events[-1] == f"pin bf-a {vnic.mac}"
    netlink = kernel.netlink
    netlink.macs[netlink.by_name["bf-a"].index].pop(vnic.mac)
    netlink.frr_remote.add((netlink.by_name["bfbr7"].index, vnic.mac))
    kernel.events.clear()
    dataplane.repair(state, Scope(links=frozenset({"bfvx7"})))
    assert f"pin bf-a {vnic.mac}" not in kernel.events
    netlink.frr_remote.clear()
    dataplane.repair(state, Scope(links=frozenset({"bfvx7"})))
    assert f"pin bf-a {vnic.mac}" in kernel.events


@pytest.mark.needs("ebpf-fast-path")
@pytest.mark.parametrize("mode", [FastPathMode.AUTO, FastPathMode.EBPF])
def test_a_fast_path_loaded_after_serving_and_refused_leaves_the_bridge_path(
    kernel: FakeKernel, tmp_path: Path, mode: FastPathMode
) -> None:
    """The program is loaded by the first reconcile: until then status says it is
    loading; refused then, the ports carry no program and status says why
    (a problem of the reconcile only when ``ebpf`` was asked for)."""
    broken = tmp_path / "broken.o"
    broken.write_bytes(b"not an ELF object")
    pending, status = prepare(mode, broken)
    dataplane = _dataplane(kernel, tmp_path, fast_path=pending, fast_path_status=status)
    state = State()
    _plug(dataplane, state, _vnic("a"))
    assert f"fast path: {LOADING}" in dataplane.graph(state)
    if mode is FastPathMode.EBPF:
        with pytest.raises(DataplaneError, match=r"reconcile: fast path: off \(ebpf: fast path"):
            dataplane.reconcile(state)
    else:
        dataplane.reconcile(state)
    assert f"fast path: off ({mode.value}: fast path: opening {broken}" in dataplane.graph(state)
    assert FAST_PATH_FILTER not in {
        name for filters in kernel.netlink.blocks.values() for name in filters.values()
    }


def _elements(transaction: list[Any]) -> list[tuple[str, str]]:
    """(command, member) of each security group member a transaction adds or deletes."""
    found = []
    for command in transaction:
        for verb in ("add", "delete"):
            element = command.get(verb, {}).get("element")
            if element is not None and element["name"] in (
                member_set("web", 4),
                member_set("web", 6),
            ):
                found += [(verb, str(item)) for item in element["elem"]]
    return found


def test_a_member_change_sends_its_own_element_not_the_groups(
    dataplane: KernelDataplane, kernel: FakeKernel
) -> None:
    state = State()
    members = [f"10.9.0.{n}" for n in range(1, 51)]
    web = make_security_group("web", members=members, rules=[])
    state.put_sg(web)
    _plug(dataplane, state, _vnic("a", security_groups=("web",)))
    first = [e for t in kernel.nft.transactions for e in _elements(t)]
    assert {("add", m) for m in members} <= set(first), "the group's members are in its set"
    kernel.nft.transactions.clear()
    grown = web.with_member("10.9.1.1")
    state.put_sg(grown)
    dataplane.update_security_groups({"web": SgChange(web, grown)}, state)
    shrunk = grown.without_member("10.9.0.7")
    state.put_sg(shrunk)
    dataplane.update_security_groups({"web": SgChange(grown, shrunk)}, state)
    assert [_elements(t) for t in kernel.nft.transactions] == [
        [("add", "10.9.1.1")],
        [("delete", "10.9.0.7")],
    ]
