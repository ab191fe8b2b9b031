"""The outbox's bounds, enforced inside the writing transaction.

``max_bytes`` caps the payload bytes stored -- over it, the oldest rows of the least
important lane go first (telemetry, health, trips, then alerts: ``EVICT_ORDER``);
``lane_max_bytes`` caps one lane; ``ttl_s`` expires a lane's rows older than that (by
the wall clock at insertion). Every drop is counted (``evicted_<lane>``,
``expired_<lane>``) and survives restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import structlog

from edge.logconf import Once
from edge.model import Lane
from edge.outbox.schema import State, lane_totals
from edge.outbox.store import Store

log = structlog.get_logger()

# least important first: what goes when space runs out
EVICT_ORDER = (Lane.TELEMETRY, Lane.HEALTH, Lane.TRIP, Lane.ALERT)
LOWER = (Lane.TELEMETRY, Lane.HEALTH)  # lanes that never get the reserve


class Bounds:
    """Expiry and eviction; every method runs inside the caller's transaction."""

    def __init__(self, store: Store, *, path: Path, max_bytes: int,
                 lane_max_bytes: Mapping[Lane, int] | None, ttl_s: Mapping[Lane, float] | None,
                 once: Once) -> None:
        self.store = store
        self.path = path
        self.max_bytes = max_bytes
        self.lane_max_bytes = {Lane(k): int(v) for k, v in (lane_max_bytes or {}).items()}
        self.ttl_s = {Lane(k): float(v) for k, v in (ttl_s or {}).items()}
        self.held_bytes: dict[Lane, int] = {}  # bytes of this process's HELD rows
        self._once = once

    def expire(self, now: float) -> int:
        db = self.store.db
        total = 0
        for lane, ttl in self.ttl_s.items():
            cutoff = now - ttl
            n = 0
            while True:
                head = db.execute(
                    "SELECT seq, created FROM messages"
                    " WHERE state = ? AND lane = ? ORDER BY seq LIMIT 500",
                    (int(State.READY), int(lane)),
                ).fetchall()
                old = [s for s, c in head if c < cutoff]
                if not old:
                    break
                db.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s in old])
                n += len(old)
                if len(old) < len(head):
                    break
            if n:
                self.store.bump(f"expired_{lane.name.lower()}", n)
                self._once(log, f"expired:{lane.name}", "outbox: rows past their lane's TTL"
                           " dropped", lane=lane.name.lower(), rows=n, ttl_s=ttl)
                total += n
        return total

    def evict(self) -> int:
        """Per-lane quotas first, then the global cap, least important lane first."""
        evicted = 0
        totals = lane_totals(self.store.db)
        held = self.held_bytes  # rows no key opens: kept, and not counted against caps
        for lane, quota in self.lane_max_bytes.items():
            over = totals.get(lane, (0, 0))[1] - held.get(lane, 0) - quota
            if over > 0:
                evicted += self.evict_lane(lane, over)[0]
        over = (sum(b for _, b in lane_totals(self.store.db).values())
                - sum(held.values()) - self.max_bytes)
        for lane in EVICT_ORDER:
            if over <= 0:
                break
            n, freed = self.evict_lane(lane, over)
            evicted += n
            over -= freed
        return evicted

    def evict_lower(self, nbytes: int, spare: set[str] | None = None) -> int:
        """Evict ``nbytes`` of the oldest telemetry, then health rows."""
        evicted = 0
        for lane in LOWER:
            if nbytes <= 0:
                break
            n, freed = self.evict_lane(lane, nbytes, spare)
            evicted += n
            nbytes -= freed
        return evicted

    def evict_lane(self, lane: Lane, over: int,
                   spare: set[str] | None = None) -> tuple[int, int]:
        """Delete the oldest rows of ``lane`` (ready ones first, then rows in flight)
        until ``over`` bytes are gone; ``spare``: ids not to take. Returns (rows, bytes)."""
        db = self.store.db
        n = freed = 0
        for state in (State.READY, State.INFLIGHT):
            while over > 0:
                victims = db.execute(
                    "SELECT seq, id, LENGTH(payload) FROM messages"
                    " WHERE state = ? AND lane = ? ORDER BY seq LIMIT 256",
                    (int(state), int(lane)),
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
                db.executemany("DELETE FROM messages WHERE seq = ?", [(s,) for s in take])
                n += len(take)
        if n:
            self.store.bump(f"evicted_{lane.name.lower()}", n)
            self._once(log, f"evicted:{lane.name}", "outbox: oldest rows evicted to make room",
                       lane=lane.name.lower(), rows=n, path=str(self.path))
        return n, freed
