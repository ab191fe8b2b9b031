"""Regression tests for the three bugs of issue 14 (each failed on 07935d7):

1. the outbox writer counted an envelope as accepted that the full queue had dropped
   while its batch was being written (accepted + dropped exceeded what was produced);
2. a rules reload before the first clock step was reverted when the engine rebuilt its
   rules from the config it was built with;
3. a ``[log]`` hot reload changed nothing for loggers already used (structlog's cache).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
import structlog

from edge.config import Config, config_from_dict
from edge.core.engine import Engine
from edge.model import Envelope, Fix, Lane, SpeedSample

GNSS_T0 = 1_778_000_000.0  # May 2026
SYSTEM_T0 = GNSS_T0 + 200 * 86400  # a Pi without RTC: its clock 200 days off


def _env(i: int, lane: Lane = Lane.TELEMETRY) -> Envelope:
    return Envelope(id=f"e{i:04d}", thing="car", type="telemetry", ts=i, seq=i,
                    topic="vehicles/car/telemetry", lane=lane, body={"i": i})


@pytest.mark.timeout(30)
def test_an_envelope_dropped_while_its_batch_is_written_is_counted_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue fills while a batch waits for the disk (another writer holds SQLite's
    lock); the drop must not hit a message the batch is already writing: every message
    is either in the outbox and counted accepted, or not there and counted dropped."""
    from edge.daemon import ingest
    from edge.daemon.ingest import Ingest
    from edge.outbox import Outbox

    monkeypatch.setattr(ingest, "QUEUE_MAX", 4)
    cfg = config_from_dict({"thing": "car", "outbox": {"path": str(tmp_path / "o.db")}})

    async def scenario() -> Ingest:
        d = Ingest(lambda: cfg)
        d.outbox = await asyncio.to_thread(Outbox.from_config, cfg.outbox)
        blocker = sqlite3.connect(cfg.outbox.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the disk "stalls": the writer's put waits
        for i in range(4):
            d.enqueue([_env(i)])
        writer = asyncio.create_task(d.run_writer())
        await asyncio.sleep(0.5)  # the writer has taken its batch and waits for the lock
        for i in range(4, 11):  # the queue fills: its oldest telemetry is dropped
            d.enqueue([_env(i)])
        blocker.execute("COMMIT")
        blocker.close()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not d.pending:
                break
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        return d

    d = asyncio.run(scenario())
    assert d.outbox is not None
    stored = {r.id for r in d.outbox.iter_rows()}
    d.outbox.close()
    c = d.counters
    assert c["accepted"] == len(stored), (c, stored)
    assert c["accepted"] + c["queue_dropped"] == 11, c
    assert c["queue_dropped"] >= 1


def _fix(t: float, mono: float, kmh: float, *, valid: bool = True) -> Fix:
    return Fix(time=t, lat=48.0 + mono * 1e-4, lon=11.0, speed_mps=kmh / 3.6, course_deg=0.0,
               mode=3 if valid else 0, hdop=0.8, sats=10, quality=1 if valid else 0,
               valid=valid, mono=mono)


def _speed_cfg(limit: float) -> Config:
    return config_from_dict({"thing": "car", "rules": {"speed": {
        "limit_kmh": limit, "min_duration_s": 2}}, "can": {"stale_s": 1.0}})


def test_a_rules_reload_before_the_first_clock_step_survives_it() -> None:
    """Reconfigured to a 30 km/h limit before the first valid fix; the fix shows the
    system clock 200 days off and the time base steps. Driving 40 km/h afterwards is
    overspeed under the new limit (before the fix it was reverted to the old 50)."""
    from edge.app import Daemon

    old = _speed_cfg(50)
    d = Daemon(old)
    d.engine = engine = Engine(old, seed=1)
    # CAN before any fix: the system clock's time reaches the rules
    for i in range(10):
        engine.on_speed(SpeedSample(time=SYSTEM_T0 + i / 10, speed_kmh=20.0, source="can",
                                    mono=i / 10))
    asyncio.run(d.apply_config(_speed_cfg(30)))  # the daemon's hot reload
    out = []
    for k in range(20):
        out += engine.on_fix(_fix(GNSS_T0 + k, 1.0 + k, 40.0))
    assert engine.counts["clock_steps"] == 1
    over = [json.loads(e.to_bytes()) for e in out if e.type == "overspeed"]
    assert over and over[0]["phase"] == "start" and over[0]["limit_kmh"] == 30.0


def test_a_log_hot_reload_reaches_loggers_already_used(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``[log] level`` switched from warning to debug while running: a module's logger
    that has logged before shows its debug lines now."""
    from edge.logconf import configure

    saved = structlog.get_config()
    try:
        configure("warning", "json")
        log = structlog.get_logger()
        log.warning("before", n=1)
        log.debug("hidden", n=2)
        configure("debug", "json")  # what the reloader does on a [log] change
        log.debug("shown", n=3)
        lines = [json.loads(ln) for ln in capsys.readouterr().err.splitlines()]
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)
    assert [ln["event"] for ln in lines] == ["before", "shown"]


def test_a_bus_signal_from_the_can_source_reaches_telemetry_through_the_engine() -> None:
    """The CAN source emits OBD-II rpm as a SignalSample through its callback; the
    daemon hands it to the engine (no side channel polled by the ticker), so the next
    telemetry record carries it under its VSS name."""
    from edge.app import Daemon
    from edge.model import SignalSample

    cfg = _speed_cfg(50)
    d = Daemon(cfg)
    d.engine = Engine(cfg, seed=1)
    rpm = "Vehicle.Powertrain.CombustionEngine.Speed"
    d.on_can(SignalSample(time=GNSS_T0 - 0.5, name=rpm, value=2110.0, mono=0.5))
    d.on_fix(_fix(GNSS_T0, 1.0, 40.0))
    (tel,) = [json.loads(e.to_bytes()) for e in d.ingest.queue if e.type == "telemetry"]
    assert tel[rpm] == 2110.0
