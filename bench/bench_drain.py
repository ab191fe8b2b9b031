"""Drain benchmarks against the real Mosquitto (mutual TLS): drain msgs/s (baseline: a
bare paho QoS 1 publish loop), 24 h of 1 Hz telemetry (86,400 records) drained under the
IoT Core quotas (goal <= 60 s), broker back -> first publish (goal <= 2 s), and the real
daemon (``edge run``) started on a 1,000,000-row backlog -> its first new alert at an
observer (goal <= 2 s). The drains run on the daemon's event loop (asyncio's
unless ``VEHICLE_EDGE_EVENT_LOOP=uvloop``, as ``edge run``). ``run() -> list[dict]``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from bench import stop_process
from bench.bench_outbox import _env, _row
from edge.config import UplinkConfig
from edge.forwarder import Forwarder
from edge.outbox import Outbox
from edge.uplinks.mqtt import MqttUplink
from tests.support.broker import Broker, Pki

THING = "car"
T = TypeVar("T")


def _loop_run(coro: Awaitable[T]) -> T:
    """Run on the daemon's event loop (``edge.daemon.loop.run_loop``: asyncio's unless
    ``VEHICLE_EDGE_EVENT_LOOP=uvloop``)."""
    from edge.daemon.loop import run_loop

    return run_loop(coro)


def _cfg(b: Broker) -> UplinkConfig:
    return UplinkConfig(kind="mqtt", endpoint="localhost", port=b.port, ca=b.pki.ca,
                        cert=b.pki.cert(THING), key=b.pki.key(THING), connect_timeout_s=5.0)


def _envs(n: int) -> list[Any]:
    out = []
    for i in range(n):
        e = _env(i)
        out.append(type(e)(id=e.id, thing=THING, type=e.type, ts=e.ts, seq=e.seq,
                           topic=f"vehicles/{THING}/telemetry", lane=e.lane, body=e.body))
    return out


async def _drain(b: Broker, ob: Outbox, *, compression: str, batch_max: int,
                 quota: bool) -> float:
    fw = Forwarder(ob, thing=THING, batch_max=batch_max, compression=compression, quota=quota)
    pending = ob.stats()["pending"]
    t0 = time.perf_counter()
    async with MqttUplink(_cfg(b), client_id=THING) as up:
        task = asyncio.create_task(fw.run(up, asyncio.Event()))
        while fw.counters["published"] < pending:  # PUBACKs (cheap to poll)
            await asyncio.sleep(0.01)
        while ob.stats()["pending"]:  # and settled
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return time.perf_counter() - t0


def _bare_paho(b: Broker, n: int) -> float:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare", protocol=mqtt.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(b.pki.ca))
    ctx.load_cert_chain(str(b.pki.cert(THING)), str(b.pki.key(THING)))
    c.tls_set_context(ctx)
    c.max_inflight_messages_set(16)
    c.connect("localhost", b.port)
    c.loop_start()
    payload = _env(0).to_bytes()
    t0 = time.perf_counter()
    infos = [c.publish(f"vehicles/{THING}/telemetry", payload, qos=1) for _ in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return n / dt


def _backlog(path: Path, n: int) -> None:
    """An outbox holding ``n`` queued telemetry rows, written in bulk."""
    Outbox(path).close()
    payload = _envs(1)[0].to_bytes()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA synchronous=OFF")
        db.executemany(
            "INSERT INTO messages (id, lane, topic, payload, created) VALUES (?, 2, ?, ?, ?)",
            ((f"backlog-{i}", f"vehicles/{THING}/telemetry", payload, time.time())
             for i in range(n)))
        db.execute("UPDATE lanes SET rows = ?, bytes = ? WHERE lane = 2",
                   (n, n * len(payload)))


def _daemon_backlog_alert(b: Broker, tmp: Path, n: int = 1_000_000) -> tuple[float, bool]:
    """``edge run`` as a process (NMEA on a pty at 36 km/h, a 30 km/h limit) on an
    outbox already holding ``n`` telemetry rows: process start -> the first overspeed
    alert received by an observer. The backlog must still be there (not drained first)."""
    from tests.support.broker import Subscriber
    from tests.support.daemon import PtyFeeder

    _backlog(tmp / "outbox.db", n)
    cfg = tmp / "edge.toml"
    cfg.write_text(
        f'thing = "{THING}"\n'
        f'[gnss]\nport = "{{port}}"\n'
        f'[outbox]\npath = "{tmp / "outbox.db"}"\nmax_mb = 4096\n'
        "[rules.speed]\nlimit_kmh = 30.0\nmin_duration_s = 0.0\n"
        '[log]\nformat = "json"\nlevel = "warning"\n'
        + b.uplink_section(THING)
    )
    sub = Subscriber(b, topic=f"vehicles/{THING}/events/#")
    feeder = PtyFeeder(period=0.05)
    cfg.write_text(cfg.read_text().replace("{port}", feeder.path))
    feeder.start()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=(tmp / "stderr").open("wb"),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        def alert(m: list[tuple[str, bytes]]) -> bool:
            return any(t.endswith("/events/overspeed") for t, _ in m)

        got = sub.wait_for(alert, timeout=30)
        first = time.perf_counter() - t0
        body: dict[str, Any] = next((json.loads(p) for t, p in sub.messages
                     if t.endswith("/events/overspeed")), {})
    finally:
        stop_process(proc)
        feeder.close()
        sub.close()
    ob = Outbox(tmp / "outbox.db", recover=False)
    left = ob.stats()["lanes"]["telemetry"]
    ob.close()
    backlog_there = left["ready"] + left["inflight"] > n // 2
    return first, got and body.get("type") == "overspeed" and backlog_there


def _delivered(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as c:
            row = c.execute("SELECT value FROM counters WHERE name = 'delivered'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def _daemon_broker_back(b: Broker, tmp: Path) -> tuple[float, bool]:
    """``edge run`` as a process, the broker stopped for 3 s while fixes keep coming, then
    started again on the same port: broker start -> the daemon's first PUBACKed publish
    (the outbox's delivered counter moves)."""
    from tests.support.daemon import PtyFeeder

    db = tmp / "outbox.db"
    feeder = PtyFeeder(period=0.05)
    cfg = tmp / "edge.toml"
    cfg.write_text(
        f'thing = "{THING}"\n[gnss]\nport = "{feeder.path}"\n'
        f'[outbox]\npath = "{db}"\n[log]\nformat = "json"\nlevel = "warning"\n'
        + b.uplink_section(THING)
    )
    feeder.start()
    proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=(tmp / "stderr").open("wb"))
    try:
        deadline = time.monotonic() + 30
        while _delivered(db) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        b.stop()
        time.sleep(3.0)
        before = _delivered(db)
        b.start()
        t_up = time.perf_counter()
        deadline = time.monotonic() + 30
        while _delivered(db) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        back = time.perf_counter() - t_up
        ok = _delivered(db) > before
    finally:
        stop_process(proc)
        feeder.close()
    return back, ok


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pki = Pki.create([THING])
    b = Broker(pki)
    b.start()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            n = 20_000
            ob = Outbox(tmp / "a.db", max_bytes=1 << 40)
            ob.put(_envs(n))
            dt = _loop_run(_drain(b, ob, compression="none", batch_max=1, quota=False))
            bare = _bare_paho(b, 5000)
            rows.append(_row("drain, one message per publish, no quota", n / dt, "msgs/s",
                             bare, ">= 0.5x bare paho QoS1 loop", n / dt >= 0.5 * bare))
            for comp in ("none", "gzip"):
                ob.put(_envs(86_400))
                dt = _loop_run(_drain(b, ob, compression=comp, batch_max=60, quota=True))
                rows.append(_row(f"24 h of 1 Hz telemetry under IoT quotas ({comp})", dt, "s",
                                 None, "<= 60 s", dt <= 60.0, higher_better=False))
            ob.close()
        with tempfile.TemporaryDirectory() as d:
            first, ok = _daemon_backlog_alert(b, Path(d))
        rows.append(_row("edge run on a 1M-row backlog -> first new alert at observer", first,
                         "s", None, "<= 2 s (process start to receipt)", ok and first <= 2.0,
                         higher_better=False))
        with tempfile.TemporaryDirectory() as d:
            back, ok = _daemon_broker_back(b, Path(d))
        rows.append(_row("edge run: broker back -> first PUBACKed publish", back, "s", None,
                         "<= 2 s", ok and back <= 2.0, higher_better=False))
    finally:
        b.stop()
        shutil.rmtree(pki.dir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
