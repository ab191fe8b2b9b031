"""Outbox benchmarks: group-commit enqueue rate, fsync'd alert latency, start-up with a
1,000,000-row backlog. ``run() -> list[dict]``; baselines are bare sqlite3 in the same run."""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.model import Envelope, Lane
from edge.outbox import Outbox


def _env(i: int, lane: Lane = Lane.TELEMETRY) -> Envelope:
    kind = "overspeed" if lane == Lane.ALERT else "telemetry"
    topic = f"vehicles/car/events/{kind}" if lane == Lane.ALERT else "vehicles/car/telemetry"
    return Envelope(id=f"{i:036d}", thing="car", type=kind, ts=i, seq=i, topic=topic, lane=lane,
                    body={"Vehicle.Speed": 50.0, "Vehicle.CurrentLocation.Latitude": 48.1,
                          "Vehicle.CurrentLocation.Longitude": 11.5, "pad": "x" * 150})


def _row(name: str, value: float, unit: str, baseline: float | None, goal: str,
         ok: bool, higher_better: bool = True) -> dict[str, Any]:
    ratio = None
    if baseline:
        ratio = round(value / baseline if higher_better else baseline / value, 3)
    return {"metric": name, "value": round(value, 4), "unit": unit,
            "baseline": None if baseline is None else round(baseline, 4), "ratio": ratio,
            "goal": goal, "ok": ok}


def _bare_db(path: Path, sync: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("CREATE TABLE m (seq INTEGER PRIMARY KEY, payload BLOB)")
    return db


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        n = 20_000
        envs = [_env(i) for i in range(n)]
        ob = Outbox(tmp / "a.db", max_bytes=1 << 40, sync_interval_s=5.0)
        t0 = time.perf_counter()
        for i in range(0, n, 100):  # the writer's group commits
            ob.put(envs[i : i + 100])
        rate = n / (time.perf_counter() - t0)
        db = _bare_db(tmp / "bare.db", "NORMAL")
        payloads = [e.to_bytes() for e in envs[:5000]]
        t0 = time.perf_counter()
        for p in payloads:  # bare: one insert + commit per message
            db.execute("INSERT INTO m (payload) VALUES (?)", (p,))
        bare_rate = len(payloads) / (time.perf_counter() - t0)
        db.close()
        rows.append(_row("enqueue telemetry (group commit of 100)", rate, "msgs/s", bare_rate,
                         ">= bare insert+commit", rate >= bare_rate))
        lat = []
        for i in range(100):
            t0 = time.perf_counter()
            ob.put([_env(n + i, Lane.ALERT)])
            lat.append(time.perf_counter() - t0)
        ob.close()
        db = _bare_db(tmp / "bare2.db", "FULL")
        bare = []
        for p in payloads[:100]:
            t0 = time.perf_counter()
            db.execute("INSERT INTO m (payload) VALUES (?)", (p,))
            bare.append(time.perf_counter() - t0)
        db.close()
        med, bmed = statistics.median(lat) * 1000, statistics.median(bare) * 1000
        rows.append(_row("alert put, synchronous=FULL (median)", med, "ms", bmed,
                         "<= 3x bare FULL insert+commit", med <= 3 * bmed + 0.5,
                         higher_better=False))
        # start-up with 1,000,000 queued telemetry rows
        path = tmp / "big.db"
        Outbox(path).close()
        payload = envs[0].to_bytes()
        with sqlite3.connect(path) as big:
            big.execute("PRAGMA synchronous=OFF")
            big.executemany(
                "INSERT INTO messages (id, lane, topic, payload, created)"
                " VALUES (?, 2, 'vehicles/car/telemetry', ?, 0)",
                ((str(i), payload) for i in range(1_000_000)))
            big.execute("UPDATE lanes SET rows = 1000000, bytes = ? WHERE lane = 2",
                        (1_000_000 * len(payload),))
        t0 = time.perf_counter()
        ob = Outbox(path, max_bytes=1 << 40)
        ob.put([_env(1, Lane.ALERT)])
        got = ob.claim(1, lanes=[Lane.ALERT, Lane.TRIP])
        first = time.perf_counter() - t0
        ob.close()
        rows.append(_row("open 1M-row outbox -> new alert claimed", first, "s", None,
                         "<= 2 s (publish adds one round trip)",
                         first <= 2.0 and len(got) == 1, higher_better=False))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
