"""`edge outbox stats | export | purge` on a real outbox file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge.model import Envelope, Lane
from edge.outbox import Outbox


def env(i: int, lane: Lane) -> Envelope:
    kind = "geofence" if lane == Lane.ALERT else "telemetry"
    return Envelope(id=f"id-{i}", thing="car", type=kind, ts=i, seq=i,
                    topic=f"vehicles/car/{kind}", lane=lane, body={"n": i})


def edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True, text=True,
                          timeout=60)


def test_stats_export_purge(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'thing = "car"\n[outbox]\npath = "{db}"\n')
    ob = Outbox(db)
    ob.put([env(1, Lane.TELEMETRY), env(2, Lane.ALERT), env(3, Lane.TELEMETRY)])
    claimed = ob.claim(1)  # a running daemon has the alert in flight
    assert claimed[0].id == "id-2"

    r = edge("outbox", "stats", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["pending"] == 3 and st["lanes"]["alert"]["inflight"] == 1
    # the tool must not steal the daemon's in-flight rows
    assert ob.stats()["lanes"]["alert"]["inflight"] == 1

    r = edge("outbox", "export", "--config", str(cfg), "--lane", "telemetry")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["payload"]["id"] for x in lines] == ["id-1", "id-3"]
    assert {x["topic"] for x in lines} == {"vehicles/car/telemetry"}

    r = edge("outbox", "purge", "--config", str(cfg), "--lane", "telemetry")
    assert r.returncode == 2 and "--yes" in r.stderr
    r = edge("outbox", "purge", "--config", str(cfg), "--lane", "telemetry", "--yes")
    assert r.returncode == 0 and "purged 2" in r.stderr
    ob.close()
    st = json.loads(edge("outbox", "stats", "--config", str(cfg)).stdout)
    assert st["pending"] == 1 and st["lanes"]["telemetry"]["ready"] == 0


def test_stats_without_an_outbox_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'thing = "car"\n[outbox]\npath = "{tmp_path / "none.db"}"\n')
    r = edge("outbox", "stats", "--config", str(cfg))
    assert r.returncode == 1 and "no outbox" in r.stderr
