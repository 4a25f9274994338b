"""The SQLite store: round trips, order, transactions, and files it must refuse."""

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from butterfly.errors import StoreError
from butterfly.model import Cidr, Direction, Rule, SecurityGroup, State, Vnic, VnicType
from butterfly.store import SqliteStore


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "state.db")


@pytest.fixture
def store(path: str) -> Iterator[SqliteStore]:
    opened = SqliteStore(path)
    yield opened
    opened.close()


def reopen(store: SqliteStore, path: str) -> State:
    store.close()
    again = SqliteStore(path)
    try:
        return again.load()
    finally:
        again.close()


def snapshot(state: State) -> tuple[object, ...]:
    return (list(state.vnics()), list(state.sgs()), state.all_peers())


VNICS = [
    Vnic(id="a", mac="52:54:00:00:00:01", vni=1),
    Vnic(
        id="b",
        mac="52:54:00:AB:cd:02",
        vni=16777215,
        ips=("10.0.0.1", "2001:db8::1"),
        security_groups=("sg-2", "sg-1"),
        ip_anti_spoof=True,
        bypass_filtering=True,
        type=VnicType.TAP,
        packet_trace=False,
        packet_trace_path="/var/trace b.pcap",
    ),
    Vnic(
        id="c",
        mac="52:54:00:00:00:03",
        vni=0,
        type=VnicType.NETNS,
        netns="/proc/1/ns/net",
        packet_trace=True,
        max_connections=0,
        max_new_connections=300,
    ),
    Vnic(id="é/ü", mac="52:54:00:00:00:04", vni=5, sniff_target_nic_id="a"),
]
RULES = (
    Rule(Direction.INBOUND, 6, 22, 22, Cidr("10.0.0.0", 8)),
    Rule(Direction.OUTBOUND, -1, cidr=Cidr("2001:db8::8001", 8)),
    Rule(Direction.INBOUND, 17, 0, 65535, security_group="sg-2"),
    Rule(Direction.INBOUND, 1, security_group="missing"),
)
SGS = [
    SecurityGroup("sg-1", ("10.0.0.9", "10.0.0.1", "2001:db8::5"), RULES),
    SecurityGroup("sg-2"),
    SecurityGroup("sg-3", ("192.0.2.1",)),
]


def fill(store: SqliteStore) -> None:
    with store.transaction() as tx:
        for one in VNICS:
            tx.put_vnic(one)
        for sg in SGS:
            tx.put_sg(sg)
        tx.set_peers(7, ("192.0.2.9", "192.0.2.1"))
        tx.set_peers(3, ("2001:db8::7",))


def test_round_trip_of_everything(store: SqliteStore, path: str) -> None:
    fill(store)
    state = reopen(store, path)
    assert list(state.vnics()) == sorted(VNICS, key=lambda v: v.id)
    assert list(state.sgs()) == SGS
    assert state.all_peers() == {3: ("2001:db8::7",), 7: ("192.0.2.9", "192.0.2.1")}
    assert [v.id for v in state.vnics_using("sg-1")] == ["b"]
    assert [v.id for v in state.vnics_in(1)] == ["a"]


def test_empty_store_loads_an_empty_state(store: SqliteStore, path: str) -> None:
    assert snapshot(store.load()) == ([], [], {})
    assert snapshot(reopen(store, path)) == ([], [], {})


def test_order_of_members_and_rules_is_kept_across_changes(store: SqliteStore, path: str) -> None:
    with store.transaction() as tx:
        for member in ("10.0.0.3", "10.0.0.1", "10.0.0.2"):
            tx.add_member("s", member)
        for one in RULES:
            tx.add_rule("s", one)
    with store.transaction() as tx:
        tx.delete_member("s", "10.0.0.3")
        tx.add_member("s", "10.0.0.3")
        tx.add_member("s", "10.0.0.0")
        tx.delete_rule("s", RULES[0])
        tx.add_rule("s", RULES[0])
        tx.delete_rule("s", RULES[2])
    sg = reopen(store, path).sg("s")
    assert sg is not None
    assert sg.members == ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.0")
    assert sg.rules == (RULES[1], RULES[3], RULES[0])


def test_add_member_and_rule_create_the_sg(store: SqliteStore, path: str) -> None:
    with store.transaction() as tx:
        tx.add_member("m", "10.0.0.1")
        tx.add_rule("r", RULES[1])
    state = reopen(store, path)
    assert state.sg("m") == SecurityGroup("m", ("10.0.0.1",))
    assert state.sg("r") == SecurityGroup("r", (), (RULES[1],))


def test_put_sg_replaces_and_delete_cascades(store: SqliteStore, path: str) -> None:
    fill(store)
    with store.transaction() as tx:
        tx.put_sg(SecurityGroup("sg-1", ("10.9.9.9",)))
        tx.delete_sg("sg-3")
        tx.delete_sg("never-existed")
        tx.delete_vnic("a")
        tx.delete_vnic("never-existed")
    state = reopen(store, path)
    assert list(state.sgs()) == [SecurityGroup("sg-1", ("10.9.9.9",)), SecurityGroup("sg-2")]
    assert [v.id for v in state.vnics()] == ["b", "c", "é/ü"]
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM sg_member WHERE sg_id = 'sg-3'").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM sg_rule").fetchone() == (0,)
    finally:
        db.close()


