"""The durable outbox: an SQLite (WAL) queue between the core and the uplink.

Synchronous API — async code calls it through ``asyncio.to_thread`` — over one
connection guarded by a lock.

* Lanes by priority (``edge.model.Lane``): alerts drain first and are evicted last.
  FIFO within a lane.
* At-least-once: ``claim`` marks rows in flight, ``ack`` deletes them only after the
  uplink confirmed; ``release`` returns them to ready. Rows in flight when the process
  died are ready again on the next open.
* Durability: a batch holding an alert or a trip edge commits with
  ``synchronous=FULL`` (the WAL is fsync'd before ``put`` returns). Telemetry and health
  commit with ``synchronous=NORMAL`` (group commit, no fsync) except that a commit made
  ``sync_interval_s`` or more after the last fsync is FULL again: a power cut loses at
  most the telemetry of the last ``sync_interval_s`` seconds, never an alert (an fsync of
  the WAL covers every earlier frame). ``alert_sync="normal"`` trades the alert
  guarantee away for speed.
* Bounds, all enforced inside the writing transaction:
  ``max_bytes`` caps the payload bytes stored — over it, the oldest ready rows of the
  least important lane go first (health, telemetry, trip, then alerts);
  ``lane_max_bytes`` caps one lane; ``ttl_s`` expires a lane's rows older than that
  (by the wall clock at insertion). Every drop is counted (``evicted_<lane>``,
  ``expired_<lane>``, ``rejected``, ``purged``) in ``stats()`` and survives restarts.
* Opening is O(1) in the backlog: row and byte counts per lane are kept in the
  ``lanes`` table, updated in the same transaction as the rows, so a start with a
  million queued rows does not scan them (only the first open of a database written
  by an older version counts once).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import OutboxError
from edge.model import Envelope, Lane

if TYPE_CHECKING:
    from edge.config import OutboxConfig

READY = 0
INFLIGHT = 1
MB = 1024 * 1024

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
CREATE TABLE IF NOT EXISTS lanes (
    lane  INTEGER PRIMARY KEY,
    rows  INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
"""

# how often (at most) put() looks for rows past their TTL
EXPIRE_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    id: str
    lane: Lane
    topic: str
    payload: bytes
    attempts: int


