"""The outbox's SQLite schema: tables, row states, migrations, the claim query.

Schema version in ``PRAGMA user_version`` (``SCHEMA_VERSION``); an older database is
migrated in one transaction on open (version 0, before versioning: duplicate ids are
folded, the UNIQUE index, the triggers and the ``state`` table are added, the lane
totals recounted). A newer one is refused with a clear error. Row and byte counts per
lane live in the ``lanes`` table, kept by triggers on ``messages`` (every writer, in
any process, keeps them right).
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edge.errors import OutboxError
from edge.model import Lane

SCHEMA_VERSION = 1


class State(enum.IntEnum):
    """A row's state (the ``messages.state`` column)."""

    READY = 0  # waits to be claimed
    INFLIGHT = 1  # claimed: published, waiting for its PUBACK
    HELD = 2  # sealed with a key this process does not have: kept, not offered again


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    id: str
    lane: Lane
    topic: str
    payload: bytes
    attempts: int


# version 0: the schema before versioning (kept so a fresh database and a migrated one
# end up the same)
_V0 = [
    """CREATE TABLE IF NOT EXISTS messages (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT    NOT NULL,
    lane     INTEGER NOT NULL,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    created  REAL    NOT NULL,
    state    INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS messages_ready ON messages (state, lane, seq)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS lanes (
    lane  INTEGER PRIMARY KEY,
    rows  INTEGER NOT NULL,
    bytes INTEGER NOT NULL
)""",
]

# version 1: UNIQUE id, totals kept by triggers, rule state
_V1 = [
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_id ON messages (id)",
    """CREATE TABLE IF NOT EXISTS state (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    updated REAL NOT NULL
)""",
    """CREATE TRIGGER IF NOT EXISTS lanes_insert AFTER INSERT ON messages BEGIN
    UPDATE lanes SET rows = rows + 1, bytes = bytes + LENGTH(NEW.payload)
    WHERE lane = NEW.lane;
END""",
    """CREATE TRIGGER IF NOT EXISTS lanes_delete AFTER DELETE ON messages BEGIN
    UPDATE lanes SET rows = rows - 1, bytes = bytes - LENGTH(OLD.payload)
    WHERE lane = OLD.lane;
END""",
]

CLAIM_SQL = (
    "UPDATE messages SET state = ?, attempts = attempts + 1"
    " WHERE seq IN (SELECT seq FROM messages WHERE state = ?{lane_filter}"
    " ORDER BY lane, seq LIMIT ?)"
    " RETURNING seq, id, lane, topic, payload, attempts"
)


def open_schema(db: sqlite3.Connection, path: Path, recover: bool) -> tuple[int, int | None]:
    """Create or migrate the schema in one transaction; with ``recover`` every row not
    ready (left in flight or held by a process that died) is ready again. Returns
    (rows recovered, the version migrated from or None). The connection is left in WAL
    mode with ``synchronous=FULL``."""
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    new = pages == 0
    if new:
        # a new database: freed pages can go back to the file system
        # (incremental_vacuum under disk pressure); its schema is written straight
        # into the file (rollback journal) before WAL mode, so a small disk does not
        # need room for the schema twice (WAL and database) to start
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    else:
        db.execute("PRAGMA journal_mode=WAL")
    # a 1 MiB page cache (SQLite's default is 2 MiB): the queue is read in index
    # order, a big cache buys nothing on a gateway that counts megabytes
    db.execute("PRAGMA cache_size=-1024")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("BEGIN IMMEDIATE")
    recovered, migrated_from = 0, None
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"outbox {path} has schema version {version}, this edge knows"
                f" {SCHEMA_VERSION}: written by a newer version")
        if version < SCHEMA_VERSION:
            _migrate(db, version)
            migrated_from = version
        if recover:
            cur = db.execute("UPDATE messages SET state = ? WHERE state != ?",
                             (int(State.READY), int(State.READY)))
            recovered = cur.rowcount
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if new:
        db.execute("PRAGMA journal_mode=WAL")
    return recovered, migrated_from


def _migrate(db: sqlite3.Connection, version: int) -> None:
    for stmt in _V0:
        db.execute(stmt)
    if version < 1:
        # ids were not unique before: keep the first of each, count the rest
        cur = db.execute("DELETE FROM messages WHERE seq NOT IN"
                         " (SELECT MIN(seq) FROM messages GROUP BY id)")
        if cur.rowcount > 0:
            bump(db, "deduplicated", cur.rowcount)
        for stmt in _V1:
            db.execute(stmt)
        # totals from a full count once: from now on the triggers keep them
        db.execute("DELETE FROM lanes")
        counted = count_lanes(db)
        db.executemany(
            "INSERT INTO lanes (lane, rows, bytes) VALUES (?, ?, ?)",
            [(int(lane), *counted.get(lane, (0, 0))) for lane in Lane],
        )
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def bump(db: sqlite3.Connection, name: str, n: int) -> None:
    """Add ``n`` to the persistent counter ``name`` (inside the caller's transaction)."""
    if n == 0:
        return
    db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?)"
        " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        (name, n),
    )


def lane_totals(db: sqlite3.Connection) -> dict[Lane, tuple[int, int]]:
    """(rows, bytes) per lane as the triggers keep them (cheap)."""
    return {Lane(lane): (int(n), int(b)) for lane, n, b in db.execute(
        "SELECT lane, rows, bytes FROM lanes")}


def count_lanes(db: sqlite3.Connection) -> dict[Lane, tuple[int, int]]:
    """(rows, bytes) per lane from a full count (a scan of the backlog)."""
    return {Lane(lane): (int(n), int(b)) for lane, n, b in db.execute(
        "SELECT lane, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0)"
        " FROM messages GROUP BY lane")}


def merged(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items() if v}
