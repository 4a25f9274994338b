"""The SQLite implementation of the store.

One file, WAL journal, ``synchronous=FULL``: a transaction that returned is
on disk, so a ``kill -9`` (or a power cut) right after a reply loses nothing
that was acknowledged. Lists keep their order with a ``seq`` column because
members and rules are listed in the order they were added. The file is never
silently replaced: anything unreadable raises :class:`StoreError` and the
daemon stops.
"""

import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from butterfly.errors import StoreError
from butterfly.model import Cidr, Direction, Rule, SecurityGroup, State, Vnic, VnicType

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE vnic (
    id TEXT PRIMARY KEY,
    mac TEXT NOT NULL,
    vni INTEGER NOT NULL,
    ips TEXT NOT NULL,
    security_groups TEXT NOT NULL,
    ip_anti_spoof INTEGER NOT NULL,
    bypass_filtering INTEGER NOT NULL,
    type INTEGER NOT NULL,
    netns TEXT NOT NULL,
    packet_trace INTEGER,
    packet_trace_path TEXT NOT NULL,
    sniff_target_nic_id TEXT NOT NULL
);
CREATE TABLE sg (id TEXT PRIMARY KEY);
CREATE TABLE sg_rule (
    sg_id TEXT NOT NULL REFERENCES sg(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    direction INTEGER NOT NULL,
    protocol INTEGER NOT NULL,
    port_start INTEGER,
    port_end INTEGER,
    cidr_address TEXT,
    cidr_mask INTEGER,
    source_sg TEXT,
    PRIMARY KEY (sg_id, seq)
);
CREATE TABLE sg_member (
    sg_id TEXT NOT NULL REFERENCES sg(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (sg_id, seq),
    UNIQUE (sg_id, address)
);
CREATE TABLE vni_peer (
    vni INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    peer TEXT NOT NULL,
    PRIMARY KEY (vni, seq)
);
"""

_LIMITS = """
CREATE TABLE IF NOT EXISTS vnic_limit (
    vnic_id TEXT PRIMARY KEY,
    max_connections INTEGER,
    max_new_connections INTEGER
)
"""
"""A vnic's own caps (none: the daemon's defaults). A table of its own, made
when missing, so a state file of schema 1 stays readable by earlier butterflys."""

_RULE_MATCH = (
    "sg_id = ? AND direction = ? AND protocol = ? AND port_start IS ? AND port_end IS ?"
    " AND cidr_address IS ? AND cidr_mask IS ? AND source_sg IS ?"
)


def _rule_columns(
    rule: Rule,
) -> tuple[int, int, int | None, int | None, str | None, int | None, str | None]:
    return (
        int(rule.direction),
        rule.protocol,
        rule.port_start,
        rule.port_end,
        rule.cidr.address if rule.cidr else None,
        rule.cidr.mask_size if rule.cidr else None,
        rule.security_group,
    )


class _Transaction:
    """The StoreTransaction of one open SQLite transaction."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def put_vnic(self, vnic: Vnic) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO vnic VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                vnic.id,
                vnic.mac,
                vnic.vni,
                json.dumps(vnic.ips),
                json.dumps(vnic.security_groups),
                vnic.ip_anti_spoof,
                vnic.bypass_filtering,
                int(vnic.type),
                vnic.netns,
                vnic.packet_trace,
                vnic.packet_trace_path,
                vnic.sniff_target_nic_id,
            ),
        )
        limits = (vnic.max_connections, vnic.max_new_connections)
        if limits == (None, None):
            self._db.execute("DELETE FROM vnic_limit WHERE vnic_id = ?", (vnic.id,))
        else:
            self._db.execute("INSERT OR REPLACE INTO vnic_limit VALUES (?,?,?)", (vnic.id, *limits))

    def delete_vnic(self, vnic_id: str) -> None:
        self._db.execute("DELETE FROM vnic WHERE id = ?", (vnic_id,))
        self._db.execute("DELETE FROM vnic_limit WHERE vnic_id = ?", (vnic_id,))

    def _ensure_sg(self, sg_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO sg VALUES (?)", (sg_id,))

    def put_sg(self, sg: SecurityGroup) -> None:
        self.delete_sg(sg.id)
        self._ensure_sg(sg.id)
        self._db.executemany(
            "INSERT INTO sg_member VALUES (?,?,?)",
            ((sg.id, seq, member) for seq, member in enumerate(sg.members)),
        )
        self._db.executemany(
            "INSERT INTO sg_rule VALUES (?,?,?,?,?,?,?,?,?)",
            ((sg.id, seq, *_rule_columns(rule)) for seq, rule in enumerate(sg.rules)),
        )

    def delete_sg(self, sg_id: str) -> None:
        self._db.execute("DELETE FROM sg WHERE id = ?", (sg_id,))

    def _next_seq(self, table: str, sg_id: str) -> int:
        row = self._db.execute(
            f"SELECT COALESCE(MAX(seq) + 1, 0) FROM {table} WHERE sg_id = ?", (sg_id,)
        ).fetchone()
        return int(row[0])

    def add_rule(self, sg_id: str, rule: Rule) -> None:
        self._ensure_sg(sg_id)
        self._db.execute(
            "INSERT INTO sg_rule VALUES (?,?,?,?,?,?,?,?,?)",
            (sg_id, self._next_seq("sg_rule", sg_id), *_rule_columns(rule)),
        )

    def delete_rule(self, sg_id: str, rule: Rule) -> None:
        self._db.execute(f"DELETE FROM sg_rule WHERE {_RULE_MATCH}", (sg_id, *_rule_columns(rule)))

    def add_member(self, sg_id: str, member: str) -> None:
        self._ensure_sg(sg_id)
        self._db.execute(
            "INSERT INTO sg_member VALUES (?,?,?)",
            (sg_id, self._next_seq("sg_member", sg_id), member),
        )

    def delete_member(self, sg_id: str, member: str) -> None:
        self._db.execute("DELETE FROM sg_member WHERE sg_id = ? AND address = ?", (sg_id, member))

    def set_peers(self, vni: int, peers: tuple[str, ...]) -> None:
        self._db.execute("DELETE FROM vni_peer WHERE vni = ?", (vni,))
        self._db.executemany(
            "INSERT INTO vni_peer VALUES (?,?,?)",
            ((vni, seq, peer) for seq, peer in enumerate(peers)),
        )


class SqliteStore:
    """The state file. Opening it checks it; a bad file is an error, not a reset."""

    def __init__(self, path: str) -> None:
        self._path = path
        try:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"state file {path}: cannot be used: {error}") from error
        try:
            # Checked before the first write (journal_mode = WAL rewrites the
            # header), so a file that is refused is left exactly as it was.
            self._check_and_migrate()
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
        except (sqlite3.Error, OSError) as error:
            self._db.close()
            raise StoreError(f"state file {path}: cannot be used: {error}") from error
        except BaseException:
            self._db.close()
            raise

    def _check_and_migrate(self) -> None:
        result = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise StoreError(f"state file {self._path}: corrupt: {result}")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StoreError(
                    f"state file {self._path}: is an SQLite file but not butterfly's state"
                )
            self._db.executescript(
                f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )
            log.info("created state file %s", self._path)
        elif version != SCHEMA_VERSION:
            raise StoreError(
                f"state file {self._path}: schema version {version} is not supported"
                f" (this butterfly reads version {SCHEMA_VERSION})"
            )
        self._db.execute(_LIMITS)

    def load(self) -> State:
        state = State()
        try:
            self._load_into(state)
        except (sqlite3.Error, ValueError, TypeError, KeyError) as error:
            raise StoreError(f"state file {self._path}: unreadable content: {error}") from error
        return state

    def _load_into(self, state: State) -> None:
        sgs: dict[str, tuple[list[str], list[Rule]]] = {}
        for (sg_id,) in self._db.execute("SELECT id FROM sg"):
            sgs[sg_id] = ([], [])
        for sg_id, address in self._db.execute(
            "SELECT sg_id, address FROM sg_member ORDER BY sg_id, seq"
        ):
            sgs[sg_id][0].append(address)
        for row in self._db.execute(
            "SELECT sg_id, direction, protocol, port_start, port_end, cidr_address, cidr_mask,"
            " source_sg FROM sg_rule ORDER BY sg_id, seq"
        ):
            sg_id, direction, protocol, port_start, port_end, address, mask, source = row
            cidr = Cidr(address, mask) if address is not None else None
            rule = Rule(Direction(direction), protocol, port_start, port_end, cidr, source)
            sgs[sg_id][1].append(rule)
        for sg_id, (members, rules) in sgs.items():
            state.put_sg(SecurityGroup(sg_id, tuple(members), tuple(rules)))
        limits = {
            row[0]: (row[1], row[2])
            for row in self._db.execute(
                "SELECT vnic_id, max_connections, max_new_connections FROM vnic_limit"
            )
        }
        for row in self._db.execute("SELECT * FROM vnic"):
            max_connections, max_new_connections = limits.get(row[0], (None, None))
            state.put_vnic(
                Vnic(
                    id=row[0],
                    mac=row[1],
                    vni=row[2],
                    ips=tuple(json.loads(row[3])),
                    security_groups=tuple(json.loads(row[4])),
                    ip_anti_spoof=bool(row[5]),
                    bypass_filtering=bool(row[6]),
                    type=VnicType(row[7]),
                    netns=row[8],
                    packet_trace=None if row[9] is None else bool(row[9]),
                    packet_trace_path=row[10],
                    sniff_target_nic_id=row[11],
                    max_connections=max_connections,
                    max_new_connections=max_new_connections,
                )
            )
        peers: dict[int, list[str]] = {}
        for vni, peer in self._db.execute("SELECT vni, peer FROM vni_peer ORDER BY vni, seq"):
            peers.setdefault(vni, []).append(peer)
        for vni, addresses in peers.items():
            state.set_peers(vni, tuple(addresses))

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StoreError(
                f"state file {self._path}: cannot start a transaction: {error}"
            ) from error
        try:
            yield _Transaction(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            self._db.execute("ROLLBACK")
            raise StoreError(f"state file {self._path}: cannot commit: {error}") from error

    def close(self) -> None:
        self._db.close()