def test_put_vnic_replaces(store: SqliteStore, path: str) -> None:
    fill(store)
    replacement = Vnic(id="b", mac="52:54:00:00:00:99", vni=9)
    with store.transaction() as tx:
        tx.put_vnic(replacement)
    assert reopen(store, path).vnic("b") == replacement


def test_a_vnics_caps_follow_it_and_go_with_it(store: SqliteStore, path: str) -> None:
    capped = Vnic(id="d", mac="52:54:00:00:00:05", vni=1, max_connections=10)
    with store.transaction() as tx:
        tx.put_vnic(capped)
    assert reopen(store, path).vnic("d") == capped
    store = SqliteStore(path)
    with store.transaction() as tx:
        tx.put_vnic(Vnic(id="d", mac="52:54:00:00:00:05", vni=1))
    assert reopen(store, path).vnic("d") == Vnic(id="d", mac="52:54:00:00:00:05", vni=1)
    store = SqliteStore(path)
    with store.transaction() as tx:
        tx.put_vnic(capped)
        tx.delete_vnic("d")
        tx.put_vnic(Vnic(id="d", mac="52:54:00:00:00:05", vni=1))
    assert reopen(store, path).vnic("d") == Vnic(id="d", mac="52:54:00:00:00:05", vni=1)


def test_a_schema_1_file_without_the_caps_table_gets_it(path: str) -> None:
    store = SqliteStore(path)
    store.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE vnic_limit")
    db.commit()
    db.close()
    store = SqliteStore(path)
    with store.transaction() as tx:
        tx.put_vnic(Vnic(id="d", mac="52:54:00:00:00:05", vni=1, max_new_connections=5))
    assert reopen(store, path).vnic("d") == Vnic(
        id="d", mac="52:54:00:00:00:05", vni=1, max_new_connections=5
    )


def test_set_peers_replaces_and_empties(store: SqliteStore, path: str) -> None:
    fill(store)
    with store.transaction() as tx:
        tx.set_peers(7, ("192.0.2.1",))
        tx.set_peers(3, ())
    assert reopen(store, path).all_peers() == {7: ("192.0.2.1",)}


def test_a_failed_transaction_leaves_nothing(store: SqliteStore, path: str) -> None:
    fill(store)
    before = snapshot(store.load())
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.put_vnic(Vnic(id="z", mac="52:54:00:00:00:09", vni=1))
        tx.delete_sg("sg-1")
        tx.add_member("sg-2", "10.0.0.1")
        raise RuntimeError("boom")
    assert snapshot(store.load()) == before
    assert snapshot(reopen(store, path)) == before


def test_a_committed_transaction_is_durable_without_close(path: str) -> None:
    """What kill -9 after a reply leaves: committed writes, read by another connection."""
    store = SqliteStore(path)
    try:
        fill(store)
        other = SqliteStore(path)
        try:
            assert snapshot(other.load()) == snapshot(store.load())
        finally:
            other.close()
    finally:
        store.close()


# files the store must refuse, and never replace


def digest(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def refuse(path: str, message: str) -> StoreError:
    before = digest(path)
    with pytest.raises(StoreError) as caught:
        store = SqliteStore(path)
        try:
            store.load()
        finally:
            store.close()
    assert str(caught.value).startswith(f"state file {path}: "), caught.value
    assert message in str(caught.value)
    assert digest(path) == before
    return caught.value


def test_non_sqlite_file(path: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write("not a database, somebody's notes\n" * 200)
    refuse(path, "file is not a database")


def test_corrupt_butterfly_file(store: SqliteStore, path: str) -> None:
    with store.transaction() as tx:
        for index in range(300):
            tx.put_vnic(Vnic(id=f"v{index}", mac="52:54:00:00:00:01", vni=index, ips=("10.0.0.1",)))
            tx.add_member("s", f"10.1.{index // 256}.{index % 256}")
    store.close()
    with open(path, "r+b") as file:
        data = bytearray(file.read())
        assert len(data) > 4 * 4096
        for page in range(1, len(data) // 4096):
            data[page * 4096 : page * 4096 + 8] = b"\xff" * 8
        file.seek(0)
        file.write(data)
    error = refuse(path, "malformed")
    assert "cannot be used" in str(error) or "corrupt" in str(error)


def test_truncated_butterfly_file(store: SqliteStore, path: str) -> None:
    fill(store)
    with store.transaction() as tx:
        for index in range(300):
            tx.add_member("big", f"10.2.{index // 256}.{index % 256}")
    store.close()
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)
    refuse(path, "malformed")


def test_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "invoices.db")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("INSERT INTO invoices VALUES (1, 9.5)")
    db.commit()
    db.close()
    refuse(path, "is an SQLite file but not butterfly's state")
    assert sorted(os.listdir(tmp_path)) == ["invoices.db"]  # no -wal/-shm left beside it
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        db.close()


def test_newer_schema_version_is_refused(store: SqliteStore, path: str) -> None:
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    refuse(path, "schema version 99 is not supported (this butterfly reads version 1)")


def test_unreadable_directory_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot be used"):
        SqliteStore(str(blocker / "state.db"))


def test_new_file_is_created_with_the_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "dir" / "state.db")
    store = SqliteStore(path)
    store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"vnic", "sg", "sg_rule", "sg_member", "vni_peer", "vnic_limit"}
    finally:
        db.close()
