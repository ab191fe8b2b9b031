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
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from edge.outbox import Outbox
from sim.slcan import SlcanPtyAdapter
from tests.chaos.conftest import Scale
from tests.support.broker import Broker, Subscriber
from tests.support.chaos import (
    CAN_FAST_KMH,
    LIMIT_KMH,
    CanFeeder,
    Daemon,
    Feeder,
    Ledger,
    NetCut,
    Tally,
    alert_ids,
    cruise_epoch,
    drive_epoch,
    settle,
    tally,
    wait_until,
    write_config,
)
from tests.support.disk import tmpfs


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

    def kill_and_restart(self, n: int, rnd: random.Random, lo: float, hi: float) -> None:
        """``kill -9`` and restart the daemon ``n`` times, ``lo``-``hi`` s apart."""
        for _ in range(n):
            time.sleep(rnd.uniform(lo, hi))
            assert self.daemon.alive(), self.daemon.stderr_tail()
            self.daemon.kill9()
            self.daemon.start()
        time.sleep(1.0)

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
         max_mb: float = 64.0, preexec: object = None,
         make: Callable[[int], bytes] = drive_epoch, extra: str = "",
         pois: int = 0) -> Iterator[Rig]:
    net = NetCut(broker.port)
    feeder = Feeder(tmp / "gps", period=scale.period, make=make)
    sub = Subscriber(broker, topic="vehicles/+/events/#")
    db = outbox or tmp / "outbox.db"
    ledger = Ledger(db)
    cfg = write_config(tmp, broker, tmp / "gps", port=net.port, outbox=db, max_mb=max_mb,
                       extra=extra, pois=pois)
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


def _accepted_at_least(r: Rig, n: int) -> bool:
    return len(r.ledger.accepted()) >= n


def _evicted_any(r: Rig) -> bool:
    return any(k.startswith("evicted_") for k in r.ledger.counters())


def _outbox_mode_is(r: Rig, mode: str) -> bool:
    return r.health().get("outbox_mode") == mode


def _first_alert(r: Rig, timeout: float = 20.0) -> None:
    assert r.sub.wait_for(lambda m: len(alert_ids(m)) > 0, timeout), r.daemon.stderr_tail()


