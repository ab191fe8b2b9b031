"""The durable outbox: an SQLite (WAL) queue between the core and the uplink.

Synchronous API — async code calls it through ``asyncio.to_thread`` — over one
connection guarded by a lock.

* Lanes by priority (``edge.model.Lane``): alerts drain first and are evicted last.
  FIFO within a lane.
* At-least-once: ``claim`` marks rows in flight, ``ack`` deletes them only after the
  uplink confirmed; ``release`` returns them to ready. Rows in flight when the process
  died are ready again on the next open.
* Durability: a batch holding an alert or a trip edge commits with
  ``synchronous=FULL`` (fsync of the WAL before ``put`` returns); telemetry and health
  commit with ``synchronous=NORMAL`` (group commit: a power cut can lose the last
  telemetry transactions, never an alert). ``alert_sync="normal"`` trades that away.
* Bounds: ``max_bytes`` caps the payload bytes stored; over it, the oldest rows of the
  least important lane go first (health, telemetry, trip, then alerts). Every drop is
  counted in ``stats()`` and survives restarts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import OutboxError
from edge.model import Envelope, Lane

READY = 0
INFLIGHT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT    NOT NULL,
    lane     INTEGER NOT NULL,
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    created  REAL    NOT NULL,
    state    INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (state, lane, seq);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


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
        max_bytes: int = 64 * 1024 * 1024,
        alert_sync: str = "full",
        clock: Any = time.time,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.alert_sync = alert_sync
        self._clock = clock
        self._lock = threading.Lock()
        self.recovered = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            cur = self._db.execute(
                "UPDATE messages SET state = ? WHERE state = ?", (READY, INFLIGHT)
            )
            self.recovered = cur.rowcount
            row = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
            ).fetchone()
            self._bytes = int(row[0])
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    # ------------------------------------------------------------------ writing

    def put(self, envelopes: Sequence[Envelope]) -> int:
        """Store envelopes durably; returns how many older rows were evicted."""
        if not envelopes:
            return 0
        now = self._clock()
        rows = [
            (e.id, int(e.lane), e.topic, e.to_bytes(), now) for e in envelopes
        ]
        important = any(e.lane <= Lane.TRIP for e in envelopes)
        sync = "FULL" if important and self.alert_sync == "full" else "NORMAL"
        added = sum(len(r[3]) for r in rows)
        with self._lock:
            try:
                self._db.execute(f"PRAGMA synchronous={sync}")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "INSERT INTO messages (id, lane, topic, payload, created)"
                        " VALUES (?, ?, ?, ?, ?)",
                        rows,
                    )
                    evicted, freed = self._evict_locked(self._bytes + added)
                    self._bump_locked("accepted", len(rows))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox write failed: {exc}") from exc
            self._bytes += added - freed
            return evicted

    def _evict_locked(self, total: int) -> tuple[int, int]:
        if total <= self.max_bytes:
            return 0, 0
        evicted = freed = 0
        for lane in sorted(Lane, reverse=True):
            while total - freed > self.max_bytes:
                victims = self._db.execute(
                    "SELECT seq, LENGTH(payload) FROM messages"
                    " WHERE lane = ? AND state = ? ORDER BY seq LIMIT 256",
                    (int(lane), READY),
                ).fetchall()
                if not victims:
                    break
                take = []
                for seq, size in victims:
                    take.append((seq,))
                    freed += size
                    if total - freed <= self.max_bytes:
                        break
                self._db.executemany("DELETE FROM messages WHERE seq = ?", take)
                evicted += len(take)
                self._bump_locked(f"evicted_{lane.name.lower()}", len(take))
        return evicted, freed

    def _bump_locked(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    # ------------------------------------------------------------------ draining

    def claim(self, limit: int, *, lanes: Iterable[Lane] | None = None) -> list[Row]:
        """Mark up to ``limit`` ready rows in flight, best lane first, FIFO within."""
        lane_filter = ""
        params: list[Any] = [INFLIGHT, READY]
        if lanes is not None:
            chosen = sorted(int(x) for x in lanes)
            lane_filter = f" AND lane IN ({','.join('?' * len(chosen))})"
            params += chosen
        params.append(limit)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    got = self._db.execute(
                        "UPDATE messages SET state = ?, attempts = attempts + 1"
                        " WHERE seq IN (SELECT seq FROM messages WHERE state = ?"
                        f"{lane_filter} ORDER BY lane, seq LIMIT ?)"
                        " RETURNING seq, id, lane, topic, payload, attempts",
                        params,
                    ).fetchall()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox claim failed: {exc}") from exc
        rows = [Row(s, i, Lane(ln), t, bytes(p), a) for s, i, ln, t, p, a in got]
        rows.sort(key=lambda r: (r.lane, r.seq))
        return rows

    def ack(self, seqs: Sequence[int]) -> None:
        """The uplink confirmed these: they leave the outbox."""
        self._finish(seqs, "delivered")

    def reject(self, seqs: Sequence[int]) -> None:
        """Never deliverable as they are (ACL denied, too large): dropped, counted."""
        self._finish(seqs, "rejected")

    def _finish(self, seqs: Sequence[int], counter: str) -> None:
        if not seqs:
            return
        with self._lock:
            try:
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    freed = 0
                    for i in range(0, len(seqs), 500):
                        chunk = list(seqs[i : i + 500])
                        marks = ",".join("?" * len(chunk))
                        (size,) = self._db.execute(
                            "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
                            f" WHERE seq IN ({marks})",
                            chunk,
                        ).fetchone()
                        self._db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
                        freed += int(size)
                    self._bump_locked(counter, len(seqs))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox ack failed: {exc}") from exc
            self._bytes -= freed

    def release(self, seqs: Sequence[int]) -> None:
        """Not delivered (connection lost): back to ready, in their old place."""
        if not seqs:
            return
        with self._lock:
            try:
                self._db.executemany(
                    "UPDATE messages SET state = ? WHERE seq = ?", [(READY, s) for s in seqs]
                )
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox release failed: {exc}") from exc

    # ------------------------------------------------------------------ inspection

    def stats(self) -> dict[str, Any]:
        with self._lock:
            try:
                lanes: dict[str, dict[str, int]] = {
                    lane.name.lower(): {"ready": 0, "inflight": 0} for lane in Lane
                }
                for lane, state, n in self._db.execute(
                    "SELECT lane, state, COUNT(*) FROM messages GROUP BY lane, state"
                ):
                    key = "ready" if state == READY else "inflight"
                    lanes[Lane(lane).name.lower()][key] = n
                counters = dict(self._db.execute("SELECT name, value FROM counters"))
                oldest = self._db.execute("SELECT MIN(created) FROM messages").fetchone()[0]
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox stats failed: {exc}") from exc
        pending = sum(v["ready"] + v["inflight"] for v in lanes.values())
        return {
            "path": str(self.path),
            "pending": pending,
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "lanes": lanes,
            "oldest_age_s": None if oldest is None else round(self._clock() - oldest, 3),
            "counters": counters,
            "recovered_inflight": self.recovered,
        }

    def iter_rows(self) -> list[Row]:
        with self._lock:
            got = self._db.execute(
                "SELECT seq, id, lane, topic, payload, attempts FROM messages ORDER BY lane, seq"
            ).fetchall()
        return [Row(s, i, Lane(ln), t, bytes(p), a) for s, i, ln, t, p, a in got]

    def purge(self, lanes: Iterable[Lane] | None = None) -> int:
        chosen = sorted(int(x) for x in (lanes if lanes is not None else Lane))
        marks = ",".join("?" * len(chosen))
        with self._lock:
            cur = self._db.execute(f"DELETE FROM messages WHERE lane IN ({marks})", chosen)
            n = cur.rowcount
            self._bump_locked("purged", n)
            (size,) = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
            ).fetchone()
            self._bytes = int(size)
        return n

    def integrity_ok(self) -> bool:
        with self._lock:
            (res,) = self._db.execute("PRAGMA integrity_check").fetchone()
        return bool(res == "ok")

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()
