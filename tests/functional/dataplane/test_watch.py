"""The kernel watch, in a test host's namespace: what another program changes is
reported, one line each; what the data plane itself changes (a request, a repair)
is not, or drift repair would chase its own echo forever."""

import functools
import operator
from collections.abc import Callable, Iterator

import pytest

from butterfly.dataplane.guard import ANCHORS, GUARD_PRIO, GuardKind
from butterfly.dataplane.naming import TABLE
from butterfly.dataplane.watch import Change, KernelWatch, Scope
from butterfly.model import State
from butterfly_lab.lab import LabError

from .conftest import Dataplane, Host, Lab, netns_vnic, open_sg, plug

pytestmark = pytest.mark.root

MAC = "52:54:00:00:00:01"


Watched = tuple[Host, Dataplane, State, KernelWatch]


@pytest.fixture
def watched(lab: Lab) -> Iterator[Watched]:
    """A filtered NETNS vnic "a" in VNI 42, and a watch that has seen it made."""
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    open_sg(dataplane, state)
    guest = lab.guest()
    plug(dataplane, state, netns_vnic("a", guest, MAC, ("10.0.0.1",), security_groups=("open",)))
    watch: KernelWatch = dataplane.watch()
    try:
        own(dataplane, watch)
        yield host, dataplane, state, watch
    finally:
        watch.close()


def own(dataplane: Dataplane, watch: KernelWatch) -> list[str]:
    """Drain as the daemon does after its own work."""
    return lines(watch.drain(dataplane.take_touched()))


def lines(changes: list[Change]) -> list[str]:
    return [change.what for change in changes]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("ip link set bf-a mtu 1300", ["bf-a: mtu 1450 -> 1300"]),
        ("ip link set bf-a down", ["bf-a: down"]),
        ("ip link set bf-a nomaster", ["bf-a: master bfbr42 -> none"]),
        ("bridge link set dev bf-a learning on", ["bf-a: learning on"]),
        ("bridge link set dev bf-a locked off", ["bf-a: locking off"]),
        (f"bridge fdb del {MAC} dev bf-a master", [f"bf-a: static entry {MAC} removed"]),
        ("tc qdisc del dev bf-a clsact", ["bf-a: qdisc deleted"]),
        ("ip link del bfvx42", ["bfvx42: deleted"]),
        ("ip link del bfg-filtered", ["bfg-filtered: deleted"]),
    ],
)
def test_a_foreign_change_is_one_line(watched: Watched, command: str, expected: list[str]) -> None:
    host, dataplane, state, watch = watched
    host.exec("sh", "-c", command)
    changes = watch.drain()
    found = lines(changes)
    for line in expected:
        assert line in found
    name = expected[0].split(":")[0]
    assert all(name in change.scope.links for change in changes if change.what in expected)
    dataplane.repair(state, functools.reduce(operator.or_, (c.scope for c in changes)))
    assert own(dataplane, watch) == [], "the repair's own echo is not drift"
    host.exec("sh", "-c", command)
    assert set(expected) <= set(lines(watch.drain())), "the repaired object is still watched"


def test_a_change_to_the_guards_shared_blocks_is_seen_and_repaired(watched: Watched) -> None:
    """A port's guard lives in a tc block shared by every port of its kind: a
    filter removed from the block is drift of them all (the kernel refuses to
    remove it through a port), and the repair puts the program back."""
    host, dataplane, state, watch = watched
    block = GuardKind.FILTERED.blocks.egress

    def guarded() -> bool:
        shown = host.exec("tc", "filter", "show", "dev", "bf-a", "egress")
        return GuardKind.FILTERED.value in shown

    assert guarded()
    with pytest.raises(LabError, match="shared"):
        host.exec("tc", "filter", "del", "dev", "bf-a", "egress")
    host.exec("tc", "filter", "del", "block", str(block), "pref", str(GUARD_PRIO))
    assert not guarded()
    changes = watch.drain()
    assert lines(changes) == [f"tc block {block}: tc filter deleted"]
    assert changes[0].kind == "port_guard" and changes[0].scope.links == ANCHORS
    dataplane.repair(state, changes[0].scope)
    assert own(dataplane, watch) == [], "the repair's own echo is not drift"
    assert guarded()


