"""Outbox bounds, counters and start-up cost: quotas, TTL, persisted byte counts,
query plans, a size-capped file system, backoff."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from edge.config import config_from_dict
from edge.core.backoff import Backoff
from edge.errors import OutboxError
from edge.model import Envelope, Lane
from edge.outbox import CLAIM_SQL, Outbox
from tests.support.disk import tmpfs


def env(i: int, lane: Lane = Lane.TELEMETRY, size: int = 10) -> Envelope:
    kind = {Lane.ALERT: "overspeed", Lane.TRIP: "trip", Lane.TELEMETRY: "telemetry",
            Lane.HEALTH: "health"}[lane]
    return Envelope(id=f"id-{lane.name}-{i}", thing="car", type=kind, ts=i, seq=i,
                    topic=f"vehicles/car/{kind}", lane=lane, body={"pad": "x" * size})


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_lane_quota_evicts_only_that_lane_oldest_first(tmp_path: Path) -> None:
    one = len(env(0, size=1000).to_bytes())
    ob = Outbox(tmp_path / "o.db", lane_max_bytes={Lane.TELEMETRY: one * 5})
    ob.put([env(i, Lane.ALERT, 1000) for i in range(8)])
    ob.put([env(i, Lane.TELEMETRY, 1000) for i in range(8)])
    st = ob.stats()
    assert st["lanes"]["telemetry"]["ready"] == 5
    assert st["lanes"]["telemetry"]["bytes"] <= one * 5
    assert st["lanes"]["alert"]["ready"] == 8  # other lanes untouched by the quota
    assert st["counters"]["evicted_telemetry"] == 3 and st["dropped"] == 3
    tele = [r.id for r in ob.claim(20, lanes=[Lane.TELEMETRY])]
    assert tele == [f"id-TELEMETRY-{i}" for i in range(3, 8)]
    ob.close()


def test_ttl_expires_old_telemetry_never_alerts_and_counts_it(tmp_path: Path) -> None:
    clock = Clock()
    ob = Outbox(tmp_path / "o.db", ttl_s={Lane.TELEMETRY: 3600.0}, clock=clock)
    ob.put([env(i, Lane.TELEMETRY) for i in range(3)] + [env(0, Lane.ALERT)])
    clock.t += 1800
    ob.put([env(i, Lane.TELEMETRY) for i in range(3, 5)])
    clock.t += 2000  # the first three are now 3800 s old, the next two 2000 s
    assert ob.expire() == 3
    st = ob.stats()
    assert st["lanes"]["telemetry"]["ready"] == 2 and st["lanes"]["alert"]["ready"] == 1
    assert st["counters"]["expired_telemetry"] == 3
    assert st["oldest_age_s"] == pytest.approx(3800)  # the alert: alerts never expire
    ob.close()


def test_config_keys_reach_the_outbox(tmp_path: Path) -> None:
    cfg = config_from_dict({"thing": "car", "outbox": {
        "path": str(tmp_path / "o.db"), "max_mb": 2, "telemetry_max_mb": 0.5,
        "telemetry_ttl_h": 12, "health_ttl_h": 1, "sync_interval_s": 2}})
    ob = Outbox.from_config(cfg.outbox)
    assert ob.max_bytes == 2 * 1024 * 1024
    assert ob.lane_max_bytes[Lane.TELEMETRY] == 512 * 1024
    assert ob.ttl_s == {Lane.TELEMETRY: 12 * 3600.0, Lane.HEALTH: 3600.0, }
    assert Lane.ALERT not in ob.lane_max_bytes and Lane.ALERT not in ob.ttl_s
    ob.close()


def test_byte_and_row_counts_are_persisted_not_rescanned(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(i, Lane.TELEMETRY, 50) for i in range(100)] + [env(1, Lane.ALERT)])
    rows = ob.claim(30)
    ob.ack([r.seq for r in rows[:10]])
    ob.reject([r.seq for r in rows[10:15]])
    ob.release([r.seq for r in rows[15:]])
    before = ob.stats()
    assert ob.integrity_ok()  # counters == a full recount
    ob.close()
    # sabotage the payloads behind the counters' back: a reopen must trust the counters
    with sqlite3.connect(tmp_path / "o.db") as db:
        db.execute("UPDATE messages SET payload = x'00'")
    ob = Outbox(tmp_path / "o.db")
    assert ob.stats()["bytes"] == before["bytes"] == sum(
        v["bytes"] for v in before["lanes"].values())
    assert ob.stats()["pending"] == 101 - 15
    ob.close()


def test_claim_and_stats_walk_the_index_not_the_backlog(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.close()
    db = sqlite3.connect(tmp_path / "o.db")
    plan = " ".join(str(r[-1]) for r in db.execute(
        "EXPLAIN QUERY PLAN " + CLAIM_SQL.format(lane_filter=" AND lane IN (?)"),
        (1, 0, 2, 10)))
    assert "USING INDEX messages_ready" in plan or "USING COVERING INDEX messages_ready" in plan
    assert "TEMP B-TREE" not in plan  # no sort of the whole backlog
    db.close()


def test_a_million_rows_open_and_claim_an_alert_fast(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    Outbox(path).close()
    payload = b'{"id":"x","type":"telemetry","Vehicle.Speed":50.0,"pad":"' + b"x" * 200 + b'"}'
    with sqlite3.connect(path) as db:  # 1,000,000 telemetry rows written in bulk
        db.execute("PRAGMA synchronous=OFF")
        db.executemany(
            "INSERT INTO messages (id, lane, topic, payload, created) VALUES (?, 2, ?, ?, 0)",
            ((f"t{i}", "vehicles/car/telemetry", payload) for i in range(1_000_000)))
        db.execute("UPDATE lanes SET rows = 1000000, bytes = ? WHERE lane = 2",
                   (1_000_000 * len(payload),))
    t0 = time.perf_counter()
    ob = Outbox(path, max_bytes=1 << 40)
    opened = time.perf_counter() - t0
    ob.put([env(1, Lane.ALERT)])
    (row,) = ob.claim(1, lanes=[Lane.ALERT, Lane.TRIP])
    first_alert = time.perf_counter() - t0
    st = ob.stats()
    ob.close()
    assert row.id == "id-ALERT-1"
    assert st["lanes"]["telemetry"]["ready"] == 1_000_000
    assert opened < 0.5 and first_alert < 1.0, (opened, first_alert)


def test_full_database_rotates_telemetry_and_keeps_every_alert(tmp_path: Path) -> None:
    """SQLite on a full volume, simulated with PRAGMA max_page_count (SQLITE_FULL; the
    real thing on a tmpfs is below and in tests/chaos): telemetry makes room by evicting
    older telemetry, alerts by evicting telemetry; nothing raises while lower lanes
    hold rows."""
    ob = Outbox(tmp_path / "o.db", max_bytes=1 << 40)
    ob._db.execute("PRAGMA max_page_count = 60")
    for i in range(200):
        ob.put([env(i, Lane.TELEMETRY, 4000)])
        if i % 10 == 0:
            ob.put([env(i, Lane.ALERT, 500)])
    st = ob.stats()
    assert ob.integrity_ok()
    assert st["lanes"]["alert"]["ready"] == 20
    assert st["counters"]["evicted_telemetry"] > 100
    assert st["disk"]["full_events"] > 0
    # the newest telemetry is what stayed
    assert ob.iter_rows([Lane.TELEMETRY])[-1].id == "id-TELEMETRY-199"
    ob.close()


def test_full_database_of_alerts_raises_then_recovers(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=1 << 40)
    ob._db.execute("PRAGMA max_page_count = 40")
    with pytest.raises(OutboxError, match="write failed"):
        for i in range(200):
            ob.put([env(i, Lane.ALERT, 4000)])
    before = ob.stats()
    assert ob.integrity_ok()  # the failed transaction left no trace in the totals
    rows = ob.claim(1000)
    ob.ack([r.seq for r in rows])  # deleting frees pages: writes work again
    ob.put([env(999, Lane.ALERT)])
    assert ob.stats()["lanes"]["alert"]["ready"] == 1 and before["pending"] > 0
    ob.close()


def test_telemetry_loss_window_forces_an_fsync_every_interval(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", sync_interval_s=3600)
    ob.put([env(1)])  # first commit: FULL (nothing fsync'd yet)
    ob.put([env(2)])
    (mode,) = ob._db.execute("PRAGMA synchronous").fetchone()
    assert mode == 1  # NORMAL within the window
    ob.sync_interval_s = 0.0
    ob.put([env(3)])
    (mode,) = ob._db.execute("PRAGMA synchronous").fetchone()
    assert mode == 2  # FULL once the window passed
    ob.close()


def test_backoff_is_capped_jittered_and_resets() -> None:
    b = Backoff(base_s=0.5, cap_s=8.0, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    assert all(d <= 8.0 for d in delays) and max(delays) > 4.0
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jitter at the cap
    assert delays[0] <= 0.5
    b.reset()
    assert b.next() <= 0.5
    b.to_cap()
    assert b.next() >= 4.0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_tmpfs_rotates_telemetry_and_takes_every_alert(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "512k") as mnt:
        ob = Outbox(mnt / "o.db", max_bytes=1 << 40, reserve_bytes=64 * 1024,
                    min_free_bytes=256 * 1024)
        assert ob.stats()["disk"]["reserve_bytes"] == 64 * 1024
        for i in range(200):
            ob.put([env(i, Lane.TELEMETRY, 4000)])
        for i in range(20):  # the disk is full of telemetry: alerts still go in
            ob.put([env(i, Lane.ALERT, 2000)])
        st = ob.stats()
        assert st["lanes"]["alert"]["ready"] == 20, st
        assert st["counters"].get("evicted_telemetry", 0) + st["counters"].get(
            "dropped_full_telemetry", 0) > 0
        assert st["disk"]["pressure"] is True
        assert ob.integrity_ok()
        ob.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_the_reserve_is_released_only_to_alerts_and_taken_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.outbox.disk

    monkeypatch.setattr(edge.outbox.disk, "RESERVE_RETRY_S", 0.0)
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        ob = Outbox(mnt / "o.db", max_bytes=1 << 40, reserve_bytes=128 * 1024,
                    min_free_bytes=64 * 1024)
        assert ob.disk()["reserve_bytes"] == 128 * 1024
        ob.put([env(i, Lane.TELEMETRY, 500) for i in range(20)])
        filler = mnt / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as f:
            while True:  # the rest of the disk goes to someone else
                f.write(b"\0" * 4096)
                f.flush()
        for i in range(20, 200):  # telemetry on a full disk: the reserve stays
            ob.put([env(i, Lane.TELEMETRY, 2000)])
        st = ob.stats()
        assert st["disk"]["reserve_bytes"] == 128 * 1024 and st["disk"]["reserve_releases"] == 0
        assert st["counters"]["dropped_full_telemetry"] > 0  # counted, not raised
        for i in range(30):  # alerts: the telemetry's room first, then the reserve
            ob.put([env(i, Lane.ALERT, 3000)])
        st = ob.stats()
        assert st["lanes"]["alert"]["ready"] == 30, st
        assert st["disk"]["reserve_releases"] == 1 and st["disk"]["reserve_bytes"] == 0
        assert st["lanes"]["telemetry"]["ready"] == 0  # every telemetry row went first
        assert "evicted_alert" not in st["counters"]
        filler.unlink()  # space again: the reserve is taken back at the next write
        ob.put([env(999, Lane.TELEMETRY)])
        assert ob.disk()["reserve_bytes"] == 128 * 1024
        assert ob.integrity_ok()
        ob.close()
