"""The outbox with more than one process: totals kept by triggers and read inside the
write transaction, a purge beside a live writer, UNIQUE ids, the schema version and
the migration from the schema before versioning, rule state in the same commit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.errors import OutboxError
from edge.model import Envelope, Lane
from edge.outbox import SCHEMA_VERSION, Outbox


def env(i: int, lane: Lane = Lane.TELEMETRY, size: int = 10) -> Envelope:
    kind = {Lane.ALERT: "overspeed", Lane.TRIP: "trip", Lane.TELEMETRY: "telemetry",
            Lane.HEALTH: "health"}[lane]
    return Envelope(id=f"id-{lane.name}-{i}", thing="car", type=kind, ts=i, seq=i,
                    topic=f"vehicles/car/{kind}", lane=lane, body={"pad": "x" * size})


def test_purge_from_another_process_does_not_make_the_daemon_evict_alerts(
        tmp_path: Path) -> None:
    """The issue's report: the daemon's outbox at its cap with telemetry, the telemetry
    lane purged by ``edge outbox purge`` (a second connection), then five alerts."""
    one = len(env(0, size=1000).to_bytes())
    daemon = Outbox(tmp_path / "o.db", max_bytes=one * 10)
    daemon.put([env(i, Lane.TELEMETRY, 1000) for i in range(10)])
    tool = Outbox(tmp_path / "o.db", recover=False)
    assert tool.purge([Lane.TELEMETRY]) == 10
    tool.close()
    daemon.put([env(i, Lane.ALERT, 1000) for i in range(5)])
    st = daemon.stats()
    assert "evicted_alert" not in st["counters"]
    assert st["lanes"]["alert"]["ready"] == 5 and st["pending"] == 5
    assert st["bytes"] == 5 * len(env(0, Lane.ALERT, 1000).to_bytes())
    assert st["counters"]["purged"] == 10
    assert daemon.integrity_ok()
    daemon.close()


def test_rows_purged_while_in_flight_settle_as_gone_not_delivered(tmp_path: Path) -> None:
    daemon = Outbox(tmp_path / "o.db")
    daemon.put([env(i) for i in range(4)] + [env(0, Lane.ALERT)])
    claimed = daemon.claim(10)
    tool = Outbox(tmp_path / "o.db", recover=False)
    tool.purge([Lane.TELEMETRY])
    tool.close()
    daemon.ack([r.seq for r in claimed])
    daemon.ack([r.seq for r in claimed])  # a second ack of the same rows counts nothing
    st = daemon.stats()
    assert st["counters"]["delivered"] == 1  # the alert; the telemetry was purged
    assert st["counters"]["purged"] == 4 and st["pending"] == 0
    assert daemon.integrity_ok()
    daemon.close()


def test_two_writers_keep_one_set_of_totals(tmp_path: Path) -> None:
    a = Outbox(tmp_path / "o.db")
    b = Outbox(tmp_path / "o.db", recover=False)
    a.put([env(i) for i in range(50)])
    b.put([env(i, Lane.HEALTH) for i in range(20)])
    a.put([env(i, Lane.ALERT) for i in range(3)])
    rows = b.claim(30)
    a.ack([r.seq for r in rows[:10]])
    b.release([r.seq for r in rows[10:]])
    for ob in (a, b):
        st = ob.stats()
        assert st["pending"] == 73 - 10
        assert ob.integrity_ok()
    a.close()
    b.close()


def test_a_re_put_of_the_same_envelope_is_ignored(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(1, Lane.ALERT), env(2)])
    ob.put([env(1, Lane.ALERT)])  # the writer retried a batch that did commit
    st = ob.stats()
    assert st["pending"] == 2 and st["counters"]["accepted"] == 2
    assert st["counters"]["duplicates_ignored"] == 1
    with sqlite3.connect(tmp_path / "o.db") as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO messages (id, lane, topic, payload, created)"
                   " VALUES ('id-ALERT-1', 0, 't', x'00', 0)")
    ob.close()


# the schema written by vehicle-edge before the outbox had a version (user_version 0)
V0_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT    NOT NULL,
    lane     INTEGER NOT NULL,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    created  REAL    NOT NULL,
    state    INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (state, lane, seq);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lanes (
    lane  INTEGER PRIMARY KEY,
    rows  INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
"""


def _v0_database(path: Path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V0_SCHEMA)
    rows = [(f"id-{i}", 2, "vehicles/car/telemetry", b'{"n":%d}' % i, 0.0, 0)
            for i in range(10)]
    rows += [("id-3", 2, "vehicles/car/telemetry", b'{"n":3}', 0.0, 0)]  # a re-put
    rows += [("alert-1", 0, "vehicles/car/events/overspeed", b'{"a":1}', 0.0, 1)]
    db.executemany("INSERT INTO messages (id, lane, topic, payload, created, state)"
                   " VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO counters VALUES ('accepted', 12), ('evicted_health', 2)")
    # the per-process totals of the old code had drifted (the purge report)
    db.executemany("INSERT INTO lanes VALUES (?, ?, ?)",
                   [(0, 5, 999), (1, 0, 0), (2, 100, 99999), (3, 0, 0)])
    db.close()


def test_a_database_from_before_versioning_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    _v0_database(path)
    ob = Outbox(path)
    assert ob.migrated_from == 0
    assert ob.recovered == 1  # the alert left in flight
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    st = ob.stats()
    assert st["lanes"]["telemetry"]["ready"] == 10 and st["lanes"]["alert"]["ready"] == 1
    assert st["counters"]["deduplicated"] == 1
    assert st["counters"]["evicted_health"] == 2  # old counters kept
    assert ob.integrity_ok()  # totals recounted
    ob.put([env(1, Lane.ALERT)])
    ob.put([Envelope(id="id-3", thing="car", type="telemetry", ts=0, seq=0,
                     topic="vehicles/car/telemetry", lane=Lane.TELEMETRY, body={})])
    assert ob.stats()["pending"] == 12
    assert [r.id for r in ob.claim(2)] == ["alert-1", "id-ALERT-1"]
    ob.close()
    again = Outbox(path)
    assert again.migrated_from is None  # once
    assert again.integrity_ok()
    again.close()


def test_a_database_from_a_newer_version_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    Outbox(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(OutboxError, match="newer version"):
        Outbox(path)


def test_state_documents_commit_with_their_envelopes(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(1, Lane.TRIP)], state={"rules": {"trip": {"start": 1.5}}})
    ob.put([], state={"rules": {"trip": None}, "other": [1, 2]})
    ob.close()
    again = Outbox(tmp_path / "o.db")
    assert again.load_state() == {"rules": {"trip": None}, "other": [1, 2]}
    again.close()


def test_every_kind_of_drop_is_logged_once_per_lane(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    one = len(env(0, size=1000).to_bytes())
    t = [1_800_000_000.0]
    ob = Outbox(tmp_path / "o.db", max_bytes=one * 4, ttl_s={Lane.HEALTH: 60.0},
                clock=lambda: t[0])
    with capture_logs() as logs:
        for i in range(10):
            ob.put([env(i, Lane.TELEMETRY, 1000)])
        ob.put([env(0, Lane.HEALTH)])
        t[0] += 120
        ob.expire()
        ob.expire()
    warned = [(e["event"], e.get("lane")) for e in logs if e["log_level"] == "warning"]
    assert warned == [("outbox: oldest rows evicted to make room", "telemetry"),
                      ("outbox: rows past their lane's TTL dropped", "health")]
    st = ob.stats()["counters"]
    assert st["evicted_telemetry"] == 7 and st["expired_health"] == 1  # 6, then 1 for health
    ob.close()
