"""The rules' state across a restart: a JSON-able snapshot, and its restore. Pure.

What survives a restart (kill -9, a power glitch): the open trip (its statistics so
far), the POIs offered in it and every POI's last offer (cooldowns, the hourly cap),
an open overspeed episode, the geofence states, and the last valid fix. The daemon
stores the snapshot in the outbox database in the same transaction as the events it
follows (``edge.outbox.Outbox.put(..., state=...)``), so what was accepted and what
the rules remember never disagree.

On restore the gap is measured from the last input the snapshot saw to the first
valid fix after the restart (GNSS time; the system clock may be anything at boot):

* within ``rules.trip.resume_gap_s`` (default 5 min): everything goes on. The trip
  keeps its start and statistics (the distance of the gap itself is not counted), a
  POI offered before is not offered again, an open overspeed episode continues (no
  second start). Fences carry their states; a gap longer than ``geofence.gap_s``
  makes them stale as any gap in fixes does (the next transition says ``after_gap``).
* longer, or backwards in time (another recording, a clock fault), or no GNSS time
  at all within that long: the old trip ends with
  ``reason: "power_loss"``, stamped at the last time it was seen, with its last known
  values; an open overspeed episode ends the same way. POI cooldowns still hold.

A snapshot that does not fit the running code (another version's fields) restores
what fits and skips the rest (``restore`` reports what it skipped).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from edge.model import Event

if TYPE_CHECKING:
    from edge.core.rules import Rules

VERSION = 1


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _build(cls: Any, doc: Any) -> Any:
    """``cls(**doc)`` with the fields ``cls`` has now (missing ones keep defaults)."""
    if not isinstance(doc, dict):
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in doc.items() if k in names})
    except TypeError:
        return None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def snapshot(rules: Rules) -> dict[str, Any]:
    """The state worth keeping across a restart, as plain JSON values."""
    trip, poi, speed, geo = rules.trip, rules.poi, rules.speed, rules.geofence
    zones = geo.zones.zones
    fences = {
        zones[i].id: [st.state, st.since, st.dwelled, st.stale]
        for i, st in geo._st.items()
        if i < len(zones) and st.state is not None
    }
    return {
        "v": VERSION,
        "last_time": rules._last_input_t,
        "last_event_t": _finite(rules.stamp.last_t),
        "fix": list(rules._fix) if rules._fix is not None else None,
        "trip": {
            "open": _fields(trip._trip) if trip._trip is not None else None,
            "trips": trip.trips,
            "last": list(trip._last) if trip._last is not None else None,
            "ignition": trip._ignition,
        },
        "poi": {
            "this_trip": sorted(poi._this_trip),
            "last": dict(poi._last),
            "recent": list(poi._recent),
        },
        "speed": {
            "open": _fields(speed._ep) if speed._ep is not None else None,
            "episodes": speed.episodes,
            "last_v": speed._last_v,
        },
        "fences": {"known": geo._known, "states": fences},
    }


def carry_over(old: Rules, new: Rules, *, resume_gap_s: float) -> list[Event]:
    """``old``'s state put into ``new`` (rules rebuilt under new settings by a hot
    reload): the open trip, its POIs, an open overspeed episode and the fence states go
    on, as after a restart with no gap, so a configuration push mid-drive is no new trip
    and no second overspeed start. A limit the new settings change ends the episode at
    the next fix (``limit_changed``), as any limit change does."""
    doc = snapshot(old)
    last = doc.get("last_time")
    if not isinstance(last, int | float):
        return []  # nothing seen yet: nothing to carry
    events, _ = restore(new, doc, now=float(last), resume_gap_s=resume_gap_s)
    return events


def restore(rules: Rules, doc: dict[str, Any], *, now: float | None,
            resume_gap_s: float) -> tuple[list[Event], dict[str, Any]]:
    """Put ``doc`` (a ``snapshot``) back into fresh ``rules``; ``now``: the GNSS time of
    the first valid fix after the restart (None: none came). Returns the events the
    restore decided (a ``power_loss`` end of the old trip / episode) and a summary."""
    from edge.core.geofence import _Fence
    from edge.core.speed import _Episode
    from edge.core.trip import _Stats

    trip, poi, speed, geo = rules.trip, rules.poi, rules.speed, rules.geofence
    last = doc.get("last_time")
    gap = math.inf if now is None or not isinstance(last, int | float) else now - last
    # time going backwards (another recording, a clock fault) is no continuation either
    resumed = 0.0 <= gap <= resume_gap_s
    skipped: list[str] = []

    # where the car was, and the event clock: events stay monotone across the restart
    fix = doc.get("fix")
    if isinstance(fix, list) and len(fix) == 3:
        rules._fix = (float(fix[0]), float(fix[1]), float(fix[2]))
    if isinstance(doc.get("last_event_t"), int | float):
        rules.stamp.last_t = float(doc["last_event_t"])
    if isinstance(last, int | float):
        rules._last_input_t = float(last)

    # POIs: cooldowns and the hourly cap hold across trips; "this trip" only if it goes on
    p = doc.get("poi") or {}
    known = {z.id for z in rules.zones.pois}
    poi._last = {k: float(v) for k, v in dict(p.get("last") or {}).items() if k in known}
    poi._recent = deque(sorted(float(x) for x in p.get("recent") or []))
    if resumed:
        poi._this_trip = {k for k in p.get("this_trip") or [] if k in known}

    # fences: states by id (a fence gone from the zones is forgotten)
    f = doc.get("fences") or {}
    by_id = geo.zones.by_id
    for zid, st in dict(f.get("states") or {}).items():
        z = by_id.get(zid)
        if z is None or z.kind != "fence" or not isinstance(st, list) or len(st) != 4:
            continue
        geo._st[z.index] = _Fence(state=bool(st[0]), since=float(st[1]),
                                  dwelled=bool(st[2]), stale=bool(st[3]))
    if f.get("known"):
        geo._known = True
        geo._watch = {i for i, s in geo._st.items() if s.state is not False}

    events: list[Event] = []
    s = doc.get("speed") or {}
    ep = _build(_Episode, s.get("open")) if s.get("open") is not None else None
    if s.get("open") is not None and ep is None:
        skipped.append("overspeed")
    speed.episodes = int(s.get("episodes") or 0)
    last_v = float(s.get("last_v") or 0.0)
    t = doc.get("trip") or {}
    stats = _build(_Stats, t.get("open")) if t.get("open") is not None else None
    if t.get("open") is not None and stats is None:
        skipped.append("trip")
    trip.trips = int(t.get("trips") or 0)
    if isinstance(t.get("ignition"), bool):
        trip._ignition = t["ignition"]
    end_t = float(last) if isinstance(last, int | float) else 0.0
    if ep is not None:
        speed._ep = ep
        speed._peak = ep.peak
        speed._last_v = last_v
        speed._last_t = None  # the restart is no gap in the speed data
        if not resumed:
            at, body = speed._end(end_t, last_v, "power_loss", end_t)
            events.append(rules._emit("overspeed", at, body, "gnss"))
    if stats is not None:
        trip._trip = stats
        trip._last = None  # the gap is not driven distance
        if not resumed:
            until = stats.stop_since if stats.stop_since is not None else end_t
            at, body = trip._end(end_t, "power_loss", until)
            events.append(rules._emit("trip", at, body, "gnss"))
    if gap < 0:
        # time went backwards: nothing stamped in the old time line holds in the new
        # one (the restore's own events above were stamped in the old one)
        rules._fix = None
        rules.stamp.last_t = -math.inf
        rules._last_input_t = None
        poi._last, poi._recent = {}, deque()
        geo._st, geo._known, geo._watch = {}, False, set()
    summary = {
        "gap_s": None if math.isinf(gap) else round(gap, 1),
        "resumed": resumed,
        "trip": stats is not None,
        "overspeed": ep is not None,
        "pois_offered": len(poi._this_trip),
        "fences": len(geo._st),
        "skipped": skipped,
    }
    return events, summary
