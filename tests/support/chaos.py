"""Fault-injection parts for the chaos suite and the daemon benchmark.

Everything here is real: the daemon is an ``edge run`` process, the GNSS receiver is a
pty behind a symlink (so a replug is a new device node under the same name, as udev's
``/dev/serial/by-id`` link gives), the broker is Mosquitto with mutual TLS, and the
network between the daemon and the broker is a TCP proxy that can drop every
connection and refuse new ones (``NetCut``) while the observer stays connected
directly to the broker, so "broker unreachable" never costs the observer a message.

The ledger: before the daemon first opens its outbox, ``Ledger`` adds a table and an
``AFTER INSERT`` trigger to the outbox database. The trigger runs inside the daemon's
own transaction, so the table holds exactly the alerts whose commit succeeded, that is
the alerts the daemon *accepted*, with their envelope ids, even when ids are random and
the process is killed mid-transaction (a rolled-back insert leaves no ledger row).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.broker import Broker, Subscriber
from tests.support.nmea import epoch

THING = "car-test-1"
T0 = datetime(2026, 5, 4, 12, 0, 0, tzinfo=UTC)
LAT0, LON0 = 48.1351, 11.5820
STEP_DEG = 1e-4  # ~11 m per epoch: the car drives north at a steady pace
LIMIT_KMH = 50.0
FAST_KMH, SLOW_KMH = 70.0, 30.0
TOGGLE = 4  # epochs fast, then epochs slow: one overspeed start and one end per 8 s


# --------------------------------------------------------------------------- the drive


def drive_epoch(i: int) -> bytes:
    """Epoch ``i`` of an endless drive north; overspeed starts and ends every 8 s."""
    speed = FAST_KMH if (i // TOGGLE) % 2 == 0 else SLOW_KMH
    return epoch(T0 + timedelta(seconds=i), LAT0 + i * STEP_DEG, LON0, speed)


def cruise_epoch(i: int) -> bytes:
    """Like ``drive_epoch`` at a steady ``SLOW_KMH``: GNSS speed alone never speeds."""
    return epoch(T0 + timedelta(seconds=i), LAT0 + i * STEP_DEG, LON0, SLOW_KMH)


CAN_SPEED_ID = 0x3E9  # VEHICLE_SPEED of sim/dbc/demo.dbc
CAN_FAST_KMH = 90.0  # well above LIMIT_KMH and far from any GNSS speed of the drives


def speed_frame(kmh: float, counter: int = 0) -> bytes:
    """VEHICLE_SPEED: SPEED_KMH 0.01 km/h per bit little endian, SPEED_VALID, counter."""
    data = bytearray(8)
    data[0:2] = round(kmh * 100).to_bytes(2, "little")
    data[2] = 0x01
    data[7] = counter & 0x0F
    return bytes(data)


POI_EVERY = 100  # epochs between two POIs on the road (~1.1 km)
POI_RADIUS_M = 300.0  # ~55 epochs of driving inside each


def write_zones(path: Path, n: int = 40, pois: int = 0) -> Path:
    """Fence stripes across the road every ~220 m (20 epochs): geofence enter/exit;
    ``pois`` POIs with offers on the road every ``POI_EVERY`` epochs."""
    feats: list[dict[str, Any]] = []
    for k in range(pois):
        feats.append({"type": "Feature",
                      "properties": {"id": f"poi-{k}", "radius_m": POI_RADIUS_M,
                                     "offer": {"text": f"offer {k}"}},
                      "geometry": {"type": "Point",
                                   "coordinates": [LON0, LAT0 + (k + 1) * POI_EVERY * STEP_DEG]}})
    for k in range(n):
        lat0 = LAT0 + (k * 20 + 5) * STEP_DEG
        lat1 = lat0 + 8 * STEP_DEG
        ring = [[LON0 - 0.01, lat0], [LON0 + 0.01, lat0], [LON0 + 0.01, lat1],
                [LON0 - 0.01, lat1], [LON0 - 0.01, lat0]]
        feats.append({"type": "Feature", "properties": {"id": f"stripe-{k}", "kind": "fence"},
                      "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def write_config(
    d: Path, broker: Broker, gnss_port: str | Path, *, port: int | None = None,
    outbox: Path | None = None, max_mb: float = 64.0, health: Path | None = None,
    extra: str = "", pois: int = 0,
) -> Path:
    """An ``edge run`` config whose drive produces alerts (low limit, no debounce)."""
    zones = write_zones(d / "zones.geojson", pois=pois)
    uplink = broker.uplink_section(THING)
    if port is not None:
        uplink = uplink.replace(f"port = {broker.port}\n", f"port = {port}\n")
    uplink = uplink.replace("backoff_max_s = 2.0", "backoff_max_s = 1.0")
    cfg = d / "edge.toml"
    cfg.write_text(
        f'thing = "{THING}"\n'
        "[gnss]\n"
        f'port = "{gnss_port}"\n'
        "reopen_max_s = 0.5\n"
        "[rules]\n"
        f'zones = "{zones}"\n'
        "[rules.speed]\n"
        f"limit_kmh = {LIMIT_KMH}\nmin_duration_s = 0.0\nend_after_s = 0.0\n"
        "[rules.geofence]\ndebounce_s = 0.0\nhysteresis_m = 0.0\n"
        "[outbox]\n"
        f'path = "{outbox or d / "outbox.db"}"\n'
        f"max_mb = {max_mb}\n"
        "[health]\ninterval_s = 1.0\n"
        f'path = "{health or d / "health.json"}"\n'
        '[log]\nformat = "json"\nlevel = "warning"\n'
        + uplink
        + extra
    )
    return cfg


class Feeder:
    """A GNSS receiver on a pty behind a stable symlink; can be unplugged and replugged.

    Writes ``drive_epoch(i)`` every ``period`` seconds of wall time. Writes never block:
    like a real receiver, what nobody reads is lost once the pty buffer is full.
    """

    def __init__(self, link: Path, period: float = 0.02,
                 make: Callable[[int], bytes] = drive_epoch) -> None:
        self.link = link
        self.period = period
        self.make = make
        self.index = 0  # next epoch to write
        self.lost = 0
        self.unplugs = 0
        self._lock = threading.Lock()
        self._master: int | None = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._t = threading.Thread(target=self._run, name="feeder", daemon=True)
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)
        fl = fcntl.fcntl(master, fcntl.F_GETFL)
        fcntl.fcntl(master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        tmp = self.link.with_suffix(".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(name)
        os.replace(tmp, self.link)
        with self._lock:
            self._master = master

    def unplug(self) -> None:
        """The USB receiver is pulled: the device node goes away and reads fail."""
        with self._lock:
            m, self._master = self._master, None
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        if m is not None:
            os.close(m)
        self.unplugs += 1

    def start(self) -> Feeder:
        self._t.start()
        return self

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            if not self._paused.is_set():
                data = self.make(self.index)
                with self._lock:
                    m = self._master
                    if m is not None:
                        try:
                            os.write(m, data)
                        except OSError as exc:
                            if exc.errno not in (errno.EAGAIN, errno.EIO):
                                raise
                            self.lost += 1
                    else:
                        self.lost += 1
                self.index += 1
            nxt += self.period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        if self._t.is_alive():
            self._t.join(5)
        self.unplug()


class CanFeeder:
    """The ABS unit on the bus behind an slcan adapter (``sim.slcan.SlcanPtyAdapter``).

    Sends VEHICLE_SPEED every ``period`` seconds: ``toggle`` frames at ``CAN_FAST_KMH``,
    then ``toggle`` frames at ``SLOW_KMH``, and again. A frame sent while the adapter is
    unplugged or its channel closed is lost (``lost``), as on a real bus.
    """

    def __init__(self, adapter: Any, period: float = 0.02, toggle: int = 25) -> None:
        self.adapter = adapter
        self.period = period
        self.toggle = toggle
        self.index = 0
        self.sent = 0
        self.lost = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._t = threading.Thread(target=self._run, name="can-feeder", daemon=True)

    def speed(self, i: int) -> float:
        return CAN_FAST_KMH if (i // self.toggle) % 2 == 0 else SLOW_KMH

    def start(self) -> CanFeeder:
        self._t.start()
        return self

    def pause(self) -> None:
        self._paused.set()

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            if not self._paused.is_set():
                i = self.index
                if self.adapter.send(CAN_SPEED_ID, speed_frame(self.speed(i), i)):
                    self.sent += 1
                else:
                    self.lost += 1
                self.index += 1
            nxt += self.period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        if self._t.is_alive():
            self._t.join(5)


# --------------------------------------------------------------------------- the network


class NetCut:
    """A TCP proxy between the daemon and the broker that can cut the link.

    ``down()`` drops every open connection and refuses new ones (accepted, then
    closed at once: the daemon's TLS handshake fails); ``up()`` restores it.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(16)
        self.port = int(self._srv.getsockname()[1])
        self._up = True
        self._stalled = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self.cuts = 0
        threading.Thread(target=self._accept, name="netcut", daemon=True).start()

    @property
    def is_up(self) -> bool:
        return self._up

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            if not self._up:
                c.close()
                continue
            try:
                s = socket.create_connection(self.target, timeout=2)
            except OSError:
                c.close()
                continue
            s.settimeout(None)
            with self._lock:
                self._conns += [c, s]
            for a, b in ((c, s), (s, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                while self._stalled.is_set() and not self._closed:
                    time.sleep(0.01)  # held: the peer sees a live but silent link
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                with contextlib.suppress(OSError):
                    x.shutdown(socket.SHUT_RDWR)
                x.close()
            with self._lock:
                self._conns = [x for x in self._conns if x not in (a, b)]

    def down(self) -> None:
        self._up = False
        self.cuts += 1
        with self._lock:
            conns, self._conns = self._conns, []
        for x in conns:
            with contextlib.suppress(OSError):
                x.shutdown(socket.SHUT_RDWR)
            x.close()

    def up(self) -> None:
        self._up = True

    def stall(self, on: bool = True) -> None:
        """Keep every connection open but forward nothing (a black-holed route):
        the daemon stays "connected" while no PUBACK ever comes back."""
        if on:
            self._stalled.set()
        else:
            self._stalled.clear()

    def close(self) -> None:
        self._closed = True
        self._stalled.clear()
        self.down()
        self._srv.close()


# --------------------------------------------------------------------------- the ledger

_LEDGER_SQL = """
CREATE TABLE IF NOT EXISTS chaos_accepted (
    n      INTEGER PRIMARY KEY AUTOINCREMENT,
    id     TEXT NOT NULL,
    topic  TEXT NOT NULL,
    at     REAL NOT NULL DEFAULT (julianday('now'))
);
CREATE TRIGGER IF NOT EXISTS chaos_accepted_alert AFTER INSERT ON messages
WHEN NEW.lane = 0
BEGIN
    INSERT INTO chaos_accepted (id, topic) VALUES (NEW.id, NEW.topic);
END;
"""


class Ledger:
    """Accepted alerts, recorded by a trigger inside the daemon's own commits."""

    def __init__(self, db: Path) -> None:
        from edge.outbox import Outbox

        self.db = db
        Outbox(db).close()  # the daemon's schema, WAL mode
        with contextlib.closing(sqlite3.connect(db)) as c:
            c.executescript(_LEDGER_SQL)

    def accepted(self) -> list[str]:
        with contextlib.closing(sqlite3.connect(self.db, timeout=10)) as c:
            return [r[0] for r in c.execute("SELECT id FROM chaos_accepted ORDER BY n")]

    def accepted_on(self, kind: str) -> list[str]:
        """Accepted alert ids of one event kind (the topic's last level)."""
        with contextlib.closing(sqlite3.connect(self.db, timeout=10)) as c:
            return [r[0] for r in c.execute(
                "SELECT id FROM chaos_accepted WHERE topic LIKE ? ORDER BY n", (f"%/{kind}",))]

    def counters(self) -> dict[str, int]:
        with contextlib.closing(sqlite3.connect(self.db, timeout=10)) as c:
            return dict(c.execute("SELECT name, value FROM counters").fetchall())

    def pending_alerts(self) -> int:
        with contextlib.closing(sqlite3.connect(self.db, timeout=10)) as c:
            return int(c.execute("SELECT COUNT(*) FROM messages WHERE lane = 0").fetchone()[0])


def alert_ids(messages: list[tuple[str, bytes]], thing: str = THING) -> list[str]:
    """Ids of every alert the observer received (duplicates kept)."""
    out = []
    for topic, payload in messages:
        if topic.startswith(f"vehicles/{thing}/events/") and not topic.endswith("/trip"):
            out.append(str(json.loads(payload)["id"]))
    return out


@dataclass
class Tally:
    """One case's delivery ledger."""

    case: str
    accepted: int
    delivered: int  # distinct accepted ids seen by the observer
    lost: list[str]
    invented: list[str]
    duplicates: int
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return (f"ledger[{self.case}]: {self.accepted} alerts accepted, {self.delivered} "
                f"delivered, {len(self.lost)} lost, {len(self.invented)} invented, "
                f"{self.duplicates} duplicates {self.extra}")


def tally(case: str, accepted: list[str], received: list[str], **extra: Any) -> Tally:
    acc = set(accepted)
    got = set(received)
    return Tally(case=case, accepted=len(acc), delivered=len(acc & got),
                 lost=sorted(acc - got), invented=sorted(got - acc),
                 duplicates=len(received) - len(got), extra=extra)


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """``edge run`` as a child process; stderr goes to a file (never a full pipe)."""

    def __init__(self, cfg: Path, log: Path, *, preexec: Callable[[], None] | None = None
                 ) -> None:
        self.cfg = cfg
        self.log = log
        self.preexec = preexec
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> Daemon:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge", "run", "--config", str(self.cfg)],
                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=self.preexec,
            )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return int(self.proc.returncode)

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def settle(ledger: Ledger, sub: Subscriber, timeout: float = 60.0) -> bool:
    """Wait until every accepted alert reached the observer."""
    def done() -> bool:
        return set(ledger.accepted()) <= set(alert_ids(sub.messages))
    return wait_until(done, timeout, 0.2)
