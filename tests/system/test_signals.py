"""Signals to a real ``edge run`` process: SIGINT stops it as SIGTERM does, a second
signal during shutdown forces exit at once, and the outbox survives a forced exit.

(SIGTERM -> exit 0 within 5 s is in ``test_daemon``.)
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.outbox import Outbox
from tests.support.broker import Broker
from tests.support.chaos import Daemon, Feeder, NetCut, wait_until, write_config


@dataclass
class Run:
    dir: Path
    feeder: Feeder
    net: NetCut
    daemon: Daemon

    @property
    def outbox(self) -> Path:
        return self.dir / "outbox.db"

    def health(self) -> dict[str, object]:
        try:
            return dict(json.loads((self.dir / "health.json").read_text()))
        except (OSError, ValueError):
            return {}

    def uplink_state(self) -> object:
        """The uplink state the running process reports (not a dead one's file)."""
        h = self.health()
        if h.get("pid") != self.daemon.pid or h.get("running") is not True:
            return None
        up = h.get("uplink")
        return up.get("state") if isinstance(up, dict) else None

    def logged(self, event: str) -> bool:
        return event in self.daemon.stderr_tail(1_000_000)


@pytest.fixture
def run(tmp_path: Path, broker: Broker) -> Iterator[Run]:
    net = NetCut(broker.port)
    feeder = Feeder(tmp_path / "gps", period=0.02).start()
    cfg = write_config(tmp_path, broker, tmp_path / "gps", port=net.port)
    # info level: the test waits for the daemon's own "signal received" line
    cfg.write_text(cfg.read_text().replace('level = "warning"', 'level = "info"'))
    daemon = Daemon(cfg, tmp_path / "daemon.log")
    r = Run(tmp_path, feeder, net, daemon)
    try:
        yield r
    finally:
        if daemon.alive():
            daemon.kill9()
        feeder.close()
        net.close()


def _started(r: Run) -> None:
    r.daemon.start()
    assert wait_until(lambda: r.uplink_state() == "connected", 20), (
        r.health(), r.daemon.stderr_tail())


def _consistent(outbox: Path) -> dict[str, object]:
    # recover=False: look at the file exactly as the process left it
    ob = Outbox(outbox, recover=False)
    try:
        assert ob.integrity_ok()
        return dict(ob.stats())
    finally:
        ob.close()


def _stall_with_backlog(r: Run) -> None:
    """Black-hole the link, then wait until the outbox holds a row put after that: its
    publish cannot have been acknowledged, so the daemon has something it must wait for.
    (A backlog seen in the health file may be one written before the stall and
    delivered since: a busy machine made the shutdown find an empty outbox.)"""
    r.net.stall()
    since = time.time()  # the outbox stamps rows with the wall clock

    def backlog() -> bool:
        try:
            with contextlib.closing(sqlite3.connect(r.outbox, timeout=1)) as db:
                row = db.execute("SELECT COUNT(*) FROM messages WHERE created > ?",
                                 (since,)).fetchone()
        except sqlite3.Error:
            return False
        return int(row[0]) > 0

    assert wait_until(backlog, 10), r.health()


def _delivered(outbox: object) -> int:
    counters = outbox.get("counters") if isinstance(outbox, dict) else None
    return int(counters.get("delivered", 0)) if isinstance(counters, dict) else 0


def test_sigint_stops_the_daemon_like_sigterm(run: Run) -> None:
    _started(run)
    assert run.daemon.proc is not None
    t0 = time.monotonic()
    run.daemon.proc.send_signal(signal.SIGINT)
    rc = run.daemon.proc.wait(10)
    elapsed = time.monotonic() - t0
    assert rc == 0, run.daemon.stderr_tail()  # no KeyboardInterrupt traceback, no 130
    assert elapsed < 5.0
    assert "Traceback" not in run.daemon.stderr_tail(1_000_000)
    assert run.logged('"signal": "SIGINT"'), run.daemon.stderr_tail()
    # the ordered shutdown ran: final health written, nothing left in flight
    assert run.health().get("running") is False
    stats = _consistent(run.outbox)
    lanes = stats["lanes"]
    assert isinstance(lanes, dict)
    assert sum(int(v["inflight"]) for v in lanes.values()) == 0


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_during_shutdown_forces_exit(run: Run, second: signal.Signals) -> None:
    """The uplink is connected but black-holed (no PUBACK ever comes), so a single SIGTERM
    spends its drain grace waiting; a second signal within it must end the process at
    once with 128 + signum, and leave an outbox that opens consistent."""
    _started(run)
    _stall_with_backlog(run)  # publishes go out, nothing comes back: rows stay in flight
    assert run.uplink_state() == "connected", run.health()
    proc = run.daemon.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    # the first signal is being handled: the daemon said so and is shutting down
    assert wait_until(lambda: run.logged("signal received, stopping"), 3, 0.005), (
        run.daemon.stderr_tail())
    assert proc.poll() is None, "shutdown finished before the second signal could land"
    t0 = time.monotonic()
    proc.send_signal(second)
    rc = proc.wait(10)
    forced_in = time.monotonic() - t0
    # 128 + signum from os._exit in the handler; -signum only if the signal arrived after
    # the handler was removed, while the interpreter was already exiting
    assert rc in (128 + second, -second), (rc, run.daemon.stderr_tail())
    assert forced_in < 0.5, forced_in
    print(f"second {second.name}: exit {rc} after {forced_in * 1000:.0f} ms")
    assert run.logged("second signal, forcing exit"), run.daemon.stderr_tail()
    stats = _consistent(run.outbox)
    assert int(str(stats["pending"])) > 0  # what was not delivered is still there
    # and the next start takes it over: recovery makes in-flight rows ready again
    delivered = _delivered(stats)
    run.net.stall(False)
    _started(run)
    assert wait_until(lambda: _delivered(run.health().get("outbox")) > delivered, 20), (
        run.health().get("outbox"), run.health().get("uplink"), run.daemon.stderr_tail())
    assert run.daemon.stop() == 0, run.daemon.stderr_tail()
    _consistent(run.outbox)


def test_first_signal_alone_takes_the_drain_grace(run: Run) -> None:
    """The control for the test above: without a second signal the same black-holed
    shutdown is slow (it waits its drain grace), yet it ends with 0 within 5 s."""
    _started(run)
    _stall_with_backlog(run)
    proc = run.daemon.proc
    assert proc is not None
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(10)
    elapsed = time.monotonic() - t0
    assert rc == 0, run.daemon.stderr_tail()
    assert 0.5 < elapsed < 5.0, elapsed
    print(f"single SIGTERM with a black-holed uplink: exit after {elapsed:.2f} s")
    _consistent(run.outbox)
