"""``Outbox``: the durable queue's API (the package docstring tells the policy)."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import OutboxError
from edge.logconf import Once
from edge.model import Envelope, Lane
from edge.outbox.bounds import Bounds
from edge.outbox.claims import Claims
from edge.outbox.disk import MB, RESERVE_SPARE, DiskWatch, Reserve
from edge.outbox.intake import Intake
from edge.outbox.report import integrity_ok, stats
from edge.outbox.schema import Row, open_schema
from edge.outbox.sealing import Codec, sealer_for
from edge.outbox.store import Store
from edge.private import private_dir, private_file, tighten

if TYPE_CHECKING:
    from edge.config import OutboxConfig
    from edge.seal import Sealer


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
        self.clock = clock
        self._once = Once()
        self.disk_watch = DiskWatch(self.path, min_free_bytes=min_free_bytes,
                                    reserve_bytes=reserve_bytes if recover else 0,
                                    once=self._once)
        self.recovered = 0
        self.migrated_from: int | None = None
        self.codec = Codec(sealer, path=self.path, once=self._once)
        try:
            if recover:  # the owner: private files (a tool beside it only reads them)
                private_dir(self.path.parent)
                private_file(self.path)
                for extra in ("-wal", "-shm", ".reserve"):
                    tighten(self.path.with_name(self.path.name + extra))
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                 timeout=10.0)
            try:
                self.disk_watch.wal_limits(db, "small")  # until the first look at the disk
                self.recovered, self.migrated_from = open_schema(db, self.path, recover)
            except BaseException:
                db.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
        self._store = Store(db, self.disk_watch)
        self.bounds = Bounds(self._store, path=self.path, max_bytes=max_bytes,
                             lane_max_bytes=lane_max_bytes, ttl_s=ttl_s, once=self._once)
        self._claims = Claims(self._store, self.codec, self.bounds)
        self._intake = Intake(self._store, self.bounds, self.codec, path=self.path,
                              alert_sync=alert_sync, sync_interval_s=sync_interval_s,
                              clock=clock, once=self._once)
        # the schema's pages out of the WAL at once: a small disk starts with a short WAL
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.disk_watch.check(db)
        if self.reserve.target:
            self.reserve.acquire(spare=RESERVE_SPARE)

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

    # ------------------------------------------------------------------ what it holds

    @property
    def _db(self) -> sqlite3.Connection:
        return self._store.db

    @_db.setter
    def _db(self, db: sqlite3.Connection) -> None:  # tests put a fault injector here
        self._store.db = db

    @property
    def sealer(self) -> Sealer | None:
        return self.codec.sealer

    @property
    def unreadable(self) -> list[str]:
        """Sealed values no key opened (why, per value; at most 100)."""
        return self.codec.unreadable

    @property
    def reserve(self) -> Reserve:
        return self.disk_watch.reserve

    @property
    def max_bytes(self) -> int:
        return self.bounds.max_bytes

    @property
    def lane_max_bytes(self) -> dict[Lane, int]:
        return self.bounds.lane_max_bytes

    @property
    def ttl_s(self) -> dict[Lane, float]:
        return self.bounds.ttl_s

    @property
    def sync_interval_s(self) -> float:
        return self._intake.sync_interval_s

    @sync_interval_s.setter
    def sync_interval_s(self, value: float) -> None:
        self._intake.sync_interval_s = value

    @property
    def batch_dropped(self) -> int:
        """Rows of the last put's own batch that had no room (dropped, counted)."""
        return self._intake.batch_dropped

    @property
    def batch_left(self) -> list[Envelope]:
        """Rows of the last put's own batch that had no room, for the caller to hold."""
        return self._intake.batch_left

    # ------------------------------------------------------------------ writing

    def put(self, envelopes: Sequence[Envelope],
            state: Mapping[str, Any] | None = None, *, hold_lower: bool = False) -> int:
        """Store envelopes durably (and ``state`` documents, in the same transaction);
        returns how many rows were dropped to fit (older rows evicted or expired, and
        rows of this batch that a full disk had no room for).

        On a full disk the batch's telemetry and health rows that find no room are
        dropped and counted (``dropped_full_<lane>``) -- or, with ``hold_lower``, left
        out and listed in ``batch_left`` for the caller to hold and offer again (the
        daemon keeps them in memory for a while). Raises ``OutboxError`` only when not
        even the alerts and trip edges of the batch could be stored (the disk is full
        beyond what evicting the lower lanes and the reserve freed, or it fails)."""
        return self._intake.put(envelopes, state, hold_lower)

    def expire(self) -> int:
        """Drop rows past their lane's TTL now; returns how many."""
        if not self.bounds.ttl_s:
            return 0
        now = self.clock()
        return int(self._store.locked_write("expire", lambda: self.bounds.expire(now)))

    def load_state(self) -> dict[str, Any]:
        """Every ``state`` document as it was last committed."""
        with self._store.lock:
            try:
                got = self._db.execute("SELECT key, value FROM state").fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox state read failed: {exc}") from exc
        return self.codec.state(got)

    # ------------------------------------------------------------------ draining

    def claim(self, limit: int, *, lanes: Iterable[Lane] | None = None) -> list[Row]:
        """Mark up to ``limit`` ready rows in flight, best lane first, FIFO within.

        The inner SELECT walks the ``(state, lane, seq)`` index: its cost does not grow
        with the backlog (see ``tests/unit/test_outbox.py`` for the query plan).
        """
        return self._claims.claim(limit, lanes=lanes)

    def ack(self, seqs: Sequence[int]) -> None:
        """The uplink confirmed these: they leave the outbox."""
        self.settle(acked=seqs)

    def reject(self, seqs: Sequence[int]) -> None:
        """Never deliverable as they are (ACL denied, too large): dropped, counted."""
        self.settle(rejected=seqs)

    def release(self, seqs: Sequence[int]) -> None:
        """Not delivered (connection lost): back to ready, in their old place."""
        self.settle(released=seqs)

    def settle(self, *, acked: Sequence[int] = (), rejected: Sequence[int] = (),
               released: Sequence[int] = ()) -> None:
        """``ack``, ``reject`` and ``release`` of many rows in one transaction (one
        commit): the forwarder settles the outcomes of a burst of publishes at once."""
        self._claims.settle(acked=acked, rejected=rejected, released=released)

    def recover_inflight(self) -> int:
        """Rows left in flight by a drain that could not settle them (a failed final
        write): ready again. Only for the outbox's single owner, between connections."""
        return self._claims.recover_inflight()

    # ------------------------------------------------------------------ inspection

    def disk(self) -> dict[str, Any]:
        """Free space, pressure and the reserve, for health and ``edge status`` (free
        space read now; the pressure as the last write decided it: this changes nothing
        and may run beside a write in another thread)."""
        return self.disk_watch.report()

    def stats(self) -> dict[str, Any]:
        """Counts per lane, bytes, drops; cheap (no scan of the backlog)."""
        return stats(self._store, self)

    def iter_rows(self, lanes: Iterable[Lane] | None = None) -> list[Row]:
        chosen = sorted(int(x) for x in (lanes if lanes is not None else Lane))
        marks = ",".join("?" * len(chosen))
        with self._store.lock:
            got = self._db.execute(
                "SELECT seq, id, lane, topic, payload, attempts FROM messages"
                f" WHERE lane IN ({marks}) ORDER BY lane, seq", chosen).fetchall()
        return self.codec.opened(got)[0]  # those that do not open: in ``unreadable``

    def purge(self, lanes: Iterable[Lane] | None = None) -> int:
        """Delete every row of ``lanes`` (all lanes by default); safe beside a running
        daemon: the totals follow by trigger, its in-flight rows settle as gone."""
        chosen = sorted(int(x) for x in (lanes if lanes is not None else Lane))

        def body() -> int:
            n = sum(self._db.execute("DELETE FROM messages WHERE lane = ?", (lane,)).rowcount
                    for lane in chosen)
            self._store.bump("purged", n)
            return n

        return int(self._store.locked_write("purge", body))

    def integrity_ok(self) -> bool:
        """SQLite's integrity check passes and the lane totals equal a fresh count."""
        return integrity_ok(self._store)

    def close(self) -> None:
        self._store.close()
