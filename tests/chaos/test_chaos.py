"""Faults against the real daemon process; every case ends with a delivery ledger.

Accepted = committed to the outbox (recorded by a trigger inside the daemon's own
transaction, see ``tests.support.chaos``); delivered = received by an observer
subscribed at QoS 1 straight on the broker. Each case asserts that every accepted alert
id was delivered at least once and that no alert was delivered that was never accepted.
Scaled down by default (part of ``make test``); ``--chaos-full`` runs ``make chaos``.
"""

from __future__ import annotations

import contextlib
import json
import random
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.outbox import Outbox
from tests.chaos.conftest import Scale
from tests.support.broker import Broker, Subscriber
from tests.support.chaos import (
    Daemon,
    Feeder,
    Ledger,
    NetCut,
    Tally,
    alert_ids,
    settle,
    tally,
    wait_until,
    write_config,
)


@dataclass
class Rig:
    dir: Path
    broker: Broker
    net: NetCut
    feeder: Feeder
    sub: Subscriber
    ledger: Ledger
    daemon: Daemon

    def delivered(self) -> list[str]:
        return alert_ids(self.sub.messages)

    def health(self) -> dict[str, object]:
        try:
            return dict(json.loads((self.dir / "health.json").read_text()))
        except (OSError, ValueError):
            return {}

    def finish(self, case: str, tallies: list[Tally], *, timeout: float = 30.0,
               **extra: object) -> Tally:
        """Stop the input, let the daemon deliver everything, SIGTERM, count."""
        self.feeder.pause()
        self.net.up()
        if not self.daemon.alive():
            self.daemon.start()
        ok = settle(self.ledger, self.sub, timeout)
        rc = self.daemon.stop()
        t = tally(case, self.ledger.accepted(), self.delivered(), **extra)
        tallies.append(t)
        assert ok, f"{t.line()}\n{self.daemon.stderr_tail()}"
        assert rc == 0, self.daemon.stderr_tail()
        assert t.accepted > 0, "the drive produced no alerts"
        assert not t.lost and not t.invented, t.line()
        ob = Outbox(self.ledger.db)
        try:
            assert ob.integrity_ok()
        finally:
            ob.close()
        return t


def _rig(tmp: Path, broker: Broker, scale: Scale, *, outbox: Path | None = None,
         max_mb: float = 64.0, preexec: object = None) -> Iterator[Rig]:
    net = NetCut(broker.port)
    feeder = Feeder(tmp / "gps", period=scale.period)
    sub = Subscriber(broker, topic="vehicles/+/events/#")
    db = outbox or tmp / "outbox.db"
    ledger = Ledger(db)
    cfg = write_config(tmp, broker, tmp / "gps", port=net.port, outbox=db, max_mb=max_mb)
    daemon = Daemon(cfg, tmp / "daemon.log", preexec=preexec)  # type: ignore[arg-type]
    rig = Rig(tmp, broker, net, feeder, sub, ledger, daemon)
    try:
        yield rig
    finally:
        if daemon.alive():
            daemon.kill9()
        feeder.close()
        sub.close()
        net.close()


@pytest.fixture
def rig(tmp_path: Path, broker: Broker, scale: Scale) -> Iterator[Rig]:
    yield from _rig(tmp_path, broker, scale)


def _first_alert(r: Rig, timeout: float = 20.0) -> None:
    assert r.sub.wait_for(lambda m: len(alert_ids(m)) > 0, timeout), r.daemon.stderr_tail()


def test_kill9_at_random_points_of_a_replay(rig: Rig, scale: Scale,
                                            record_tally: list[Tally]) -> None:
    rnd = random.Random(9)
    rig.feeder.start()
    rig.daemon.start()
    _first_alert(rig)
    for _ in range(scale.kills):
        # anywhere: during start-up, mid-commit, mid-publish, between PUBLISH and PUBACK
        time.sleep(rnd.uniform(0.05, 2.0))
        assert rig.daemon.alive(), rig.daemon.stderr_tail()
        rig.daemon.kill9()
        rig.daemon.start()
    time.sleep(1.0)
    t = rig.finish("kill-9", record_tally, kills=rig.daemon.kills)
    assert rig.daemon.kills == scale.kills
    # killed between the broker's PUBACK and the outbox ack: resent, the id dedups
    assert t.duplicates >= 0