class _Tally:
    """Per-lane (rows, bytes) deltas of one transaction, applied after COMMIT."""

    __slots__ = ("bytes", "rows")

    def __init__(self) -> None:
        self.rows = dict.fromkeys(Lane, 0)
        self.bytes = dict.fromkeys(Lane, 0)

    def add(self, lane: Lane, rows: int, nbytes: int) -> None:
        self.rows[lane] += rows
        self.bytes[lane] += nbytes


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
        clock: Callable[[], float] = time.time,
        recover: bool = True,
    ) -> None:
        """``recover=False`` is for tools that open the outbox beside a running daemon
        (``edge outbox stats``): rows in flight are that daemon's, not leftovers."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.alert_sync = alert_sync
        self.lane_max_bytes = {Lane(k): int(v) for k, v in (lane_max_bytes or {}).items()}
        self.ttl_s = {Lane(k): float(v) for k, v in (ttl_s or {}).items()}
        self.sync_interval_s = sync_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_fsync = -1e18
        self._next_expire = -1e18
        self.recovered = 0
        self._rows = dict.fromkeys(Lane, 0)
        self._lane_bytes = dict.fromkeys(Lane, 0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # keep the WAL small: it is checkpointed every ~1 MiB and truncated back to
            # 1 MiB afterwards, so a small disk is not eaten by the log alone
            self._db.execute("PRAGMA wal_autocheckpoint=256")
            self._db.execute("PRAGMA journal_size_limit=1048576")
            # a 1 MiB page cache (SQLite's default is 2 MiB): the queue is read in
            # index order, a big cache buys nothing on a gateway that counts megabytes
            self._db.execute("PRAGMA cache_size=-1024")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if recover:
                    cur = self._db.execute(
                        "UPDATE messages SET state = ? WHERE state = ?", (READY, INFLIGHT)
                    )
                    self.recovered = cur.rowcount
                self._load_lanes_locked()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

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
            **kwargs,
        )

    def _load_lanes_locked(self) -> None:
        got = self._db.execute("SELECT lane, rows, bytes FROM lanes").fetchall()
        if len(got) != len(Lane):
            # first open (or a database from before the lanes table): count once
            counted = {
                lane: (n, b)
                for lane, n, b in self._db.execute(
                    "SELECT lane, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0)"
                    " FROM messages GROUP BY lane"
                )
            }
            self._db.executemany(
                "INSERT OR REPLACE INTO lanes (lane, rows, bytes) VALUES (?, ?, ?)",
                [(int(lane), *counted.get(int(lane), (0, 0))) for lane in Lane],
            )
            got = self._db.execute("SELECT lane, rows, bytes FROM lanes").fetchall()
        for lane, n, b in got:
            self._rows[Lane(lane)] = int(n)
            self._lane_bytes[Lane(lane)] = int(b)

    @property
    def _bytes(self) -> int:
        return sum(self._lane_bytes.values())

    # ------------------------------------------------------------------ transactions

    def _write(self, what: str, body: Callable[[_Tally], Any], *, sync: str = "NORMAL") -> Any:
        """Run ``body`` in one IMMEDIATE transaction; counts follow only on COMMIT."""
        with self._lock:
            tally = _Tally()
            try:
                self._db.execute(f"PRAGMA synchronous={sync}")
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = body(tally)
                    self._db.executemany(
                        "UPDATE lanes SET rows = rows + ?, bytes = bytes + ? WHERE lane = ?",
                        [
                            (tally.rows[lane], tally.bytes[lane], int(lane))
                            for lane in Lane
                            if tally.rows[lane] or tally.bytes[lane]
                        ],
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                    # SQLITE_FULL: the WAL may hold most of the space. Checkpoint it back
                    # into the main file and truncate it, so the next try (the caller
                    # retries with backoff) has room once anything was freed.
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                raise OutboxError(f"outbox {what} failed: {exc}") from exc
            for lane in Lane:
                self._rows[lane] += tally.rows[lane]
                self._lane_bytes[lane] += tally.bytes[lane]
            return result

    # ------------------------------------------------------------------ writing

    def put(self, envelopes: Sequence[Envelope]) -> int:
        """Store envelopes durably; returns how many older rows were dropped to fit."""
        if not envelopes:
            return 0
        now = self._clock()
        rows = [(e.id, int(e.lane), e.topic, e.to_bytes(), now) for e in envelopes]
        important = any(e.lane <= Lane.TRIP for e in envelopes)
        mono = time.monotonic()
        full = (important and self.alert_sync == "full") or (
            mono - self._last_fsync >= self.sync_interval_s
        )
        expire = now >= self._next_expire and bool(self.ttl_s)

        def body(t: _Tally) -> int:
            self._db.executemany(
                "INSERT INTO messages (id, lane, topic, payload, created)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            for _, lane, _, payload, _ in rows:
                t.add(Lane(lane), 1, len(payload))
            dropped = self._expire_locked(now, t) if expire else 0
            self._bump_locked("accepted", len(rows))
            return dropped + self._evict_locked(t)

        dropped = int(self._write("write", body, sync="FULL" if full else "NORMAL"))
        if full:
            self._last_fsync = mono
        if expire:
            self._next_expire = now + EXPIRE_EVERY_S
        return dropped

    def expire(self) -> int:
        """Drop rows past their lane's TTL now; returns how many."""
        if not self.ttl_s:
            return 0
        now = self._clock()
        return int(self._write("expire", lambda t: self._expire_locked(now, t)))

    def _expire_locked(self, now: float, t: _Tally) -> int:
        total = 0
        for lane, ttl in self.ttl_s.items():
            cutoff = now - ttl
            n = 0
            while True:
                head = self._db.execute(
                    "SELECT seq, LENGTH(payload), created FROM messages"
                    " WHERE state = ? AND lane = ? ORDER BY seq LIMIT 500",
                    (READY, int(lane)),
                ).fetchall()
                old = [(s, b) for s, b, c in head if c < cutoff]
                if not old:
                    break
                self._delete_locked(lane, old, t)
                n += len(old)
                if len(old) < len(head):
                    break
            if n:
                self._bump_locked(f"expired_{lane.name.lower()}", n)
                total += n
        return total

    def _evict_locked(self, t: _Tally) -> int:
        evicted = 0
        # per-lane quotas first, then the global cap, least important lane first
        for lane, quota in self.lane_max_bytes.items():
            over = self._lane_bytes[lane] + t.bytes[lane] - quota
            evicted += self._evict_lane_locked(lane, over, t)
        for lane in sorted(Lane, reverse=True):
            over = self._bytes + sum(t.bytes.values()) - self.max_bytes
            if over <= 0:
                break
            evicted += self._evict_lane_locked(lane, over, t)
        return evicted

    def _evict_lane_locked(self, lane: Lane, over: int, t: _Tally) -> int:
        n = 0
        while over > 0:
            victims = self._db.execute(
                "SELECT seq, LENGTH(payload) FROM messages"
                " WHERE state = ? AND lane = ? ORDER BY seq LIMIT 256",
                (READY, int(lane)),
            ).fetchall()
            if not victims:
                break
            take = []
            for seq, size in victims:
                take.append((seq, size))
                over -= size
                if over <= 0:
                    break
            self._delete_locked(lane, take, t)
            n += len(take)
        if n:
            self._bump_locked(f"evicted_{lane.name.lower()}", n)
        return n

    def _delete_locked(self, lane: Lane, victims: list[tuple[int, int]], t: _Tally) -> None:
        self._db.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s, _ in victims])
        t.add(lane, -len(victims), -sum(b for _, b in victims))

    def _bump_locked(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

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

        def body(t: _Tally) -> list[Any]:
            return self._db.execute(CLAIM_SQL.format(lane_filter=lane_filter), params).fetchall()

        got = self._write("claim", body)
        rows = [Row(s, i, Lane(ln), tp, bytes(p), a) for s, i, ln, tp, p, a in got]
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
        commit): the forwarder settles the outcomes of a burst of publishes at once."""
        if not (acked or rejected or released):
            return

        def body(t: _Tally) -> None:
            if acked:
                self._delete_seqs_locked(acked, t)
                self._bump_locked("delivered", len(acked))
            if rejected:
                self._delete_seqs_locked(rejected, t)
                self._bump_locked("rejected", len(rejected))
            if released:
                self._db.executemany(
                    "UPDATE messages SET state = ? WHERE seq = ?", [(READY, s) for s in released]
                )

        what = "delivered" if acked else "rejected" if rejected else "release"
        self._write(what, body)

    def _delete_seqs_locked(self, seqs: Sequence[int], t: _Tally) -> None:
        for i in range(0, len(seqs), 500):
            chunk = list(seqs[i : i + 500])
            marks = ",".join("?" * len(chunk))
            for lane, n, size in self._db.execute(
                f"DELETE FROM messages WHERE seq IN ({marks}) RETURNING lane, 1, LENGTH(payload)",
                chunk,
            ).fetchall():
                t.add(Lane(lane), -n, -int(size))

    # ------------------------------------------------------------------ inspection

    def stats(self) -> dict[str, Any]:
        """Counts per lane, bytes, drops; cheap (no scan of the backlog)."""
        with self._lock:
            try:
                inflight = dict(
                    self._db.execute(
                        "SELECT lane, COUNT(*) FROM messages WHERE state = ? GROUP BY lane",
                        (INFLIGHT,),
                    ).fetchall()
                )
                counters = dict(self._db.execute("SELECT name, value FROM counters"))
                heads = [
                    self._db.execute(
                        "SELECT created FROM messages WHERE state = ? AND lane = ?"
                        " ORDER BY seq LIMIT 1",
                        (READY, int(lane)),
                    ).fetchone()
                    for lane in Lane
                ]
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox stats failed: {exc}") from exc
            lanes: dict[str, dict[str, int]] = {}
            for lane in Lane:
                fl = int(inflight.get(int(lane), 0))
                lanes[lane.name.lower()] = {
                    "ready": self._rows[lane] - fl,
                    "inflight": fl,
                    "bytes": self._lane_bytes[lane],
                }
            total_bytes = self._bytes
        created = [h[0] for h in heads if h is not None]
        oldest = min(created) if created else None
        dropped = sum(
            v for k, v in counters.items()
            if k.startswith(("evicted_", "expired_")) or k in ("rejected", "purged")
        )
        return {
            "path": str(self.path),
            "pending": sum(self._rows.values()),
            "bytes": total_bytes,
            "max_bytes": self.max_bytes,
            "lanes": lanes,
            "oldest_age_s": None if oldest is None else round(self._clock() - oldest, 3),
            "counters": counters,
            "dropped": dropped,
            "recovered_inflight": self.recovered,
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
        return [Row(s, i, Lane(ln), t, bytes(p), a) for s, i, ln, t, p, a in got]

    def purge(self, lanes: Iterable[Lane] | None = None) -> int:
        chosen = sorted(int(x) for x in (lanes if lanes is not None else Lane))

        def body(t: _Tally) -> int:
            n = 0
            for lane in chosen:
                cur = self._db.execute("DELETE FROM messages WHERE lane = ?", (lane,))
                n += cur.rowcount
                t.add(Lane(lane), -self._rows[Lane(lane)], -self._lane_bytes[Lane(lane)])
            self._bump_locked("purged", n)
            return n

        return int(self._write("purge", body))

    def recover_inflight(self) -> int:
        """Rows left in flight by a drain that could not settle them (a failed final
        write): ready again. Only for the outbox's single owner, between connections."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "UPDATE messages SET state = ? WHERE state = ?", (READY, INFLIGHT)
                )
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox recover failed: {exc}") from exc
        return int(cur.rowcount)

    def integrity_ok(self) -> bool:
        with self._lock:
            (res,) = self._db.execute("PRAGMA integrity_check").fetchone()
            counted = self._db.execute(
                "SELECT lane, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0)"
                " FROM messages GROUP BY lane"
            ).fetchall()
        consistent = all(
            self._rows[Lane(lane)] == n and self._lane_bytes[Lane(lane)] == b
            for lane, n, b in counted
        ) and sum(self._rows.values()) == sum(n for _, n, _ in counted)
        return bool(res == "ok") and consistent

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()


CLAIM_SQL = (
    "UPDATE messages SET state = ?, attempts = attempts + 1"
    " WHERE seq IN (SELECT seq FROM messages WHERE state = ?{lane_filter}"
    " ORDER BY lane, seq LIMIT ?)"
    " RETURNING seq, id, lane, topic, payload, attempts"
)
