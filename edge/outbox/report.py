"""What the outbox holds, for health, ``edge status`` and ``edge outbox stats``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge.model import Lane
from edge.outbox.schema import State, count_lanes, lane_totals, merged
from edge.outbox.store import Store

if TYPE_CHECKING:
    from edge.outbox.outbox import Outbox


def stats(store: Store, outbox: Outbox) -> dict[str, Any]:
    """Counts per lane, bytes, drops; cheap (no scan of the backlog). One read
    transaction: totals and counters agree with each other."""
    db = store.db

    def body() -> tuple[Any, ...]:
        per_state = {
            st: dict(db.execute("SELECT lane, COUNT(*) FROM messages WHERE state = ?"
                                " GROUP BY lane", (int(st),)).fetchall())
            for st in (State.INFLIGHT, State.HELD)}
        heads = [db.execute("SELECT created FROM messages WHERE state = ? AND lane = ?"
                            " ORDER BY seq LIMIT 1", (int(State.READY), int(lane))).fetchone()
                 for lane in Lane]
        counters = dict(db.execute("SELECT name, value FROM counters"))
        return lane_totals(db), per_state, heads, merged(counters, store.unsaved)

    totals, per_state, heads, counters = store.read("stats", body)
    inflight, held = per_state[State.INFLIGHT], per_state[State.HELD]
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
    sealer = outbox.sealer
    return {
        "path": str(outbox.path),
        "pending": sum(n for n, _ in totals.values()),
        "bytes": sum(b for _, b in totals.values()),
        "max_bytes": outbox.max_bytes,
        "lanes": lanes,
        "oldest_age_s": None if oldest is None else round(outbox.clock() - oldest, 3),
        "counters": counters,
        "dropped": dropped,
        "recovered_inflight": outbox.recovered,
        "disk": outbox.disk(),
        "encryption": None if sealer is None else sealer.describe(),
        "undecryptable": sum(int(v) for v in held.values()),
    }


def integrity_ok(store: Store) -> bool:
    """SQLite's integrity check passes and the lane totals equal a fresh count."""
    db = store.db
    res, counted, totals = store.read("integrity check", lambda: (
        db.execute("PRAGMA integrity_check").fetchone()[0], count_lanes(db), lane_totals(db)))
    consistent = all(totals.get(lane, (0, 0)) == counted.get(lane, (0, 0)) for lane in Lane)
    return bool(res == "ok") and consistent
