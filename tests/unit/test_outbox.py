from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.model import Envelope, Lane
from edge.outbox import Outbox


def env(i: int, lane: Lane = Lane.TELEMETRY, size: int = 10) -> Envelope:
    kind = {Lane.ALERT: "overspeed", Lane.TRIP: "trip", Lane.TELEMETRY: "telemetry",
            Lane.HEALTH: "health"}[lane]
    return Envelope(id=f"id-{lane.name}-{i}", thing="car", type=kind, ts=i, seq=i,
                    topic=f"vehicles/car/{kind}", lane=lane, body={"pad": "x" * size})


def test_alerts_drain_before_telemetry_fifo_within_a_lane(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(1), env(2), env(3, Lane.HEALTH)])
    ob.put([env(4, Lane.ALERT), env(5, Lane.TRIP), env(6, Lane.ALERT)])
    ids = [r.id for r in ob.claim(10)]
    assert ids == ["id-ALERT-4", "id-ALERT-6", "id-TRIP-5", "id-TELEMETRY-1",
                   "id-TELEMETRY-2", "id-HEALTH-3"]
    ob.close()


def test_rows_leave_only_when_acked_and_release_keeps_their_place(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(i) for i in range(5)])
    first = ob.claim(2)
    assert [r.id for r in ob.claim(10)] == [f"id-TELEMETRY-{i}" for i in (2, 3, 4)]
    ob.release([r.seq for r in first])
    ob.ack([first[0].seq])
    again = ob.claim(10)
    assert [r.id for r in again] == ["id-TELEMETRY-1"]
    assert again[0].attempts == 2
    st = ob.stats()
    assert st["pending"] == 4 and st["counters"]["delivered"] == 1
    ob.close()


def test_inflight_rows_come_back_after_a_crash(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(i, Lane.ALERT) for i in range(3)])
    assert len(ob.claim(3)) == 3
    # no close(): the process died with rows in flight
    del ob
    ob2 = Outbox(tmp_path / "o.db")
    assert ob2.recovered == 3
    assert [r.id for r in ob2.claim(10)] == [f"id-ALERT-{i}" for i in range(3)]
    ob2.close()


def test_cap_evicts_telemetry_then_health_then_trips_alerts_last(tmp_path: Path) -> None:
    one = len(env(0, size=1000).to_bytes())
    ob = Outbox(tmp_path / "o.db", max_bytes=one * 10)
    ob.put([env(i, Lane.ALERT, 1000) for i in range(3)] + [env(0, Lane.TRIP, 1000)])
    ob.put([env(i, Lane.HEALTH, 1000) for i in range(3)])
    ob.put([env(i, Lane.TELEMETRY, 1000) for i in range(3)])
    ob.put([env(i, Lane.TELEMETRY, 1000) for i in range(10, 14)])
    st = ob.stats()
    assert st["bytes"] <= one * 10
    assert st["lanes"]["alert"]["ready"] == 3 and st["lanes"]["health"]["ready"] == 3
    assert st["counters"]["evicted_telemetry"] == 4
    assert "evicted_health" not in st["counters"]
    # the oldest telemetry went first
    assert [r.id for r in ob.iter_rows([Lane.TELEMETRY])] == [
        f"id-TELEMETRY-{i}" for i in (11, 12, 13)]
    # then health, oldest first, once no telemetry is left; then the trip
    ob.put([env(i, Lane.ALERT, 1000) for i in range(3, 7)])
    st = ob.stats()
    assert st["counters"]["evicted_telemetry"] == 7 and st["counters"]["evicted_health"] == 1
    assert [r.id for r in ob.iter_rows([Lane.HEALTH])] == ["id-HEALTH-1", "id-HEALTH-2"]
    ob.put([env(i, Lane.ALERT, 1000) for i in range(7, 10)])
    st = ob.stats()
    assert st["counters"]["evicted_health"] == 3 and st["counters"]["evicted_trip"] == 1
    assert "evicted_alert" not in st["counters"] and st["lanes"]["alert"]["ready"] == 10
    ob.close()
    # counters survive a restart
    assert Outbox(tmp_path / "o.db").stats()["counters"]["evicted_health"] == 3


def test_alerts_are_evicted_only_when_nothing_else_is_left(tmp_path: Path) -> None:
    one = len(env(0, Lane.ALERT, 1000).to_bytes())
    ob = Outbox(tmp_path / "o.db", max_bytes=one * 3)
    ob.put([env(i, Lane.ALERT, 1000) for i in range(5)])
    assert [r.id for r in ob.claim(10)] == [f"id-ALERT-{i}" for i in (2, 3, 4)]
    assert ob.stats()["counters"]["evicted_alert"] == 2
    ob.close()


def test_alert_batches_commit_with_full_sync(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(1, Lane.ALERT)])
    # another connection sees the committed alert at once
    with sqlite3.connect(tmp_path / "o.db") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    (mode,) = ob._db.execute("PRAGMA synchronous").fetchone()
    assert mode == 2  # FULL
    ob.put([env(2)])
    (mode,) = ob._db.execute("PRAGMA synchronous").fetchone()
    assert mode == 1  # NORMAL: telemetry group commit
    ob.close()


def test_reject_counts_and_drops(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(1, Lane.ALERT)])
    (row,) = ob.claim(1)
    ob.reject([row.seq])
    st = ob.stats()
    assert st["pending"] == 0 and st["counters"]["rejected"] == 1 and st["bytes"] == 0
    ob.close()


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    from edge.errors import OutboxError

    (tmp_path / "file").write_text("not a dir")
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(tmp_path / "file" / "o.db")
