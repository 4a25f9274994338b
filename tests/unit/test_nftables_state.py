"""What a request changes in butterfly's nftables tables, and how it is undone (no kernel).

An in-memory nft stands for libnftables: it records each transaction, so
these tests pin down what is sent, in which order, and what a rollback
sends back; the functional tests prove the same tables on a real kernel.
"""

from collections.abc import Sequence
from typing import Any

import pytest

from butterfly.dataplane.journal import best_effort, journal, step
from butterfly.dataplane.naming import TABLE, bridge_name, tap_name
from butterfly.dataplane.nft import Json
from butterfly.dataplane.nftables_state import NftablesState, allocate, set_allocation
from butterfly.dataplane.ruleset import BOOTSTRAP, MAX_ID, NO_LIMITS
from butterfly.dataplane.settings import KernelSettings
from butterfly.dataplane.underlay import Underlay
from butterfly.errors import DataplaneError
from butterfly.model import State, Vnic, VnicType, make_vnic


class MemoryNftables:
    """libnftables as the data plane uses it, without a kernel: no tables at
    first, every transaction recorded, an optional failure on the next one."""

    def __init__(self) -> None:
        self.transactions: list[list[Json]] = []
        self.texts: list[str] = []
        self.fail_next = False
        self.reads: list[Json] = []

    def apply(self, commands: Sequence[Json]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise DataplaneError("nftables refused the change")
        self.transactions.append(list(commands))

    def run_text(self, commands: str) -> None:
        self.texts.append(commands)

    def list(self, what: Json) -> list[Json] | None:
        self.reads.append(what)
        return None


def _settings(**changes: Any) -> KernelSettings:
    options: dict[str, Any] = {
        "underlay": Underlay(ifname="eth0", index=2, address="192.0.2.1", mtu=1500),
        "socket_dir": "/tmp/butterfly",
        "vnic_mtu": 1450,
        "vxlan_mtu": 1450,
        "vxlan_port": 4789,
        "offload": True,
        "trace_default": False,
        "static_peers": (),
        "multicast": True,
        "evpn": False,
        "limits": NO_LIMITS,
        "defer_deletes": False,
        "vhost": False,
    }
    options.update(changes)
    return KernelSettings(**options)


def _vnic(vnic_id: str, vni: int = 7, **fields: Any) -> Vnic:
    mac = f"52:54:00:00:00:{len(vnic_id):02x}"
    return make_vnic(Vnic(id=vnic_id, mac=mac, vni=vni, type=VnicType.TAP, **fields))


def _tables() -> tuple[NftablesState, MemoryNftables]:
    nft = MemoryNftables()
    tables = NftablesState(nft, _settings())
    tables.load()
    return tables, nft


def _mentions(transaction: list[Json], text: str) -> bool:
    return text in repr(transaction)


def test_allocate_takes_the_smallest_free_id() -> None:
    assert allocate([], "vnic") == 1
    assert allocate([1, 2, 4], "vnic") == 3


def test_allocate_names_what_ran_out() -> None:
    with pytest.raises(DataplaneError, match="no conntrack zone id left"):
        allocate(range(1, MAX_ID + 1), "conntrack zone")


def test_an_allocation_is_given_back_when_its_request_rolls_back() -> None:
    table = {"a": 1}
    with pytest.raises(DataplaneError), journal("nic 'b'", None) as j:
        set_allocation(j, table, "b", 2)
        set_allocation(j, table, "a", None)
        assert table == {"b": 2}
        raise DataplaneError("a later step failed")
    assert table == {"a": 1}


def test_undo_runs_in_reverse_order_and_only_for_steps_that_succeeded() -> None:
    done: list[str] = []

    def fail() -> None:
        raise DataplaneError("third step failed")

    failed = pytest.raises(DataplaneError, match=r"^nic 'x': third step failed$")
    with failed, journal("nic 'x'", None) as j:
        step(j, "first", lambda: done.append("do 1"), lambda: done.append("undo 1"))
        step(j, "second", lambda: done.append("do 2"), lambda: done.append("undo 2"))
        step(j, "third", fail, lambda: done.append("undo 3"))
    assert done == ["do 1", "do 2", "undo 2", "undo 1"]


def test_without_a_journal_a_step_is_a_plain_call() -> None:
    done: list[str] = []
    step(None, "repair", lambda: done.append("do"), lambda: done.append("undo"))
    assert done == ["do"]


def test_best_effort_collects_the_problem_and_goes_on() -> None:
    problems: list[str] = []

    def broken() -> None:
        raise DataplaneError("interface bf-a is missing")

    best_effort(problems, "nic 'a'", broken)
    best_effort(problems, "nic 'b'", lambda: None)
    assert problems == ["nic 'a': interface bf-a is missing"]


def test_the_first_request_bootstraps_then_sends_one_transaction() -> None:
    tables, nft = _tables()
    state = State()
    state.put_vnic(_vnic("a"))
    with journal("nic 'a'", None) as j:
        tables.commit(j, state, vnics=[(None, "a")], vnis={7})
    assert nft.texts == [BOOTSTRAP]
    assert len(nft.transactions) == 1
    assert _mentions(nft.transactions[0], tap_name("a"))
    assert tables.zones == {7: 1}


def test_a_request_sends_only_the_objects_it_touches() -> None:
    tables, nft = _tables()
    state = State()
    state.put_vnic(_vnic("a"))
    with journal("nic 'a'", None) as j:
        tables.commit(j, state, vnics=[(None, "a")], vnis={7})
    state.put_vnic(_vnic("bb"))
    with journal("nic 'bb'", None) as j:
        tables.commit(j, state, vnics=[(None, "bb")], vnis={7})
    second = nft.transactions[1]
    assert _mentions(second, tap_name("bb"))
    assert not _mentions(second, tap_name("a"))
    assert tables.zones == {7: 1}, "the VNI keeps its zone"


def test_nothing_changed_sends_nothing() -> None:
    tables, nft = _tables()
    state = State()
    state.put_vnic(_vnic("a"))
    for _ in range(2):
        with journal("nic 'a'", None) as j:
            tables.commit(j, state, vnics=[(None, "a")], vnis={7})
    assert len(nft.transactions) == 1


def test_a_rollback_sends_the_reverse_and_restores_mirror_and_ids() -> None:
    tables, nft = _tables()
    state = State()
    state.put_vnic(_vnic("a"))
    failed = pytest.raises(DataplaneError, match="nic 'a': the port could not be made")
    with failed, journal("nic 'a'", None) as j:
        tables.commit(j, state, vnics=[(None, "a")], vnis={7})
        assert tables.zones == {7: 1}
        raise DataplaneError("the port could not be made")
    # Undone in reverse: the request's transaction, then the bootstrap (its tables).
    forward, reverse, unbootstrap = nft.transactions
    assert _mentions(forward, tap_name("a"))
    assert all("delete" in command for command in reverse if _mentions([command], "bf-a"))
    assert unbootstrap == [
        {"delete": {"table": {"family": family, "name": TABLE}}} for family in ("bridge", "inet")
    ]
    assert tables.zones == {}
    # The mirror is as before: the same request sends the same again.
    with journal("nic 'a'", None) as j:
        tables.commit(j, state, vnics=[(None, "a")], vnis={7})
    assert nft.texts == [BOOTSTRAP, BOOTSTRAP]
    assert nft.transactions[3] == forward


def test_a_refused_transaction_changes_neither_mirror_nor_ids() -> None:
    tables, nft = _tables()
    state = State()
    state.put_vnic(_vnic("a"))
    nft.fail_next = True
    with pytest.raises(DataplaneError, match="refused"), journal("nic 'a'", None) as j:
        tables.commit(j, state, vnics=[(None, "a")], vnis={7})
    assert tables.zones == {}
    assert nft.transactions == [
        [{"delete": {"table": {"family": family, "name": TABLE}}} for family in ("bridge", "inet")]
    ], "only the bootstrap's undo"
    with journal("nic 'a'", None) as j:
        tables.commit(j, state, vnics=[(None, "a")], vnis={7})
    assert _mentions(nft.transactions[1], tap_name("a"))


def test_removing_the_last_vnic_of_a_vni_frees_its_zone() -> None:
    tables, nft = _tables()
    state = State()
    vnic = _vnic("a")
    state.put_vnic(vnic)
    with journal("nic 'a'", None) as j:
        tables.commit(j, state, vnics=[(None, "a")], vnis={7})
    state.remove_vnic("a")
    with journal("nic 'a'", None) as j:
        tables.commit(j, state, vnics=[(vnic, "a")], vnis={7})
    assert tables.zones == {}
    assert _mentions(nft.transactions[1], bridge_name(7))


def test_a_vnic_without_a_port_has_no_objects() -> None:
    tables, nft = _tables()
    state = State()
    vhost = make_vnic(Vnic(id="v", mac="52:54:00:00:00:09", vni=7))
    state.put_vnic(vhost)
    with journal("nic 'v'", None) as j:
        tables.commit(j, state, vnics=[(None, "v")], vnis={7})
    assert tables.zones == {}
    assert not any(_mentions(t, tap_name("v")) for t in nft.transactions)


def test_the_tables_are_read_once() -> None:
    nft = MemoryNftables()
    tables = NftablesState(nft, _settings())
    tables.load()
    tables.load()
    assert [read["table"]["name"] for read in nft.reads] == [TABLE, TABLE], "one per family"
