"""Writing into the outbox: durability per batch and what a full disk does to it.

* Durability: a batch holding an alert or a trip edge commits with
  ``synchronous=FULL`` (the WAL is fsync'd before ``put`` returns). Telemetry and health
  commit with ``synchronous=NORMAL`` (group commit, no fsync) except that a commit made
  ``sync_interval_s`` or more after the last fsync is FULL again: a power cut loses at
  most the telemetry of the last ``sync_interval_s`` seconds, never an alert (an fsync of
  the WAL covers every earlier frame). ``alert_sync="normal"`` trades the alert
  guarantee away for speed.
* Under disk pressure each put of telemetry (or health) evicts as many bytes of that
  lane's oldest rows. When the disk is full, the put first makes room by evicting lower
  lanes; if that is not enough its lower-lane rows are dropped (counted per lane,
  ``dropped_full_<lane>``) and its alerts get the reserve. Only when even that fails
  does ``put`` raise (the daemon then holds the alerts in memory and retries).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from edge.errors import OutboxError
from edge.logconf import Once
from edge.model import Envelope, Lane
from edge.outbox.bounds import LOWER, Bounds
from edge.outbox.disk import is_disk_full
from edge.outbox.sealing import Codec, Doc, Insert
from edge.outbox.store import Store

log = structlog.get_logger()

# how often (at most) put() looks for rows past their TTL
EXPIRE_EVERY_S = 30.0
# a put that hit the disk-full wall makes room for this many times its own bytes
SQUEEZE_FACTOR = 2
SQUEEZE_MIN = 16 * 1024


class Intake:
    def __init__(self, store: Store, bounds: Bounds, codec: Codec, *, path: Path,
                 alert_sync: str, sync_interval_s: float, clock: Callable[[], float],
                 once: Once) -> None:
        self.store = store
        self.bounds = bounds
        self.codec = codec
        self.path = path
        self.alert_sync = alert_sync
        self.sync_interval_s = sync_interval_s
        self._clock = clock
        self._once = once
        self._last_fsync = -1e18
        self._next_expire = -1e18
        self.batch_dropped = 0  # rows of the last put's own batch that had no room
        self.batch_left: list[Envelope] = []  # ... and that the caller holds (hold_lower)

    def put(self, envelopes: Sequence[Envelope], state: Mapping[str, Any] | None,
            hold_lower: bool) -> int:
        """``Outbox.put``."""
        self.batch_dropped = 0
        self.batch_left = []
        if not envelopes and not state:
            return 0
        now = self._clock()
        rows = self.codec.rows(envelopes, now)
        docs = self.codec.docs(state, now)
        important = any(e.lane <= Lane.TRIP for e in envelopes)
        mono = time.monotonic()
        full = (important and self.alert_sync == "full") or (
            mono - self._last_fsync >= self.sync_interval_s
        )
        sync = "FULL" if full else "NORMAL"
        store, disk = self.store, self.store.disk
        with store.lock:
            disk.check(store.db)  # every put: one statvfs, about a microsecond
            expire = now >= self._next_expire and bool(self.bounds.ttl_s)
            try:
                dropped = int(store.write("write", lambda: self._insert(
                    rows, docs, now, expire, rotate=disk.pressure), sync=sync))
            except OutboxError as exc:
                if not is_disk_full(exc.__cause__):
                    raise
                dropped = self._put_full(envelopes, rows, docs, now, sync, hold_lower)
            if full:
                self._last_fsync = mono
            if expire:
                self._next_expire = now + EXPIRE_EVERY_S
            if disk.reserve.target:
                disk.retake_reserve(store.db)
            return dropped

    def _put_full(self, envelopes: Sequence[Envelope], rows: list[Insert], docs: list[Doc],
                  now: float, sync: str, hold_lower: bool) -> int:
        """The disk is full: make room from the lower lanes; then leave this batch's
        lower-lane rows out; then release the reserve to the alerts."""
        store, disk = self.store, self.store.disk
        need = sum(len(r[3]) for r in rows) * SQUEEZE_FACTOR + SQUEEZE_MIN
        try:
            return int(store.write("write", lambda: self._insert(
                rows, docs, now, False, squeeze=need), sync=sync))
        except OutboxError as exc:
            if not is_disk_full(exc.__cause__):
                raise
        keep = [r for r in rows if Lane(r[1]) not in LOWER]
        out = [i for i, r in enumerate(rows) if Lane(r[1]) in LOWER]
        if keep and disk.reserve.held:
            disk.release_reserve(store.db)
        if keep or docs:
            # raises when not even these fit: nothing of the batch is stored then
            store.write("write", lambda: self._insert(keep, docs, now, False, squeeze=need),
                        sync=sync)
        lanes = {Lane(rows[i][1]) for i in out}
        if hold_lower:
            self.batch_left = [envelopes[i] for i in out]
            for lane in lanes:
                self._once(log, f"full:{lane.name}", "outbox: disk full, holding new rows"
                           " in memory", lane=lane.name.lower(), path=str(self.path))
            return 0
        for i in out:
            store.count_later(f"dropped_full_{Lane(rows[i][1]).name.lower()}")
        for lane in lanes:
            self._once(log, f"full:{lane.name}", "outbox: disk full, dropping new rows",
                       lane=lane.name.lower(), path=str(self.path), free_bytes=disk.free)
        self.batch_dropped = len(out)
        return len(out)

    def _insert(self, rows: list[Insert], docs: list[Doc], now: float, expire: bool, *,
                rotate: bool = False, squeeze: int = 0) -> int:
        """The rows and documents, then the bounds (inside the transaction)."""
        db, bounds = self.store.db, self.bounds
        dropped = 0
        if squeeze:
            # room first: the pages freed are reused by the rows inserted after
            dropped += bounds.evict_lower(squeeze)
        if rows:
            cur = db.executemany(
                "INSERT OR IGNORE INTO messages (id, lane, topic, payload, created)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            inserted = max(0, cur.rowcount)
            self.store.bump("accepted", inserted)
            if inserted < len(rows):
                self.store.bump("duplicates_ignored", len(rows) - inserted)
        if docs:
            db.executemany(
                "INSERT INTO state (key, value, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " updated = excluded.updated",
                docs,
            )
        if expire:
            dropped += bounds.expire(now)
        if rotate:
            # low on space: the lower lanes do not grow, each put of telemetry (health)
            # replaces as many bytes of the oldest telemetry (health)
            spare = {r[0] for r in rows}
            for lane in LOWER:
                added = sum(len(r[3]) for r in rows if r[1] == lane)
                if added:
                    dropped += bounds.evict_lane(lane, added, spare)[0]
        return dropped + bounds.evict()
