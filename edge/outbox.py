"""The durable outbox: an SQLite (WAL) queue between the core and the uplink.

Synchronous API — async code calls it through ``asyncio.to_thread`` — over one
connection guarded by a lock. Other processes (``edge outbox stats | purge``) may open
the same database at the same time: nothing is cached across transactions.

* Lanes by priority (``edge.model.Lane``): alerts drain first and are evicted last.
  FIFO within a lane.
* At-least-once: ``claim`` marks rows in flight, ``ack`` deletes them only after the
  uplink confirmed; ``release`` returns them to ready. Rows in flight when the process
  died are ready again on the next open. Settling acts only on rows still in flight and
  counts what it really deleted, so a row is never settled twice (a purge or an
  eviction may have taken it meanwhile). ``id`` is UNIQUE: a re-put of the same
  envelope is ignored (``INSERT OR IGNORE``).
* Durability: a batch holding an alert or a trip edge commits with
  ``synchronous=FULL`` (the WAL is fsync'd before ``put`` returns). Telemetry and health
  commit with ``synchronous=NORMAL`` (group commit, no fsync) except that a commit made
  ``sync_interval_s`` or more after the last fsync is FULL again: a power cut loses at
  most the telemetry of the last ``sync_interval_s`` seconds, never an alert (an fsync of
  the WAL covers every earlier frame). ``alert_sync="normal"`` trades the alert
  guarantee away for speed.
* Bounds, all enforced inside the writing transaction:
  ``max_bytes`` caps the payload bytes stored — over it, the oldest rows of the least
  important lane go first (telemetry, health, trips, then alerts: ``EVICT_ORDER``);
  ``lane_max_bytes`` caps one lane; ``ttl_s`` expires a lane's rows older than that
  (by the wall clock at insertion). Every drop is counted (``evicted_<lane>``,
  ``expired_<lane>``, ``dropped_full_<lane>``, ``rejected``, ``purged``) in ``stats()``
  and survives restarts.
* Totals: row and byte counts per lane live in the ``lanes`` table, kept by triggers
  on ``messages`` (so every writer, in any process, keeps them right) and read inside
  the writing transaction. Opening is O(1) in the backlog.
* Disk pressure (``edge.outbox.Disk``): the outbox holds a reserve file beside the
  database (``reserve_bytes``) that is released only to alerts and trip edges. Below
  ``min_free_bytes`` of free space the WAL is checkpointed after every commit and the
  lower lanes stop growing (each put of telemetry, or health, evicts as many bytes of
  that lane's oldest rows). When SQLite reports the disk full, the put first makes room by
  evicting lower lanes; if that is not enough its lower-lane rows are dropped (counted
  per lane) and its alerts get the reserve. Only when even that fails does ``put``
  raise (the daemon then holds the alerts in memory and retries).
* Schema version in ``PRAGMA user_version`` (``SCHEMA_VERSION``); an older database is
  migrated in one transaction on open (version 0, before versioning: duplicate ids are
  folded, the UNIQUE index, the triggers and the ``state`` table are added, the lane
  totals recounted). A newer one is refused with a clear error.
* ``state``: small named JSON documents written in the same transaction as the
  envelopes they belong to (``put(..., state=...)``): the rules' state across restarts.
* Private (``edge.private``): the database, its ``-wal``/``-shm`` and the reserve are
  created 0600 in a folder created 0700; the owner's open tightens them (or refuses).
* Encryption at rest (``sealer``, ``edge.seal``): payloads and state documents are
  sealed as they go in, opened as they come out (``claim``, ``iter_rows``,
  ``load_state``). The sealed value holds the real topic; the ``topic`` column keeps
  a template with the thing's segment as ``+`` (``vehicles/+/events/overspeed``), so
  the lane, kind and size stay plain and the thing name is not on disk. A row that no
  configured key opens is never deleted: ``claim`` sets it aside (``HELD``, counted as
  ``undecryptable``) and the next open offers it again (with the right key back).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from edge.errors import OutboxError
from edge.logconf import Once
from edge.model import Envelope, Lane
from edge.private import private_dir, private_file, tighten

if TYPE_CHECKING:
    from edge.config import OutboxConfig
    from edge.seal import Sealer

log = structlog.get_logger()

READY = 0
INFLIGHT = 1
HELD = 2  # sealed with a key this process does not have: kept, not offered again
MB = 1024 * 1024
SCHEMA_VERSION = 1

# least important first: what goes when space runs out
EVICT_ORDER = (Lane.TELEMETRY, Lane.HEALTH, Lane.TRIP, Lane.ALERT)
LOWER = (Lane.TELEMETRY, Lane.HEALTH)  # lanes that never get the reserve

# version 0: the schema before versioning (kept so a fresh database and a migrated one
# end up the same)
_V0 = [
    """CREATE TABLE IF NOT EXISTS messages (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT    NOT NULL,
    lane     INTEGER NOT NULL,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    created  REAL    NOT NULL,
    state    INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS messages_ready ON messages (state, lane, seq)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS lanes (
    lane  INTEGER PRIMARY KEY,
    rows  INTEGER NOT NULL,
    bytes INTEGER NOT NULL
)""",
]

# version 1: UNIQUE id, totals kept by triggers, rule state
_V1 = [
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_id ON messages (id)",
    """CREATE TABLE IF NOT EXISTS state (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    updated REAL NOT NULL
)""",
    """CREATE TRIGGER IF NOT EXISTS lanes_insert AFTER INSERT ON messages BEGIN
    UPDATE lanes SET rows = rows + 1, bytes = bytes + LENGTH(NEW.payload)
    WHERE lane = NEW.lane;
END""",
    """CREATE TRIGGER IF NOT EXISTS lanes_delete AFTER DELETE ON messages BEGIN
    UPDATE lanes SET rows = rows - 1, bytes = bytes - LENGTH(OLD.payload)
    WHERE lane = OLD.lane;
END""",
]

# how often (at most) put() looks for rows past their TTL
EXPIRE_EVERY_S = 30.0
# disk pressure ends only once free space is back above min_free + this
PRESSURE_HYSTERESIS = 128 * 1024
# the WAL is truncated to this under disk pressure (journal_size_limit)
PRESSURE_WAL_BYTES = 64 * 1024
# less free space than this: the WAL is kept to ~256 KiB instead of ~1 MiB
SMALL_DISK_BYTES = 16 * MB
# how often (at most) a reserve that was released is taken back
RESERVE_RETRY_S = 5.0
# the reserve never takes the last bytes of a disk: the WAL needs room to work at all
RESERVE_SPARE = 128 * 1024
# a put that hit the disk-full wall makes room for this many times its own bytes
SQUEEZE_FACTOR = 2
SQUEEZE_MIN = 16 * 1024


def _is_full(exc: BaseException) -> bool:
    """SQLITE_FULL (ENOSPC or max_page_count), however SQLite words it."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) == sqlite3.SQLITE_FULL:
        return True
    return isinstance(exc, sqlite3.Error) and "full" in str(exc)


def free_bytes(path: Path) -> int | None:
    """Free space (for an unprivileged writer) on the file system holding ``path``."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return int(st.f_bavail * st.f_frsize)


class Reserve:
    """A file of ``target`` bytes beside the database: space the outbox holds for alerts.

    ``release()`` gives it back to the file system (for an alert that hit a full disk);
    ``acquire()`` takes back what the file system can spare. Written with real blocks
    (``posix_fallocate``, else zeros), so it is space, not a sparse promise."""

    CHUNK = 64 * 1024

    def __init__(self, path: Path, target: int) -> None:
        self.path = path
        self.target = max(0, int(target))
        self.releases = 0

    @property
    def held(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def acquire(self, spare: int = 0) -> int:
        """Grow towards ``target``, leaving ``spare`` bytes free; returns bytes held."""
        held = self.held
        if held >= self.target:
            return held
        free = free_bytes(self.path.parent) or 0
        want = min(self.target, held + max(0, free - spare))
        want -= want % 4096
        if want <= held:
            return held
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "ab") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, want)
                except OSError:
                    f.seek(0, os.SEEK_END)
                    left = want - f.tell()
                    while left > 0:
                        n = min(self.CHUNK, left)
                        f.write(b"\0" * n)
                        left -= n
                    f.flush()
        except OSError:
            pass  # took what there was
        return self.held

    def release(self) -> int:
        """Give the space back; returns how many bytes were freed."""
        held = self.held
        if held:
            with contextlib.suppress(OSError):
                os.truncate(self.path, 0)
            self.releases += 1
        return held


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    id: str
    lane: Lane
    topic: str
    payload: bytes
    attempts: int


class Outbox:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 64 * MB,
        alert_sync: str = "full",
        lane_max_bytes: Mapping[Lane, int] | None = None,
        ttl_s: Mapping[Lane, float] | None = None,
        sync_interval_s: float = 5.0,
        reserve_bytes: int = 0,
        min_free_bytes: int = 0,
        clock: Callable[[], float] = time.time,
        recover: bool = True,
        sealer: Sealer | None = None,
    ) -> None:
        """``recover=False`` is for tools that open the outbox beside a running daemon
        (``edge outbox stats``): rows in flight are that daemon's, not leftovers; such a
        tool holds no reserve either."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.alert_sync = alert_sync
        self.lane_max_bytes = {Lane(k): int(v) for k, v in (lane_max_bytes or {}).items()}
        self.ttl_s = {Lane(k): float(v) for k, v in (ttl_s or {}).items()}
        self.sync_interval_s = sync_interval_s
        self.min_free_bytes = int(min_free_bytes)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_fsync = -1e18
        self._next_expire = -1e18
        self._next_reserve = -1e18
        self.recovered = 0
        self.migrated_from: int | None = None
        self.pressure = False
        self.free: int | None = None
        self.wal_bytes = 0
        self._wal_level = ""
        self.full_events = 0
        # drops that could not be written yet (the disk was full): folded into the
        # next transaction that commits
        self._unsaved: dict[str, int] = {}
        self.batch_dropped = 0  # rows of the last put's own batch that had no room
        self.batch_left: list[Envelope] = []  # ... and that the caller holds (hold_lower)
        self.unreadable: list[str] = []  # sealed values no key opened (why, per value)
        self._held_bytes: dict[Lane, int] = {}  # bytes of this process's HELD rows
        self._once = Once()
        self.sealer = sealer
        self.reserve = Reserve(self.path.with_name(self.path.name + ".reserve"),
                               reserve_bytes if recover else 0)
        try:
            if recover:  # the owner: private files (a tool beside it only reads them)
                private_dir(self.path.parent)
                private_file(self.path)
                for extra in ("-wal", "-shm", ".reserve"):
                    tighten(self.path.with_name(self.path.name + extra))
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            try:
                self._open(recover)
            except BaseException:
                self._db.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        # the schema's pages out of the WAL at once: a small disk starts with a short WAL
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._check_disk()
        if self.reserve.target:
            self.reserve.acquire(spare=RESERVE_SPARE)

    def _open(self, recover: bool) -> None:
        db = self._db
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        new = pages == 0
        if new:
            # a new database: freed pages can go back to the file system
            # (incremental_vacuum under disk pressure); its schema is written straight
            # into the file (rollback journal) before WAL mode, so a small disk does not
            # need room for the schema twice (WAL and database) to start
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        else:
            db.execute("PRAGMA journal_mode=WAL")
        self._wal_limits("small")  # until the first look at the free space
        # a 1 MiB page cache (SQLite's default is 2 MiB): the queue is read in index
        # order, a big cache buys nothing on a gateway that counts megabytes
        db.execute("PRAGMA cache_size=-1024")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.path} has schema version {version}, this edge knows"
                    f" {SCHEMA_VERSION}: written by a newer version")
            if version < SCHEMA_VERSION:
                self._migrate_locked(version)
            if recover:
                cur = db.execute("UPDATE messages SET state = ? WHERE state != ?",
                                 (READY, READY))
                self.recovered = cur.rowcount
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if new:
            db.execute("PRAGMA journal_mode=WAL")

    def _migrate_locked(self, version: int) -> None:
        db = self._db
        for stmt in _V0:
            db.execute(stmt)
        if version < 1:
            # ids were not unique before: keep the first of each, count the rest
            cur = db.execute("DELETE FROM messages WHERE seq NOT IN"
                             " (SELECT MIN(seq) FROM messages GROUP BY id)")
            if cur.rowcount > 0:
                self._bump_locked("deduplicated", cur.rowcount)
            for stmt in _V1:
                db.execute(stmt)
            # totals from a full count once: from now on the triggers keep them
            db.execute("DELETE FROM lanes")
            counted = {
                lane: (n, b)
                for lane, n, b in db.execute(
                    "SELECT lane, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0)"
                    " FROM messages GROUP BY lane")
            }
            db.executemany(
                "INSERT INTO lanes (lane, rows, bytes) VALUES (?, ?, ?)",
                [(int(lane), *counted.get(int(lane), (0, 0))) for lane in Lane],
            )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.migrated_from = version

    def _wal_limits(self, level: str) -> None:
        """How big the WAL may grow: with room to spare (``roomy``) it is checkpointed
        every ~1 MiB and truncated back to 1 MiB (fewer checkpoints, faster group
        commits); on a small disk (``small``: less than ``SMALL_DISK_BYTES`` free) every
        ~256 KiB, since the WAL is what fills a small disk first; under disk pressure
        after every commit (the next writer rewinds it and reuses its space), truncated
        to 64 KiB."""
        pages, limit = {"pressure": (1, PRESSURE_WAL_BYTES), "small": (64, 256 * 1024),
                        "roomy": (256, 1024 * 1024)}[level]
        self._db.execute(f"PRAGMA wal_autocheckpoint={pages}")
        self._db.execute(f"PRAGMA journal_size_limit={limit}")
        self._wal_level = level

    @classmethod
    def from_config(cls, cfg: OutboxConfig, **kwargs: Any) -> Outbox:
        """The outbox as ``[outbox]`` describes it (quotas in MB, TTLs in hours)."""
        quotas = {
            Lane.TRIP: cfg.trip_max_mb,
            Lane.TELEMETRY: cfg.telemetry_max_mb,
            Lane.HEALTH: cfg.health_max_mb,
        }
        ttls = {
            Lane.TRIP: cfg.trip_ttl_h,
            Lane.TELEMETRY: cfg.telemetry_ttl_h,
            Lane.HEALTH: cfg.health_ttl_h,
        }
        return cls(
            cfg.path,
            max_bytes=int(cfg.max_mb * MB),
            alert_sync=cfg.alert_sync,
            lane_max_bytes={k: int(v * MB) for k, v in quotas.items() if v is not None},
            ttl_s={k: v * 3600.0 for k, v in ttls.items() if v is not None},
            sync_interval_s=cfg.sync_interval_s,
            reserve_bytes=int(cfg.reserve_mb * MB),
            min_free_bytes=int(cfg.min_free_mb * MB),
            sealer=sealer_for(cfg),
            **kwargs,
        )

    # ------------------------------------------------------------------ disk

    def _check_disk(self) -> None:
        """Free space now, and whether the outbox is under disk pressure (with the
        WAL limits that go with it). Only under the lock (it sets PRAGMAs)."""
        self.free = free_bytes(self.path.parent)
        try:
            self.wal_bytes = os.stat(f"{self.path}-wal").st_size
        except OSError:
            self.wal_bytes = 0
        if self.free is None:
            pressure = False
        else:
            # the WAL's space comes back at a checkpoint: it counts as free here
            room = self.free + max(0, self.wal_bytes - PRESSURE_WAL_BYTES)
            if self.pressure:  # hysteresis: the WAL's own breathing does not flap it
                pressure = room < self.min_free_bytes + PRESSURE_HYSTERESIS
            else:
                pressure = room < self.min_free_bytes
        level = "pressure" if pressure else "small" if (
            self.free is not None and self.free < SMALL_DISK_BYTES) else "roomy"
        if level != self._wal_level:
            with contextlib.suppress(sqlite3.Error):
                self._wal_limits(level)
        if pressure != self.pressure:
            self.pressure = pressure
            if pressure:
                self._once(log, "pressure", "outbox: disk space low, telemetry and health"
                           " stop growing", path=str(self.path), free_bytes=self.free,
                           min_free_bytes=self.min_free_bytes)
            else:
                log.info("outbox: disk space ok again", path=str(self.path),
                         free_bytes=self.free)

    def _retake_reserve(self) -> None:
        """Take back a released reserve once the file system has the space again (after
        the backlog drained and freed pages went back to it)."""
        r = self.reserve
        if not r.target or r.held >= r.target:
            return
        mono = time.monotonic()
        if mono < self._next_reserve:
            return
        self._next_reserve = mono + RESERVE_RETRY_S
        if self.pressure:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA incremental_vacuum")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # whole, and only when the disk has room besides: not from under the alerts
        free = free_bytes(self.path.parent) or 0
        if free >= r.target - r.held + max(RESERVE_SPARE, self.min_free_bytes):
            r.acquire(spare=RESERVE_SPARE)

    def _lane_totals_locked(self) -> dict[Lane, tuple[int, int]]:
        return {Lane(lane): (int(n), int(b)) for lane, n, b in self._db.execute(
            "SELECT lane, rows, bytes FROM lanes")}

    # ------------------------------------------------------------------ transactions

    def _write(self, what: str, body: Callable[[], Any], *, sync: str = "NORMAL") -> Any:
        """Run ``body`` in one IMMEDIATE transaction (the caller holds the lock)."""
        try:
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                if self._unsaved:
                    unsaved, self._unsaved = self._unsaved, {}
                    try:
                        for name, n in unsaved.items():
                            self._bump_locked(name, n)
                    except BaseException:
                        self._unsaved = _merged(self._unsaved, unsaved)
                        raise
                    try:
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._unsaved = _merged(self._unsaved, unsaved)
                        raise
                else:
                    self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _is_full(exc):
                self.full_events += 1
                # the WAL may hold most of the space: copy it back into the database
                # file so the next writer rewinds it and reuses its space
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            raise OutboxError(f"outbox {what} failed: {exc}") from exc
        return result

    def _locked_write(self, what: str, body: Callable[[], Any], *,
                      sync: str = "NORMAL") -> Any:
        with self._lock:
            return self._write(what, body, sync=sync)

    # ------------------------------------------------------------------ writing

    def put(self, envelopes: Sequence[Envelope],
            state: Mapping[str, Any] | None = None, *, hold_lower: bool = False) -> int:
        """Store envelopes durably (and ``state`` documents, in the same transaction);
        returns how many rows were dropped to fit (older rows evicted or expired, and
        rows of this batch that a full disk had no room for).

        On a full disk the batch's telemetry and health rows that find no room are
        dropped and counted (``dropped_full_<lane>``) — or, with ``hold_lower``, left
        out and listed in ``batch_left`` for the caller to hold and offer again (the
        daemon keeps them in memory for a while). Raises ``OutboxError`` only when not
        even the alerts and trip edges of the batch could be stored (the disk is full
        beyond what evicting the lower lanes and the reserve freed, or it fails)."""
        self.batch_dropped = 0
        self.batch_left = []
        if not envelopes and not state:
            return 0
        now = self._clock()
        if self.sealer is None:
            rows = [(e.id, int(e.lane), e.topic, e.to_bytes(), now) for e in envelopes]
        else:
            seal = self.sealer.seal
            rows = [(e.id, int(e.lane), topic_template(e.topic, e.thing),
                     seal(e.topic.encode() + b"\n" + e.to_bytes(), _ad(e.id, e.lane)), now)
                    for e in envelopes]
        important = any(e.lane <= Lane.TRIP for e in envelopes)
        mono = time.monotonic()
        full = (important and self.alert_sync == "full") or (
            mono - self._last_fsync >= self.sync_interval_s
        )
        sync = "FULL" if full else "NORMAL"
        docs: list[tuple[str, str | bytes, float]] = [
            (k, json.dumps(v, separators=(",", ":")), now) for k, v in (state or {}).items()]
        if self.sealer is not None:
            docs = [(k, self.sealer.seal(str(v).encode(), b"state\0" + k.encode()), t)
                    for k, v, t in docs]
        with self._lock:
            self._check_disk()  # every put: one statvfs, about a microsecond
            expire = now >= self._next_expire and bool(self.ttl_s)
            try:
                dropped = int(self._write(
                    "write", lambda: self._put_locked(rows, docs, now, expire,
                                                      rotate=self.pressure), sync=sync))
            except OutboxError as exc:
                if not _is_full(exc.__cause__ or exc):
                    raise
                dropped = self._put_full_locked(envelopes, rows, docs, now, sync, hold_lower)
            if full:
                self._last_fsync = mono
            if expire:
                self._next_expire = now + EXPIRE_EVERY_S
            if self.reserve.target:
                self._retake_reserve()
            return dropped

    def _put_full_locked(self, envelopes: Sequence[Envelope],
                         rows: list[tuple[str, int, str, bytes, float]],
                         docs: list[tuple[str, str | bytes, float]], now: float, sync: str,
                         hold_lower: bool) -> int:
        """The disk is full: make room from the lower lanes; then leave this batch's
        lower-lane rows out; then release the reserve to the alerts."""
        need = sum(len(r[3]) for r in rows) * SQUEEZE_FACTOR + SQUEEZE_MIN
        try:
            return int(self._write("write", lambda: self._put_locked(
                rows, docs, now, False, squeeze=need), sync=sync))
        except OutboxError as exc:
            if not _is_full(exc.__cause__ or exc):
                raise
        keep = [r for r in rows if Lane(r[1]) not in LOWER]
        out = [i for i, r in enumerate(rows) if Lane(r[1]) in LOWER]
        if keep and self.reserve.held:
            log.warning("outbox: disk full, reserve released to alerts",
                        path=str(self.path), reserve_bytes=self.reserve.held)
            # the reserve's space lets the WAL be copied back into the database file
            # and truncated (the WAL holds many versions of the same pages: the
            # database file grows by less than the WAL shrinks), then the alerts go in
            self.reserve.release()
            self._next_reserve = time.monotonic() + RESERVE_RETRY_S
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if keep or docs:
            # raises when not even these fit: nothing of the batch is stored then
            self._write("write", lambda: self._put_locked(
                keep, docs, now, False, squeeze=need), sync=sync)
        lanes = {Lane(rows[i][1]) for i in out}
        if hold_lower:
            self.batch_left = [envelopes[i] for i in out]
            for lane in lanes:
                self._once(log, f"full:{lane.name}", "outbox: disk full, holding new rows"
                           " in memory", lane=lane.name.lower(), path=str(self.path))
            return 0
        for i in out:
            name = f"dropped_full_{Lane(rows[i][1]).name.lower()}"
            self._unsaved[name] = self._unsaved.get(name, 0) + 1
        for lane in lanes:
            self._once(log, f"full:{lane.name}", "outbox: disk full, dropping new rows",
                       lane=lane.name.lower(), path=str(self.path), free_bytes=self.free)
        self.batch_dropped = len(out)
        return len(out)

    def _put_locked(self, rows: list[tuple[str, int, str, bytes, float]],
                    docs: list[tuple[str, str | bytes, float]], now: float, expire: bool, *,
                    rotate: bool = False, squeeze: int = 0) -> int:
        dropped = 0
        if squeeze:
            # room first: the pages freed are reused by the rows inserted after
            dropped += self._evict_lower_locked(squeeze)
        if rows:
            cur = self._db.executemany(
                "INSERT OR IGNORE INTO messages (id, lane, topic, payload, created)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            inserted = max(0, cur.rowcount)
            self._bump_locked("accepted", inserted)
            if inserted < len(rows):
                self._bump_locked("duplicates_ignored", len(rows) - inserted)
        if docs:
            self._db.executemany(
                "INSERT INTO state (key, value, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " updated = excluded.updated",
                docs,
            )
        if expire:
            dropped += self._expire_locked(now)
        if rotate:
            # low on space: the lower lanes do not grow, each put of telemetry (health)
            # replaces as many bytes of the oldest telemetry (health)
            spare = {r[0] for r in rows}
            for lane in LOWER:
                added = sum(len(r[3]) for r in rows if r[1] == lane)
                if added:
                    dropped += self._evict_lane_locked(lane, added, spare)[0]
        return dropped + self._evict_locked()

    def _evict_lower_locked(self, nbytes: int, spare: set[str] | None = None) -> int:
        """Evict ``nbytes`` of the oldest telemetry, then health rows."""
        evicted = 0
        for lane in LOWER:
            if nbytes <= 0:
                break
            n, freed = self._evict_lane_locked(lane, nbytes, spare)
            evicted += n
            nbytes -= freed
        return evicted

    def expire(self) -> int:
        """Drop rows past their lane's TTL now; returns how many."""
        if not self.ttl_s:
            return 0
        now = self._clock()
        return int(self._locked_write("expire", lambda: self._expire_locked(now)))

    def _expire_locked(self, now: float) -> int:
        total = 0
        for lane, ttl in self.ttl_s.items():
            cutoff = now - ttl
            n = 0
            while True:
                head = self._db.execute(
                    "SELECT seq, created FROM messages"
                    " WHERE state = ? AND lane = ? ORDER BY seq LIMIT 500",
                    (READY, int(lane)),
                ).fetchall()
                old = [s for s, c in head if c < cutoff]
                if not old:
                    break
                self._db.executemany("DELETE FROM messages WHERE seq = ?",
                                     [(s,) for s in old])
                n += len(old)
                if len(old) < len(head):
                    break
            if n:
                self._bump_locked(f"expired_{lane.name.lower()}", n)
                self._once(log, f"expired:{lane.name}", "outbox: rows past their lane's TTL"
                           " dropped", lane=lane.name.lower(), rows=n, ttl_s=ttl)
                total += n
        return total

    def _evict_locked(self) -> int:
        evicted = 0
        totals = self._lane_totals_locked()
        # per-lane quotas first, then the global cap, least important lane first
        held = self._held_bytes  # rows no key opens: kept, and not counted against caps
        for lane, quota in self.lane_max_bytes.items():
            over = totals.get(lane, (0, 0))[1] - held.get(lane, 0) - quota
            if over > 0:
                evicted += self._evict_lane_locked(lane, over)[0]
        over = (sum(b for _, b in self._lane_totals_locked().values())
                - sum(held.values()) - self.max_bytes)
        for lane in EVICT_ORDER:
            if over <= 0:
                break
            n, freed = self._evict_lane_locked(lane, over)
            evicted += n
            over -= freed
        return evicted

    def _evict_lane_locked(self, lane: Lane, over: int,
                           spare: set[str] | None = None) -> tuple[int, int]:
        """Delete the oldest rows of ``lane`` (ready ones first, then rows in flight)
        until ``over`` bytes are gone; ``spare``: ids not to take. Returns (rows, bytes)."""
        n = freed = 0
        for state in (READY, INFLIGHT):
            while over > 0:
                victims = self._db.execute(
                    "SELECT seq, id, LENGTH(payload) FROM messages"
                    " WHERE state = ? AND lane = ? ORDER BY seq LIMIT 256",
                    (state, int(lane)),
                ).fetchall()
                take = []
                for seq, mid, size in victims:
                    if spare and mid in spare:
                        continue
                    take.append(seq)
                    over -= size
                    freed += size
                    if over <= 0:
                        break
                if not take:
                    break
                self._db.executemany("DELETE FROM messages WHERE seq = ?",
                                     [(s,) for s in take])
                n += len(take)
        if n:
            self._bump_locked(f"evicted_{lane.name.lower()}", n)
            self._once(log, f"evicted:{lane.name}", "outbox: oldest rows evicted to make room",
                       lane=lane.name.lower(), rows=n, path=str(self.path))
        return n, freed

    def _bump_locked(self, name: str, n: int) -> None:
        if n == 0:
            return
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    # ------------------------------------------------------------------ rule state

    def load_state(self) -> dict[str, Any]:
        """Every ``state`` document as it was last committed."""
        with self._lock:
            try:
                got = self._db.execute("SELECT key, value FROM state").fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox state read failed: {exc}") from exc
        out: dict[str, Any] = {}
        for key, value in got:
            if isinstance(value, bytes):
                value = self._open_value(value, b"state\0" + str(key).encode(), f"state {key}")
                if value is None:
                    continue
            with contextlib.suppress(ValueError):
                out[str(key)] = json.loads(value)
        return out

    def _open_value(self, blob: bytes, ad: bytes, what: str) -> bytes | None:
        """A sealed value opened, or None (logged once) when no key here opens it."""
        from edge.seal import Unsealable

        try:
            if self.sealer is None:
                raise Unsealable("sealed, but [outbox] encryption is off")
            return self.sealer.open(blob, ad)
        except Unsealable as exc:
            self._once(log, f"unsealable:{what.split()[0]}", "outbox: a sealed value does"
                       " not open: kept, not used", path=str(self.path), what=what,
                       reason=str(exc))
            if len(self.unreadable) < 100:
                self.unreadable.append(f"{what}: {exc}")
            return None

    def _opened(self, got: Sequence[Any]) -> tuple[list[Row], list[int]]:
        """Rows as read, sealed ones opened (real topic and payload); the seqs of
        those that do not open are returned apart."""
        rows: list[Row] = []
        bad: list[int] = []
        from edge.seal import is_sealed

        for s, i, ln, tp, p, a in got:
            payload = bytes(p)
            if self.sealer is not None or is_sealed(payload):
                plain = (self._open_value(payload, _ad(i, ln), f"row {s}")
                         if is_sealed(payload) else payload)  # plain: stored before sealing
                if plain is None:
                    bad.append(int(s))
                    continue
                if plain is not payload:
                    topic, _, payload = plain.partition(b"\n")
                    tp = topic.decode()
            rows.append(Row(s, i, Lane(ln), tp, payload, a))
        return rows, bad

    # ------------------------------------------------------------------ draining

    def claim(self, limit: int, *, lanes: Iterable[Lane] | None = None) -> list[Row]:
        """Mark up to ``limit`` ready rows in flight, best lane first, FIFO within.

        The inner SELECT walks the ``(state, lane, seq)`` index: its cost does not grow
        with the backlog (see ``tests/unit/test_outbox.py`` for the query plan).
        """
        lane_filter = ""
        params: list[Any] = [INFLIGHT, READY]
        if lanes is not None:
            chosen = sorted(int(x) for x in lanes)
            if not chosen:
                return []
            lane_filter = f" AND lane IN ({','.join('?' * len(chosen))})"
            params += chosen
        params.append(limit)

        def body() -> list[Any]:
            return self._db.execute(CLAIM_SQL.format(lane_filter=lane_filter), params).fetchall()

        got = self._locked_write("claim", body)
        rows, bad = self._opened(got)
        if bad:  # never deleted, never offered again by this process: set aside
            self._locked_write("hold", lambda: self._db.executemany(
                "UPDATE messages SET state = ? WHERE seq = ? AND state = ?",
                [(HELD, s, INFLIGHT) for s in bad]))
            held = set(bad)
            for s, _, ln, _, p, _ in got:
                if int(s) in held:
                    self._held_bytes[Lane(ln)] = self._held_bytes.get(Lane(ln), 0) + len(p)
        rows.sort(key=lambda r: (r.lane, r.seq))
        return rows

    def ack(self, seqs: Sequence[int]) -> None:
        """The uplink confirmed these: they leave the outbox."""
        self.settle(acked=seqs)

    def reject(self, seqs: Sequence[int]) -> None:
        """Never deliverable as they are (ACL denied, too large): dropped, counted."""
        self.settle(rejected=seqs)

    def release(self, seqs: Sequence[int]) -> None:
        """Not delivered (connection lost): back to ready, in their old place."""
        self.settle(released=seqs)

    def settle(
        self,
        *,
        acked: Sequence[int] = (),
        rejected: Sequence[int] = (),
        released: Sequence[int] = (),
    ) -> None:
        """``ack``, ``reject`` and ``release`` of many rows in one transaction (one
        commit): the forwarder settles the outcomes of a burst of publishes at once.
        What is counted is what was really deleted: a row gone meanwhile (purged,
        evicted, acked before) is not counted again; only rows in flight are released."""
        if not (acked or rejected or released):
            return

        def body() -> None:
            if acked:
                self._bump_locked("delivered", self._delete_seqs_locked(acked))
            if rejected:
                self._bump_locked("rejected", self._delete_seqs_locked(rejected))
            if released:
                self._db.executemany(
                    "UPDATE messages SET state = ? WHERE seq = ? AND state = ?",
                    [(READY, s, INFLIGHT) for s in released],
                )

        what = "delivered" if acked else "rejected" if rejected else "release"
        with self._lock:
            self._write(what, body)
            if self.pressure and (acked or rejected) and self.reserve.target:
                self._retake_reserve()

    def _delete_seqs_locked(self, seqs: Sequence[int]) -> int:
        n = 0
        for i in range(0, len(seqs), 500):
            chunk = list(seqs[i : i + 500])
            marks = ",".join("?" * len(chunk))
            cur = self._db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
            n += cur.rowcount
        return n

    # ------------------------------------------------------------------ inspection

    def disk(self) -> dict[str, Any]:
        """Free space, pressure and the reserve, for health and ``edge status`` (free
        space read now; the pressure as the last write decided it: this changes nothing
        and may run beside a write in another thread)."""
        return disk_report(self.path, free=free_bytes(self.path.parent),
                           pressure=self.pressure,
                           wal_bytes=self.wal_bytes,
                           min_free_bytes=self.min_free_bytes,
                           reserve_target=self.reserve.target,
                           reserve_held=self.reserve.held,
                           reserve_releases=self.reserve.releases,
                           full_events=self.full_events)

    def stats(self) -> dict[str, Any]:
        """Counts per lane, bytes, drops; cheap (no scan of the backlog). One read
        transaction: totals and counters agree with each other."""
        with self._lock:
            try:
                self._db.execute("BEGIN")
                try:
                    totals = self._lane_totals_locked()
                    inflight = dict(
                        self._db.execute(
                            "SELECT lane, COUNT(*) FROM messages WHERE state = ? GROUP BY lane",
                            (INFLIGHT,),
                        ).fetchall()
                    )
                    held = dict(self._db.execute(
                        "SELECT lane, COUNT(*) FROM messages WHERE state = ? GROUP BY lane",
                        (HELD,)).fetchall())
                    counters = dict(self._db.execute("SELECT name, value FROM counters"))
                    heads = [
                        self._db.execute(
                            "SELECT created FROM messages WHERE state = ? AND lane = ?"
                            " ORDER BY seq LIMIT 1",
                            (READY, int(lane)),
                        ).fetchone()
                        for lane in Lane
                    ]
                finally:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox stats failed: {exc}") from exc
            counters = _merged(counters, self._unsaved)
        lanes: dict[str, dict[str, int]] = {}
        for lane in Lane:
            n, b = totals.get(lane, (0, 0))
            fl = int(inflight.get(int(lane), 0))
            hd = int(held.get(int(lane), 0))
            lanes[lane.name.lower()] = {"ready": n - fl - hd, "inflight": fl, "bytes": b}
            if hd:
                lanes[lane.name.lower()]["undecryptable"] = hd
        created = [h[0] for h in heads if h is not None]
        oldest = min(created) if created else None
        dropped = sum(
            v for k, v in counters.items()
            if k.startswith(("evicted_", "expired_", "dropped_full_"))
            or k in ("rejected", "purged")
        )
        return {
            "path": str(self.path),
            "pending": sum(n for n, _ in totals.values()),
            "bytes": sum(b for _, b in totals.values()),
            "max_bytes": self.max_bytes,
            "lanes": lanes,
            "oldest_age_s": None if oldest is None else round(self._clock() - oldest, 3),
            "counters": counters,
            "dropped": dropped,
            "recovered_inflight": self.recovered,
            "disk": self.disk(),
            "encryption": None if self.sealer is None else self.sealer.describe(),
            "undecryptable": sum(int(v) for v in held.values()),
        }

    def iter_rows(self, lanes: Iterable[Lane] | None = None) -> list[Row]:
        chosen = sorted(int(x) for x in (lanes if lanes is not None else Lane))
        marks = ",".join("?" * len(chosen))
        with self._lock:
            got = self._db.execute(
                "SELECT seq, id, lane, topic, payload, attempts FROM messages"
                f" WHERE lane IN ({marks}) ORDER BY lane, seq",
                chosen,
            ).fetchall()
        return self._opened(got)[0]  # those that do not open: in ``unreadable``

    def purge(self, lanes: Iterable[Lane] | None = None) -> int:
        """Delete every row of ``lanes`` (all lanes by default); safe beside a running
        daemon: the totals follow by trigger, its in-flight rows settle as gone."""
        chosen = sorted(int(x) for x in (lanes if lanes is not None else Lane))

        def body() -> int:
            n = 0
            for lane in chosen:
                cur = self._db.execute("DELETE FROM messages WHERE lane = ?", (lane,))
                n += cur.rowcount
            self._bump_locked("purged", n)
            return n

        return int(self._locked_write("purge", body))

    def recover_inflight(self) -> int:
        """Rows left in flight by a drain that could not settle them (a failed final
        write): ready again. Only for the outbox's single owner, between connections."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "UPDATE messages SET state = ? WHERE state = ?", (READY, INFLIGHT)
                )  # not HELD rows: no key here opens them
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox recover failed: {exc}") from exc
        return int(cur.rowcount)

    def integrity_ok(self) -> bool:
        """SQLite's integrity check passes and the lane totals equal a fresh count."""
        with self._lock:
            (res,) = self._db.execute("PRAGMA integrity_check").fetchone()
            self._db.execute("BEGIN")
            try:
                counted = {Lane(lane): (int(n), int(b)) for lane, n, b in self._db.execute(
                    "SELECT lane, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0)"
                    " FROM messages GROUP BY lane")}
                totals = self._lane_totals_locked()
            finally:
                self._db.execute("COMMIT")
        consistent = all(totals.get(lane, (0, 0)) == counted.get(lane, (0, 0))
                         for lane in Lane)
        return bool(res == "ok") and consistent

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()


def disk_report(path: Path, *, free: int | None = None, pressure: bool | None = None,
                wal_bytes: int = 0, min_free_bytes: int = 0, reserve_target: int = 0,
                reserve_held: int = 0, reserve_releases: int = 0,
                full_events: int = 0) -> dict[str, Any]:
    if free is None:
        free = free_bytes(Path(path).parent)
    if pressure is None:
        pressure = free is not None and free < min_free_bytes
    return {
        "free_bytes": free,
        "wal_bytes": wal_bytes,
        "min_free_bytes": min_free_bytes,
        "pressure": pressure,
        "reserve_bytes": reserve_held,
        "reserve_target_bytes": reserve_target,
        "reserve_releases": reserve_releases,
        "full_events": full_events,
    }


def sealer_for(cfg: OutboxConfig) -> Sealer | None:
    """The sealer ``[outbox]`` asks for (``KeyFileError`` naming a bad key file)."""
    if cfg.encryption == "none" or cfg.key_file is None:
        return None
    from edge.seal import Sealer  # imports cryptography: only when encryption is on

    return Sealer(cfg.key_file, cfg.old_key_files)


def topic_template(topic: str, thing: str) -> str:
    """``topic`` with the thing's segment as ``+``: what a sealed row keeps in plain."""
    return "/".join("+" if part == thing else part for part in topic.split("/"))


def _ad(mid: str, lane: int) -> bytes:
    """Associated data of a sealed row: its envelope id and lane (rows do not swap)."""
    return f"{mid}\0{int(lane)}".encode()


def _merged(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return {k: v for k, v in out.items() if v}


CLAIM_SQL = (
    "UPDATE messages SET state = ?, attempts = attempts + 1"
    " WHERE seq IN (SELECT seq FROM messages WHERE state = ?{lane_filter}"
    " ORDER BY lane, seq LIMIT ?)"
    " RETURNING seq, id, lane, topic, payload, attempts"
)
