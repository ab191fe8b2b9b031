"""The rules engine: fixes, speed samples and time in; geofence, overspeed, POI and
trip events out. Pure and deterministic (the zones file is read only by
``reload_file``, which the daemon calls on a reload request).

Events are ``edge.model.Event``; their ``time`` is the time of the input that decided
them (fix or sample time, UTC epoch seconds), made monotone: an event is never stamped
earlier than one returned before it. ``lat``/``lon`` are those of the last valid fix.
Bodies never carry ``type`` (the envelope adds it):

* geofence ``{"fence", "name", "transition"[, "after_gap": true]}``
* overspeed ``{"phase", "speed_kmh", "limit_kmh", "limit_source", "peak_kmh",
  "duration_s"[, "reason"]}``
* poi ``{"poi", "name", "offer", "distance_m"}``
* trip ``{"phase": "start", "start_ts", "speed_kmh"}`` /
  ``{"phase": "end", "start_ts", "distance_m", "duration_s", "max_kmh", "mean_kmh",
  "idle_s", "harsh_accel", "harsh_brake", "reason"}``
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.config import RulesConfig
from edge.core.drivegeo import DriveGeometry
from edge.core.geo import M_PER_DEG, wrap_lon
from edge.core.geofence import MAX_CROSS_MPS, GeofenceTracker, hysteresis_for
from edge.core.limits import Limit
from edge.core.poi import PoiTracker
from edge.core.speed import OverspeedTracker
from edge.core.trip import TripTracker
from edge.core.zones import ZoneLocator, Zones, empty_zones, load_zones
from edge.errors import ZonesError
from edge.model import Event, Fix, SpeedSample

if TYPE_CHECKING:
    from edge.roads.provider import RoadLimits

_Body = dict[str, object]
_NONE: frozenset[int] = frozenset()


class Rules:
    """One car's rules. Feed it in time order; each call returns the events it decided.

    * ``on_fix(fix)``: geofences, POIs, the speed limit of the zones the car is in, and
      trips from GNSS speed while no speed samples arrive. Invalid fixes and fixes not
      newer than the last valid one are counted and change nothing.
    * ``on_speed(sample)``: the arbitrated speed (CAN at up to 100 Hz, else GNSS):
      overspeed episodes and trip statistics.
    * ``on_ignition(time, on)``: when an ignition signal exists, it owns trip start/end.
    * ``tick(time)``: time passes without input (gaps, timeouts); call about once a second.
    * ``close(time)``: the drive or daemon ends: open episodes and trips get an ``end``.
    * ``reload(zones)`` / ``reload_file(path)``: swap the zone set atomically.
    * ``health()``: counters and state, JSON-serialisable.
    """

    def __init__(self, config: RulesConfig, zones: Zones | None = None,
                 roads: RoadLimits | None = None) -> None:
        self.cfg = config
        self.roads = roads  # posted road limits (edge.roads), the one hook into the speed rule
        self.zones = zones if zones is not None else empty_zones()
        self._loc = ZoneLocator(self.zones)
        self._drive: DriveGeometry | None = None  # answers computed for a whole drive
        self._has_pois = bool(self.zones.pois)
        self._has_limits = bool(self.zones.limit_claims(range(len(self.zones.zones))))
        self._fix_gap_s = config.geofence.gap_s
        self._speed_gap_s = config.speed.gap_s
        self.geofence = GeofenceTracker(config.geofence, self.zones)
        self.speed = OverspeedTracker(config.speed)
        self.poi = PoiTracker(config.poi)
        self.trip = TripTracker(config.trip, gap_s=config.speed.gap_s)
        self._fix: tuple[float, float, float] | None = None  # t, lat, lon of last valid fix
        self._rounded_for: tuple[float, float, float] | None = None
        self._rounded: tuple[float | None, float | None] = (None, None)
        self._prev_inside: Set[int] = _NONE
        self._inside_list: list[int] = []
        self._last_event_t = float("-inf")
        self._last_input_t: float | None = None
        self._last_sample_t: float | None = None
        self._h = 0.0
        self._hdop: float | None = None  # the last fix's, and its hysteresis
        self._h_fix = hysteresis_for(config.geofence, None)
        self._zones_error: str | None = None
        self._reloads = 0
        self._count: Counter[str] = Counter()
        self._events: Counter[str] = Counter()

    # ------------------------------------------------------------------ helpers

    def _emit(self, kind: str, t: float, body: Mapping[str, Any], clock: str) -> Event:
        t = max(t, self._last_event_t)
        self._last_event_t = t
        self._events[kind] += 1
        fix = self._fix
        if fix is not self._rounded_for:  # once per fix, however many events it makes
            self._rounded_for = fix
            self._rounded = (None, None) if fix is None else (round(fix[1], 7),
                                                              round(fix[2], 7))
        lat, lon = self._rounded
        return Event(kind=kind, time=t, body=body, lat=lat, lon=lon, clock=clock)

    def _seen(self, t: float) -> None:
        if self._last_input_t is None or t > self._last_input_t:
            self._last_input_t = t

    def _trip_events(self, out: list[Event], items: list[tuple[float, _Body]], clock: str) -> None:
        for t, body in items:
            if body["phase"] == "start":
                self.poi.new_trip()
            out.append(self._emit("trip", t, body, clock))

    # ------------------------------------------------------------------ inputs

    def on_fix(self, fix: Fix) -> list[Event]:
        count = self._count
        count["fixes"] += 1
        t, lat, lon = fix.time, fix.lat, fix.lon
        if (t is None or not fix.valid or lat is None or lon is None
                or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0)):  # also NaN
            count["invalid_fixes"] += 1
            return self.tick(t) if t is not None and math.isfinite(t) else []
        prev = self._fix
        gap = False
        if prev is not None:
            if t <= prev[0]:
                count["reordered_fixes"] += 1
                return []
            gap = t - prev[0] > self._fix_gap_s
        if self._last_input_t is None or t > self._last_input_t:
            self._last_input_t = t
        out: list[Event] = []
        geo = self.geofence
        if gap:
            geo.mark_gap()
        self._fix = (t, lat, lon)
        hdop = fix.hdop
        if hdop != self._hdop or hdop is None:
            self._hdop = hdop
            self._h_fix = hysteresis_for(self.cfg.geofence, hdop)
        h = self._h = self._h_fix
        drive = self._drive
        got = drive.step(lat, lon, h) if drive is not None else None
        if got is not None:
            inside, near, hits = got
        else:
            inside, near = self._loc.locate(lat, lon, h, geo.watched)
            hits = None

        # the speed limit where the car is (used by on_speed); a change ends an episode
        roads = self.roads
        changed = inside is not self._inside_list and inside != self._inside_list
        if changed:
            self._inside_list = inside
            if roads is None and self._has_limits:
                for at, b in self.speed.set_limit(t, *self._limit_at(inside)):
                    out.append(self._emit("overspeed", at, b, "gnss"))
        if roads is not None:  # the road under the car changes without a zone change
            roads.on_fix(fix)
            for at, b in self.speed.set_limit(t, *self._limit_at(inside)):
                out.append(self._emit("overspeed", at, b, "gnss"))

        # geofences (``hits`` empty: the drive's geometry says no fence on the segment)
        if (hits is None or hits) and prev is not None and not gap and not geo.in_gap:
            crossed = self._crossings(prev[1], prev[2], lat, lon, h, t - prev[0], inside,
                                      hits)
        else:
            crossed = []
        # the very answer of the last pass, no timer due: the pass would change nothing
        # (the drive's geometry hands out the same lists while the answer repeats)
        if not (t < geo.quiet_until and inside is geo.last_inside and near is geo.last_near):
            for tr in geo.update(t, inside, near, lat, lon, None if gap else prev, 2.0 * h):
                out.append(self._emit("geofence", t, tr.body(), "gnss"))
        if crossed:
            for tr in geo.crossed(crossed):
                out.append(self._emit("geofence", t, tr.body(), "gnss"))
        if changed:
            self._prev_inside = set(inside) if inside else _NONE

        # trips from GNSS speed when no speed samples arrive
        if fix.speed_mps is not None and (
            self._last_sample_t is None or t - self._last_sample_t > self._speed_gap_s
        ):
            items = self.trip.on_speed(t, fix.speed_mps * 3.6)
            if items:
                self._trip_events(out, items, "gnss")

        # POIs
        if inside and self._has_pois:
            zones = self.zones.zones
            pois = [(z, max(0.0, z.signed_distance_m(lat, lon) + (z.radius_m or 0.0)))
                    for z in (zones[i] for i in inside) if z.kind == "poi"]
            if pois:
                for body in self.poi.on_fix(t, pois):
                    out.append(self._emit("poi", t, body, "gnss"))
        return out

    def _limit_at(self, inside: list[int]) -> tuple[Limit, str | None]:
        """The applicable limit and the road it is posted on: the zones the car is in
        claim theirs (``maxspeed``, "none" included); ``edge.core.limits.decide_limit``
        decides, with the matched road's posted limit when ``[roads]`` has an index."""
        claims = self.zones.limit_claims(inside) if self._has_limits else []
        if self.roads is not None:
            return self.roads.decide(claims, self.cfg.speed)
        return self.speed.decide(claims), None

    def _crossings(
        self, lat1: float, lon1: float, lat2: float, lon2: float, h: float, dt: float,
        inside: list[int], hits: frozenset[int] | None = None,
    ) -> list[int]:
        """Fences the segment from the previous fix drove through; ``hits``: the fences
        the segment touches when the drive's geometry knows them (None: measure)."""
        if hits is not None and not hits:
            return []  # foreseen: no fence on this segment
        dy = lat2 - lat1
        if abs(dy) * M_PER_DEG > MAX_CROSS_MPS * dt:
            return []  # a jump (the north-south part alone is too far)
        # equirectangular is plenty for a segment between two fixes
        kx = math.cos(math.radians(lat2))
        dx = wrap_lon(lon2 - lon1) * kx
        seg = math.sqrt(dx * dx + dy * dy) * M_PER_DEG
        if seg <= 2.0 * h or seg > MAX_CROSS_MPS * dt:
            return []  # jitter, or a jump (not a drive through a fence)
        skip = self._prev_inside | set(inside)
        if hits is not None:
            return [i for i in sorted(hits) if i not in skip and not self.geofence.is_busy(i)]
        cands = self._loc.nearby(lat2, lon2, seg)
        if cands is None:
            d = seg / 111_000.0 * 2 + 1e-4
            lo_lon = min(lon1, lon2)
            hi_lon = max(lon1, lon2)
            if hi_lon - lo_lon > 180.0:  # the segment crosses the antimeridian
                lo_lon, hi_lon = hi_lon, lo_lon + 360.0
            cands = sorted(self.zones.query_box(lo_lon - d, min(lat1, lat2) - d,
                                                hi_lon + d, max(lat1, lat2) + d))
        zones = self.zones.zones
        out = []
        for i in cands:
            z = zones[i]
            if z.kind != "fence" or i in skip or self.geofence.is_busy(i):
                continue
            if z.segment_hits(lat1, lon1, lat2, lon2):
                out.append(i)
        return out

    def on_speed(self, sample: SpeedSample) -> list[Event]:
        self._count["speed_samples"] += 1
        t = sample.time
        if not (math.isfinite(t) and math.isfinite(sample.speed_kmh)) or sample.speed_kmh < 0:
            self._count["invalid_speed"] += 1
            return []
        if self._last_sample_t is not None and t < self._last_sample_t:
            self._count["reordered_speed"] += 1
            return []
        self._last_sample_t = t
        self._seen(t)
        clock = "gnss" if sample.source == "gnss" else "system"
        out = [self._emit("overspeed", at, b, clock)
               for at, b in self.speed.on_speed(t, sample.speed_kmh)]
        self._trip_events(out, self.trip.on_speed(t, sample.speed_kmh), clock)
        return out

    def on_ignition(self, time: float, on: bool) -> list[Event]:
        """Ignition signal (when one is configured): trips follow it instead of movement."""
        self._seen(time)
        out: list[Event] = []
        self._trip_events(out, self.trip.on_ignition(time, on), "system")
        return out

    def tick(self, time: float) -> list[Event]:
        """Time passes without input: gaps end speed episodes, make fences unknown and
        end trips whose data stopped."""
        out: list[Event] = []
        if self._fix is not None and time - self._fix[0] > self.cfg.geofence.gap_s:
            self.geofence.mark_gap()
        out.extend(self._emit("overspeed", at, b, "system") for at, b in self.speed.tick(time))
        self._trip_events(out, self.trip.tick(time), "system")
        return out

    def close(self, time: float) -> list[Event]:
        """The drive or the daemon ends: open episodes and trips get their ``end``."""
        out = [self._emit("overspeed", at, b, "system") for at, b in self.speed.close(time)]
        self._trip_events(out, self.trip.close(time), "system")
        return out

    # ------------------------------------------------------------------ zones

    @property
    def drive_geometry(self) -> DriveGeometry | None:
        return self._drive

    def use_drive_geometry(self, geometry: DriveGeometry | None) -> None:
        """Geometry answers precomputed for the drive about to be fed (replay, report):
        the same events as without, fewer geometry calls. Dropped on a zones reload."""
        if geometry is not None and geometry.zones is not self.zones:
            raise ValueError("drive geometry computed for other zones")
        self._drive = geometry

    def reload(self, zones: Zones) -> list[Event]:
        """Swap to a new zone set atomically. States of fence ids present in both carry
        over; a new fence the car is in now is reported ``inside``."""
        loc = ZoneLocator(zones)
        inside_now = None
        if self._fix is not None:
            _, lat, lon = self._fix
            inside_now, _ = loc.locate(lat, lon, self._h)
        t = self._last_input_t if self._last_input_t is not None else 0.0
        trs = self.geofence.reload(zones, inside_now, t)
        self.poi.carry_over({z.id for z in zones.pois})
        self.zones = zones
        self._loc = loc
        self._drive = None
        self._has_pois = bool(zones.pois)
        self._has_limits = bool(zones.limit_claims(range(len(zones.zones))))
        self._prev_inside = set(inside_now or ())
        self._inside_list = list(inside_now or ())
        self._zones_error = None
        self._reloads += 1
        out = [self._emit("geofence", t, tr.body(), "gnss") for tr in trs]
        if self._fix is not None:
            for at, b in self.speed.set_limit(t, *self._limit_at(inside_now or [])):
                out.append(self._emit("overspeed", at, b, "gnss"))
        return out

    def reload_file(self, path: Path) -> list[Event]:
        """Load ``path`` and swap to it; an invalid file keeps the old zones and
        ``health()["zones"]["error"]`` says why."""
        try:
            zones = load_zones(path)
        except ZonesError as exc:
            self._zones_error = str(exc)
            self._count["zones_rejected"] += 1
            return []
        return self.reload(zones)

    def zones_rejected(self, reason: str) -> None:
        """Record a reload the caller could not even parse (the old zones stay)."""
        self._zones_error = reason
        self._count["zones_rejected"] += 1

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        return {
            "zones": {
                "source": self.zones.source,
                **self.zones.counts(),
                "reloads": self._reloads,
                "rejected": self._count["zones_rejected"],
                "error": self._zones_error,
            },
            "inputs": {k: self._count[k] for k in (
                "fixes", "invalid_fixes", "reordered_fixes", "speed_samples", "invalid_speed",
                "reordered_speed")},
            "geofence": {
                "state": "unknown" if self._fix is None or self.geofence.in_gap else "known",
                "inside": self.geofence.inside_ids(),
                "hysteresis_m": round(self._h, 1),
            },
            "overspeed": {
                "active": self.speed.active,
                "limit_kmh": self.speed.limit,
                "limit_source": self.speed.source,
                **({"road": self.speed.road, "roads": self.roads.health()}
                   if self.roads is not None else {}),
            },
            "trip": {"active": self.trip.active, "trips": self.trip.trips},
            "poi": {"offers": self.poi.offers, "rate_capped": self.poi.rate_capped,
                    "cooldown_skipped": self.poi.cooldown_skipped},
            "events": dict(self._events),
            "index": {"queries": self._loc.queries, "evaluations": self._loc.evaluations},
        }