def test_broker_down_for_minutes_of_drive_then_flapping(rig: Rig, scale: Scale,
                                                        record_tally: list[Tally]) -> None:
    rig.feeder.start()
    rig.daemon.start()
    _first_alert(rig)
    rig.net.down()
    before = len(rig.ledger.accepted())
    start_epoch = rig.feeder.index
    while rig.feeder.index - start_epoch < scale.outage_drive_s:
        time.sleep(0.1)
    assert rig.daemon.alive(), rig.daemon.stderr_tail()
    backlog = rig.ledger.pending_alerts()
    assert len(rig.ledger.accepted()) > before and backlog > 0
    delivered_before_up = len(set(rig.delivered()))
    rig.net.up()
    assert wait_until(lambda: len(set(rig.delivered())) > delivered_before_up, 15), (
        rig.daemon.stderr_tail())
    for _ in range(scale.flaps):
        rig.net.down()
        time.sleep(scale.flap_s / 2)
        rig.net.up()
        time.sleep(scale.flap_s / 2)
    assert rig.daemon.alive(), rig.daemon.stderr_tail()
    rig.finish("broker-outage+flap", record_tally, outage_backlog=backlog,
               cuts=rig.net.cuts)


def test_outbox_cap_evicts_telemetry_never_alerts(tmp_path: Path, broker: Broker,
                                                  scale: Scale,
                                                  record_tally: list[Tally]) -> None:
    # ~450 B of messages per second of drive, ~120 B of it alerts: a cap of 250 B per
    # second of outage is reached, and the alerts alone still fit
    cap_mb = scale.outage_drive_s * 250 / 1024 / 1024
    for r in _rig(tmp_path, broker, scale, max_mb=cap_mb):
        r.net.down()
        r.feeder.start()
        r.daemon.start()
        while r.feeder.index < scale.outage_drive_s:
            time.sleep(0.1)
        assert wait_until(lambda r=r: any(k.startswith("evicted_") for k in r.ledger.counters()),
                          10), r.ledger.counters()
        counters = r.ledger.counters()
        assert counters.get("evicted_alert", 0) == 0, counters
        evicted = {k: v for k, v in counters.items() if k.startswith("evicted_")}
        r.finish("outbox-cap", record_tally, cap_kb=round(cap_mb * 1024), **evicted)


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def _ignore_sigxfsz() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death


def test_disk_full_holds_alerts_in_memory_then_commits_them(
    tmp_path: Path, broker: Broker, scale: Scale, record_tally: list[Tally]
) -> None:
    """A 2 MiB tmpfs filled up while the broker is unreachable; when mounting is not
    allowed (not root), a per-process file size limit (RLIMIT_FSIZE) caps the files."""
    disk = tmp_path / "disk"
    mounted = _tmpfs(disk, "2m")
    try:
        for r in _rig(tmp_path, broker, scale, outbox=disk / "outbox.db",
                      preexec=None if mounted else _ignore_sigxfsz):
            r.net.down()
            r.feeder.start()
            r.daemon.start()
            assert wait_until(lambda r=r: len(r.ledger.accepted()) >= 5, 20)
            filler = disk / "filler"
            if mounted:
                with filler.open("wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
            else:
                size = (disk / "outbox.db-wal").stat().st_size
                resource.prlimit(r.daemon.pid, resource.RLIMIT_FSIZE, (size, size))
            assert wait_until(lambda r=r: r.health().get("outbox_mode") == "memory-fallback", 20), (
                r.health(), r.daemon.stderr_tail())
            time.sleep(2.0)  # full for a while: alerts wait in memory
            assert r.daemon.alive(), r.daemon.stderr_tail()
            counters = r.health().get("counters", {})
            assert isinstance(counters, dict) and counters.get("outbox_errors", 0) > 0
            if mounted:
                filler.unlink()
            else:
                inf = resource.RLIM_INFINITY
                resource.prlimit(r.daemon.pid, resource.RLIMIT_FSIZE, (inf, inf))
            assert wait_until(lambda r=r: r.health().get("outbox_mode") == "disk", 20), (
                "still memory-fallback after the disk was freed; health written"
                f" {time.time() - float(str(r.health().get('written_at', 0))):.1f} s ago",
                r.health().get("counters"), r.daemon.stderr_tail())
            r.finish("disk-full", record_tally,
                     fs="tmpfs 2 MiB" if mounted else "RLIMIT_FSIZE",
                     queue_dropped=counters.get("queue_dropped", 0))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_serial_unplug_and_replug(rig: Rig, scale: Scale,
                                  record_tally: list[Tally]) -> None:
    rig.feeder.start()
    rig.daemon.start()
    _first_alert(rig)
    for _ in range(3 if scale.full else 1):
        rig.feeder.unplug()
        time.sleep(2.0)
        assert rig.daemon.alive(), rig.daemon.stderr_tail()
        before = len(rig.ledger.accepted())
        rig.feeder.plug()
        # alerts flow again from the replugged receiver, under the same path
        assert wait_until(lambda b=before: len(rig.ledger.accepted()) > b + 2, 20), (
            rig.health().get("gnss"), rig.daemon.stderr_tail())
    gnss = rig.health().get("gnss")
    rig.finish("serial-unplug", record_tally, unplugs=rig.feeder.unplugs, gnss=gnss)
