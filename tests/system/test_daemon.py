"""The daemon as a real process: NMEA on a pty -> telemetry -> outbox -> real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.outbox import Outbox
from tests.conftest import THING
from tests.support.broker import Broker, Subscriber
from tests.support.daemon import PtyFeeder, start_daemon, write_config
from tests.support.nmea import T0


@pytest.fixture
def feeder() -> Iterator[PtyFeeder]:
    f = PtyFeeder().start()
    yield f
    f.close()


def telemetry_records(messages: list[tuple[str, bytes]]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for topic, payload in messages:
        if topic == f"vehicles/{THING}/telemetry":
            out.extend(json.loads(payload)["records"])
    return out


def test_nmea_on_a_pty_reaches_the_broker_and_sigterm_exits_clean(
    tmp_path: Path, broker: Broker, subscriber: Subscriber, feeder: PtyFeeder
) -> None:
    cfg = write_config(tmp_path, broker, feeder.path)
    proc = start_daemon(cfg)
    try:
        assert subscriber.wait_for(lambda m: len(telemetry_records(m)) >= 5, timeout=30), (
            proc.stderr.read1().decode() if proc.stderr else ""
        )
        recs = telemetry_records(subscriber.messages)
        first = recs[0]
        # the envelope contract: id, thing, type, ts, seq + VSS-named body
        assert first["thing"] == THING and first["type"] == "telemetry"
        assert isinstance(first["id"], str) and len(first["id"]) == 36
        assert first["Vehicle.CurrentLocation.Latitude"] == pytest.approx(48.1351, abs=0.01)
        assert first["Vehicle.Speed"] == pytest.approx(36.0, abs=0.5)
        # event time is GNSS time (2026-05-04), not the system clock
        assert abs(int(first["ts"]) / 1000 - T0.timestamp()) < 3600
        seqs = [int(r["seq"]) for r in recs]
        assert seqs == sorted(seqs)
        # the health topic is published too
        assert subscriber.wait_for(
            lambda m: any(t == f"vehicles/{THING}/health" for t, _ in m), timeout=10)
        # edge status sees a running daemon
        st = subprocess.run([sys.executable, "-m", "edge", "status", "--config", str(cfg)],
                            capture_output=True, timeout=30)
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["state"] == "running"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert elapsed < 5.0
    ob = Outbox(tmp_path / "outbox.db")
    try:
        assert ob.integrity_ok()
        stats = ob.stats()
        inflight = sum(v["inflight"] for v in stats["lanes"].values())
        assert inflight == 0
        assert stats["counters"].get("delivered", 0) >= 5
    finally:
        ob.close()
    st = subprocess.run([sys.executable, "-m", "edge", "status", "--config", str(cfg)],
                        capture_output=True, timeout=30)
    assert st.returncode == 1 and json.loads(st.stdout)["state"] == "stopped"
    # the same file by path (a Greengrass component has no TOML config to name)
    st = subprocess.run([sys.executable, "-m", "edge", "status", "--file",
                         str(tmp_path / "health.json")], capture_output=True, timeout=30)
    assert st.returncode == 1 and json.loads(st.stdout)["state"] == "stopped"


def test_broker_down_at_start_then_up_delivers_the_backlog(
    tmp_path: Path, broker: Broker, feeder: PtyFeeder
) -> None:
    broker.stop()
    cfg = write_config(tmp_path, broker, feeder.path)
    proc = start_daemon(cfg)
    try:
        time.sleep(3.0)  # offline: telemetry piles up in the outbox
        assert proc.poll() is None, "daemon must survive a dead broker"
        broker.start()
        sub = Subscriber(broker)
        try:
            assert sub.wait_for(lambda m: len(telemetry_records(m)) >= 20, timeout=30)
            recs = telemetry_records(sub.messages)
            # the backlog comes first: the earliest record is from the offline period
            assert min(int(r["seq"]) for r in recs) <= 5
        finally:
            sub.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_then_restart_keeps_the_outbox_consistent(
    tmp_path: Path, broker: Broker, feeder: PtyFeeder
) -> None:
    broker.stop()  # everything stays in the outbox
    cfg = write_config(tmp_path, broker, feeder.path)
    proc = start_daemon(cfg)
    time.sleep(3.0)
    proc.kill()
    proc.wait()
    ob = Outbox(tmp_path / "outbox.db")
    try:
        assert ob.integrity_ok()
        pending = ob.stats()["pending"]
        assert pending > 0
    finally:
        ob.close()
    broker.start()
    sub = Subscriber(broker)
    proc = start_daemon(cfg)
    try:
        assert sub.wait_for(lambda m: len(telemetry_records(m)) >= pending, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_check_config_names_thing_when_it_is_a_number(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("thing = 42\n")
    r = subprocess.run([sys.executable, "-m", "edge", "check-config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "thing" in r.stderr and "string" in r.stderr
    assert r.stderr.count("\n") == 1  # one message, no traceback


def test_run_with_invalid_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('thing = "car"\n[uplink]\nkind = "carrier-pigeon"\n')
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "uplink.kind" in r.stderr


@pytest.mark.parametrize("sub", ["run", "sim", "replay", "decode", "check-config", "outbox",
                                 "status", "report", "record"])
def test_every_subcommand_has_help(sub: str) -> None:
    r = subprocess.run([sys.executable, "-m", "edge", sub, "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "usage: edge" in r.stdout