def test_kill9_at_random_points_of_a_replay(rig: Rig, scale: Scale,
                                            record_tally: list[Tally]) -> None:
    rnd = random.Random(9)
    rig.feeder.start()
    rig.daemon.start()
    _first_alert(rig)
    # anywhere: during start-up, mid-commit, mid-publish, between PUBLISH and PUBACK
    rig.kill_and_restart(scale.kills, rnd, 0.05, 2.0)
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
        assert wait_until(partial(_evicted_any, r), 10), r.ledger.counters()
        counters = r.ledger.counters()
        assert counters.get("evicted_alert", 0) == 0, counters
        evicted = {k: v for k, v in counters.items() if k.startswith("evicted_")}

        # the drops are visible where an operator looks: the daemon's health file
        def health_counters(r: Rig = r) -> dict[str, int]:
            outbox = r.health().get("outbox")
            got = outbox.get("counters") if isinstance(outbox, dict) else None
            return dict(got) if isinstance(got, dict) else {}

        assert wait_until(lambda: health_counters().get("evicted_telemetry", 0) > 0, 10), (
            r.health().get("outbox"), r.daemon.stderr_tail())
        assert health_counters().get("evicted_alert", 0) == 0, health_counters()
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
            assert wait_until(partial(_accepted_at_least, r, 5), 20)
            filler = disk / "filler"
            if mounted:
                # fill the disk; the file's close can hit ENOSPC too, so the suppress
                # must enclose the open
                with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
                    while True:
                        f.write(b"\0" * 65536)
            else:
                size = (disk / "outbox.db-wal").stat().st_size
                resource.prlimit(r.daemon.pid, resource.RLIMIT_FSIZE, (size, size))
            # full: alerts are still committed (into room taken from telemetry, then the
            # reserve), or wait in memory when there is none
            before = len(r.ledger.accepted())
            assert wait_until(lambda r=r, n=before: len(r.ledger.accepted()) > n + 3
                              or _outbox_mode_is(r, "memory-fallback"), 20), (
                r.health(), r.daemon.stderr_tail())
            time.sleep(2.0)  # full for a while
            assert r.daemon.alive(), r.daemon.stderr_tail()
            counters = r.health().get("counters", {})
            assert isinstance(counters, dict)
            if mounted:
                disk_health = r.health().get("disk")
                assert isinstance(disk_health, dict) and disk_health["pressure"], disk_health
            if mounted:
                filler.unlink()
            else:
                inf = resource.RLIM_INFINITY
                resource.prlimit(r.daemon.pid, resource.RLIMIT_FSIZE, (inf, inf))
            assert wait_until(partial(_outbox_mode_is, r, "disk"), 20), (
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
        assert wait_until(partial(_accepted_at_least, rig, before + 3), 20), (
            rig.health().get("gnss"), rig.daemon.stderr_tail())
    gnss = rig.health().get("gnss")
    rig.finish("serial-unplug", record_tally, unplugs=rig.feeder.unplugs, gnss=gnss)


DEMO_DBC = Path(__file__).resolve().parents[2] / "sim" / "dbc" / "demo.dbc"


def _can_section(channel: str) -> str:
    return (
        "[can]\n"
        'interface = "slcan"\n'
        f'channel = "{channel}"\n'
        f'dbc = "{DEMO_DBC}"\n'
        'speed_signal = "VEHICLE_SPEED.SPEED_KMH"\n'
        "slcan_open_delay_s = 0\n"
        "reopen_max_s = 0.5\n"
    )


def _can_health(r: Rig) -> dict[str, object]:
    can = r.health().get("can")
    return dict(can) if isinstance(can, dict) else {}


def _overspeeds_at_least(r: Rig, n: int) -> bool:
    return len(r.ledger.accepted_on("overspeed")) >= n


def _can_closed(r: Rig) -> bool:
    return _can_health(r).get("state") != "open"


def _can_reopened(r: Rig, opens_before: int) -> bool:
    h = _can_health(r)
    return int(str(h.get("opens", 0))) > opens_before and h.get("state") == "open"


def _overspeed_speeds(r: Rig) -> list[float]:
    """``speed_kmh`` of every overspeed start the observer received."""
    out = []
    for topic, payload in r.sub.messages:
        if topic.endswith("/events/overspeed"):
            body = json.loads(payload)
            if body.get("phase") == "start":
                out.append(float(body["speed_kmh"]))
    return out


def test_slcan_unplug_and_replug(tmp_path: Path, broker: Broker, scale: Scale,
                                 record_tally: list[Tally]) -> None:
    """CAN speed over a USB-CAN adapter pulled out mid-drive and plugged back in.

    GNSS cruises below the limit, so every overspeed alert comes from CAN speed (the
    engine prefers it while fresh); while the adapter is out the engine falls back to
    GNSS speed and the episode ends; after the replug CAN speeding raises alerts again.
    """
    adapter = SlcanPtyAdapter(link=tmp_path / "ttyACM0")
    can = CanFeeder(adapter, period=0.02, toggle=25)  # 0.5 s at 90 km/h, 0.5 s at 30
    cycles = 3 if scale.full else 1
    try:
        for r in _rig(tmp_path, broker, scale, make=cruise_epoch,
                      extra=_can_section(adapter.path)):
            r.feeder.start()
            can.start()
            r.daemon.start()
            assert adapter.wait_open(20), ("the daemon never opened the adapter",
                                           r.daemon.stderr_tail())
            assert wait_until(partial(_overspeeds_at_least, r, 2), 20), (
                _can_health(r), r.daemon.stderr_tail())
            for n in range(1, cycles + 1):
                opens = int(str(_can_health(r).get("opens", 0)))
                adapter.unplug()
                assert wait_until(partial(_can_closed, r), 5), (
                    _can_health(r), r.daemon.stderr_tail())
                time.sleep(2.0 if scale.full else 1.0)  # the daemon keeps trying meanwhile
                assert r.daemon.alive(), r.daemon.stderr_tail()
                unplugged = _can_health(r)
                assert unplugged.get("state") != "open", unplugged
                before = len(r.ledger.accepted_on("overspeed"))
                adapter.replug()  # a new device node behind the same path
                assert adapter.wait_open(10), (_can_health(r), r.daemon.stderr_tail())
                # CAN speeding raises alerts again: at least one start and one end
                assert wait_until(partial(_overspeeds_at_least, r, before + 2), 15), (
                    _can_health(r), r.daemon.stderr_tail())
                assert wait_until(partial(_can_reopened, r, opens), 5), (
                    _can_health(r), r.daemon.stderr_tail())
                assert int(str(_can_health(r).get("reopens", 0))) >= n, _can_health(r)
            h = r.health()
            health_can = _can_health(r)
            assert int(str(health_can.get("samples", 0))) > 0, health_can
            speed = h.get("speed")
            assert isinstance(speed, dict) and speed.get("source") == "can", speed
            assert r.daemon.starts == 1, "the daemon was restarted"
            can.pause()
            r.finish("slcan-unplug", record_tally, unplugs=cycles,
                     can_frames_lost=can.lost, reopens=health_can.get("reopens"),
                     open_failures=health_can.get("open_failures"))
            # every overspeed came from the bus: GNSS alone never exceeds the limit
            speeds = _overspeed_speeds(r)
            assert len(speeds) >= 2 and all(v == pytest.approx(CAN_FAST_KMH) for v in speeds)
            assert LIMIT_KMH < CAN_FAST_KMH
    finally:
        can.close()
        adapter.close()


# --------------------------------------------------------------------------- issue 15


def _counters_now(r: Rig) -> dict[str, int]:
    return r.ledger.counters()


def _events(r: Rig, kind: str) -> list[dict[str, object]]:
    """Distinct (by id) events of one kind the observer received."""
    seen: dict[str, dict[str, object]] = {}
    for topic, payload in r.sub.messages:
        if topic.endswith(f"/events/{kind}"):
            body = json.loads(payload)
            seen.setdefault(str(body["id"]), body)
    return list(seen.values())


def _fill(path: Path, nbytes: int) -> None:
    with path.open("wb") as f:
        left = nbytes
        while left > 0:
            n = min(65536, left)
            f.write(b"\0" * n)
            left -= n


def test_near_full_disk_broker_down_for_the_whole_drive_then_up(
    tmp_path: Path, broker: Broker, scale: Scale, record_tally: list[Tally]
) -> None:
    """The issue's report: a 2 MiB tmpfs with 1 MiB already used, the broker unreachable
    for the whole drive, then back. Every accepted alert is delivered; telemetry (then
    health) is what gives way; the WAL stays small; the daemon says the disk is low."""
    with tmpfs(tmp_path / "disk", "2m") as disk:
        _fill(disk / "filler", 1024 * 1024)
        for r in _rig(tmp_path, broker, scale, outbox=disk / "outbox.db"):
            r.net.down()
            r.feeder.start()
            r.daemon.start()
            wal_max = 0
            while r.feeder.index < scale.outage_drive_s:
                with contextlib.suppress(OSError):
                    wal_max = max(wal_max, (disk / "outbox.db-wal").stat().st_size)
                time.sleep(0.05)
            assert r.daemon.alive(), r.daemon.stderr_tail()
            assert wait_until(lambda r=r: bool(r.health().get("disk")), 5)
            disk_health = r.health()["disk"]
            assert isinstance(disk_health, dict) and disk_health["pressure"] is True
            counters = _counters_now(r)
            assert counters.get("evicted_alert", 0) == 0, counters
            assert counters.get("dropped_full_alert", 0) == 0, counters
            lower_gone = sum(counters.get(f"{k}_{lane}", 0) for k in ("evicted", "dropped_full")
                             for lane in ("telemetry", "health"))
            assert lower_gone > 0, counters  # telemetry gave way, not alerts
            # the status an operator reads says so
            st = subprocess.run([sys.executable, "-m", "edge", "status", "--config",
                                 str(r.daemon.cfg)], capture_output=True, text=True)
            assert "disk space low" in st.stderr, st.stderr
            assert r.ledger.pending_alerts() > 0
            r.finish("near-full-disk", record_tally, fs="tmpfs 2 MiB, 1 MiB used",
                     wal_max_kb=round(wal_max / 1024),
                     evicted_telemetry=counters.get("evicted_telemetry", 0),
                     evicted_health=counters.get("evicted_health", 0),
                     evicted_alert=counters.get("evicted_alert", 0),
                     reserve_kb=round(int(str(disk_health.get("reserve_bytes", 0))) / 1024))
            assert wal_max <= 320 * 1024, wal_max  # ~256 KiB checkpoint + one commit


def test_purge_of_the_telemetry_lane_while_the_daemon_runs_evicts_no_alert(
    tmp_path: Path, broker: Broker, scale: Scale, record_tally: list[Tally]
) -> None:
    """``edge outbox purge --lane telemetry`` from a second process, again and again,
    while the daemon writes into an outbox at its cap with the broker down."""
    cap_mb = scale.outage_drive_s * 250 / 1024 / 1024
    for r in _rig(tmp_path, broker, scale, max_mb=cap_mb):
        r.net.down()
        r.feeder.start()
        r.daemon.start()
        assert wait_until(lambda r=r: _counters_now(r).get("evicted_telemetry", 0) > 0, 30), (
            _counters_now(r), r.daemon.stderr_tail())
        purges = 0
        while r.feeder.index < 2 * scale.outage_drive_s:
            p = subprocess.run([sys.executable, "-m", "edge", "outbox", "purge", "--config",
                                str(r.daemon.cfg), "--lane", "telemetry", "--yes"],
                               capture_output=True, text=True)
            assert p.returncode == 0, p.stderr
            purges += 1
            time.sleep(0.3)
        assert r.daemon.alive(), r.daemon.stderr_tail()
        counters = _counters_now(r)
        assert counters.get("evicted_alert", 0) == 0, counters
        assert counters.get("purged", 0) > 0
        tool = Outbox(r.ledger.db, recover=False)  # beside the running daemon
        try:
            assert tool.integrity_ok()  # totals equal a fresh count
        finally:
            tool.close()
        r.finish("purge-live", record_tally, purges=purges, purged=counters.get("purged"),
                 evicted_alert=counters.get("evicted_alert", 0),
                 evicted_telemetry=counters.get("evicted_telemetry", 0))


def test_kill9_mid_trip_is_one_trip_with_each_poi_once(
    tmp_path: Path, broker: Broker, scale: Scale, record_tally: list[Tally]
) -> None:
    """``kill -9`` of the daemon again and again during one drive (POIs along the road):
    one trip start, no second one, no trip ended by the restarts, every POI offered at
    most once."""
    rnd = random.Random(15)
    for r in _rig(tmp_path, broker, scale, pois=60,
                  extra="[rules.poi]\nmax_per_hour = 100000\n"):
        r.feeder.start()
        r.daemon.start()
        assert r.sub.wait_for(lambda m: any(t.endswith("/events/trip") for t, _ in m), 20), (
            r.daemon.stderr_tail())
        r.kill_and_restart(scale.kills, rnd, 0.3, 2.0)
        t = r.finish("kill-9-mid-trip", record_tally, kills=r.daemon.kills)
        trips = _events(r, "trip")
        starts = [b for b in trips if b.get("phase") == "start"]
        assert len(starts) == 1, starts
        assert not [b for b in trips if b.get("reason") == "power_loss"], trips
        ends = [b for b in trips if b.get("phase") == "end"]
        assert all(b["start_ts"] == starts[0]["start_ts"] for b in ends), ends
        offers = Counter(str(b["poi"]) for b in _events(r, "poi"))
        assert offers, "the drive passed no POI while the daemon ran"
        assert max(offers.values()) == 1, offers
        t.extra.update(trip_starts=len(starts), pois_offered=len(offers),
                       poi_max_offers=max(offers.values()))


def test_start_on_a_disk_too_full_to_open_then_little_space(
    tmp_path: Path, broker: Broker, scale: Scale, record_tally: list[Tally]
) -> None:
    """The daemon starts with 16 KiB free (not even room for SQLite's shared memory):
    it runs, says so (health, ``edge status``), holds its messages in memory; with a
    little room (256 KiB) it opens the outbox, commits what it held and goes on."""
    with tmpfs(tmp_path / "disk", "2m") as disk:
        for r in _rig(tmp_path, broker, scale, outbox=disk / "outbox.db"):
            free = shutil.disk_usage(disk).free
            _fill(disk / "filler", free - 16 * 1024)
            r.feeder.start()
            r.daemon.start()
            assert wait_until(lambda r=r: r.health().get("outbox_mode") == "memory-fallback",
                              20), (r.health(), r.daemon.stderr_tail())
            time.sleep(1.0)
            assert r.daemon.alive(), r.daemon.stderr_tail()
            h = r.health()
            assert isinstance(h.get("disk"), dict) and h["disk"]["pressure"] is True
            assert isinstance(h.get("queue"), int) and h["queue"] > 0  # held in memory
            st = subprocess.run([sys.executable, "-m", "edge", "status", "--config",
                                 str(r.daemon.cfg)], capture_output=True, text=True)
            assert "outbox not writable" in st.stderr and "disk space low" in st.stderr, (
                st.stderr)
            held = h["queue"]
            os.truncate(disk / "filler", (disk / "filler").stat().st_size - 256 * 1024)
            assert wait_until(lambda r=r: r.health().get("outbox_mode") == "disk", 30), (
                r.health(), r.daemon.stderr_tail())
            assert wait_until(partial(_accepted_at_least, r, 10), 20), r.daemon.stderr_tail()
            r.finish("start-disk-full", record_tally, free_at_start_kb=16, held_in_memory=held,
                     then_free_kb=256)


class _DoubledScale(CanFeeder):
    """The ABS speed through a DBC whose scale is doubled: twice the GNSS speed."""

    def speed(self, i: int) -> float:
        return 2 * 30.0


def test_a_lying_speed_sensor_is_reported_once_and_gnss_followed(
    tmp_path: Path, broker: Broker, scale: Scale, record_tally: list[Tally]
) -> None:
    """CAN speed (over slcan) twice the GNSS speed for the whole drive, a 50 km/h limit:
    the daemon logs it once, sends one ``diagnostic`` alert, and (source_policy
    fallback) follows GNSS: the overspeed CAN started ends on GNSS speed, no other."""
    adapter = SlcanPtyAdapter(link=tmp_path / "ttyACM0")
    can = _DoubledScale(adapter, period=0.02)
    extra = _can_section(adapter.path) + "disagree_kmh = 15.0\ndisagree_s = 1.0\n"
    try:
        for r in _rig(tmp_path, broker, scale, make=cruise_epoch, extra=extra):
            r.feeder.start()
            can.start()
            r.daemon.start()
            assert adapter.wait_open(20), r.daemon.stderr_tail()
            assert wait_until(lambda r=r: len(_events(r, "diagnostic")) > 0, 20), (
                r.health().get("speed"), r.daemon.stderr_tail())
            time.sleep(3.0)  # the disagreement goes on
            speed = r.health().get("speed")
            assert isinstance(speed, dict) and speed["implausible"] is True, speed
            assert speed["source"] == "gnss" and speed["policy"] == "fallback", speed
            can.pause()
            t = r.finish("lying-sensor", record_tally)
            (diag,) = _events(r, "diagnostic")  # once, though it lasted the whole drive
            assert diag["phase"] == "start" and diag["can_kmh"] == pytest.approx(60.0)
            assert diag["gnss_kmh"] == pytest.approx(30.0, abs=0.5)
            starts = [b for b in _events(r, "overspeed") if b.get("phase") == "start"]
            assert all(b["speed_source"] == "can" for b in starts) and len(starts) <= 1
            ends = [b for b in _events(r, "overspeed") if b.get("phase") == "end"]
            assert all(b["speed_source"] == "gnss" for b in ends), ends
            warned = [line for line in r.daemon.stderr_tail(200_000).splitlines()
                      if "speed sources disagree" in line]
            assert len(warned) == 1, warned
            t.extra.update(diagnostics=1, overspeed_starts=len(starts))
    finally:
        can.close()
        adapter.close()