def test_a_rename_and_a_deletion_name_the_link(watched: Watched) -> None:
    host, dataplane, state, watch = watched
    host.exec("sh", "-c", "ip link set bf-a down && ip link set bf-a name stray")
    changes = watch.drain()
    assert lines(changes) == ["bf-a: down", "bf-a: renamed to stray"]
    assert changes[1].scope.links == {"bf-a", "stray"}
    dataplane.repair(state, changes[0].scope | changes[1].scope)
    assert own(dataplane, watch) == []
    assert host.ip("-o", "link", "show", "bf-a").strip(), "renamed back"
    host.exec("ip", "link", "del", "bf-a")
    assert "bf-a: deleted" in lines(watch.drain())


def test_nftables_changes_name_the_program_unless_it_is_us(watched: Watched) -> None:
    host, dataplane, state, watch = watched
    host.exec("nft", "delete", "table", "inet", TABLE)
    (change,) = watch.drain()
    assert change.what.startswith(f"nftables: delete table inet {TABLE}")
    assert "by nft (pid " in change.what and change.scope == Scope(tables=True)
    dataplane.repair(state, change.scope)
    assert own(dataplane, watch) == []
    host.exec("nft", "add", "table", "inet", "someone_else")
    assert lines(watch.drain()) == [], "other programs' tables are theirs"


def test_requests_are_not_drift(lab: Lab, watched: Watched) -> None:
    _, dataplane, state, watch = watched
    changes: list[Callable[[], object]] = [
        lambda: plug(
            dataplane, state, netns_vnic("b", lab.guest(), "52:54:00:00:00:02", ("10.0.0.2",))
        ),
        lambda: dataplane.unplug(state.remove_vnic("b"), state),
    ]
    for change in changes:
        change()
        assert own(dataplane, watch) == []


def test_the_sniffing_table_and_the_drop_counters_are_butterflys(watched: Watched) -> None:
    host, dataplane, state, watch = watched
    host.exec("nft", f"add table netdev {TABLE}; delete table netdev {TABLE}")
    (change,) = watch.drain()
    assert f"netdev {TABLE}" in change.what and change.scope == Scope(tables=True)
    host.exec("nft", f"flush table inet {TABLE}; delete counter inet {TABLE} drop_sg_in")
    (change,) = watch.drain()
    assert f"delete counter inet {TABLE} drop_sg_in" in change.what
    dataplane.repair(state, change.scope)
    assert own(dataplane, watch) == []
    assert "drop_sg_in" in host.exec("nft", "list", "counters", "table", "inet", TABLE)


def test_entries_another_program_learned_are_not_drift(watched: Watched) -> None:
    """FRR's zebra installs remote MACs as extern_learn entries on a VXLAN
    device: theirs, never repaired (nor counted as drift)."""
    host, _, _, watch = watched
    mac = "52:54:00:00:00:99"
    host.exec("bridge", "fdb", "add", mac, "dev", "bfvx42", "master", "static", "extern_learn")
    host.exec("bridge", "fdb", "del", mac, "dev", "bfvx42", "master")
    assert lines(watch.drain()) == []
    host.exec("bridge", "fdb", "add", mac, "dev", "bfvx42", "master", "static")
    assert lines(watch.drain()) == [f"bfvx42: static entry {mac} added"], "positive control"


def test_a_watch_primed_by_the_reconcile_leaves_earlier_changes_to_it(lab: Lab) -> None:
    """The daemon's watch skips its own dump of every link: the start-up
    reconcile's dump primes it. A change before that is the reconcile's to
    repair, not drift; one after it is drift again."""
    host = lab.host()
    dataplane = host.dataplane()
    state = State()
    open_sg(dataplane, state)
    guest = lab.guest()
    plug(dataplane, state, netns_vnic("a", guest, MAC, ("10.0.0.1",), security_groups=("open",)))
    watch = dataplane.watch(primed_by_reconcile=True)
    try:
        host.exec("ip", "link", "set", "bf-a", "mtu", "1300")
        assert watch.drain() == []
        dataplane.reconcile(state)
        assert "1450" in host.ip("-o", "link", "show", "bf-a"), "the reconcile repaired it"
        assert own(dataplane, watch) == []
        host.exec("ip", "link", "set", "bf-a", "mtu", "1300")
        assert lines(watch.drain()) == ["bf-a: mtu 1450 -> 1300"]
    finally:
        watch.close()
