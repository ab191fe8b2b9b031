"""The rules engine: fixes, speed samples and time in; geofence, overspeed, POI and
trip events out. Pure and deterministic (the daemon reads the zones file and hands the
zones to ``reload``).

``Rules`` composes: it checks the inputs' order, asks ``ZoneView`` (edge.core.zoneview)
where the car is, hands each tracker its part (``GeofenceTracker``, ``OverspeedTracker``,
``PoiTracker``, ``TripTracker``: one rule each) and stamps their events.

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
from typing import TYPE_CHECKING, Any

from edge.config import RulesConfig
from edge.core.geofence import GeofenceTracker, hysteresis_for
from edge.core.limits import Limit
from edge.core.poi import PoiTracker
from edge.core.speed import OverspeedTracker
from edge.core.trip import TripTracker
from edge.core.zones import ZoneLocator, Zones, empty_zones
from edge.core.zoneview import ZoneView
from edge.model import Event, Fix, SpeedSample

if TYPE_CHECKING:
    from edge.core.drivegeo import DriveGeometry  # edge replay/report only, not the daemon
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
    * ``reload(zones)``: swap the zone set atomically; ``zones_rejected(reason)``: an
      update that could not be used (the old zones stay, health says why).
    * ``health()``: counters and state, JSON-serialisable.
    """

    def __init__(self, config: RulesConfig, zones: Zones | None = None,
                 roads: RoadLimits | None = None) -> None:
        self.cfg = config
        self.roads = roads  # posted road limits (edge.roads), the one hook into the speed rule
        self.where = ZoneView(zones if zones is not None else empty_zones())
        self._fix_gap_s = config.geofence.gap_s
        self._speed_gap_s = config.speed.gap_s
        self.geofence = GeofenceTracker(config.geofence, self.where.zones)
        self.speed = OverspeedTracker(config.speed)
        self.poi = PoiTracker(config.poi)
        self.trip = TripTracker(config.trip, gap_s=config.speed.gap_s)
        self._fix: tuple[float, float, float] | None = None  # t, lat, lon of last valid fix
        self.stamp = EventStamper()
        self._prev_inside: Set[int] = _NONE
        self._inside_list: list[int] = []
        self._last_input_t: float | None = None
        self._last_sample_t: float | None = None
        self._h = 0.0
        self._hdop: float | None = None  # the last fix's, and its hysteresis
        self._h_fix = hysteresis_for(config.geofence, None)
        self._count: Counter[str] = Counter()

    @property
    def zones(self) -> Zones:
        return self.where.zones

    # ------------------------------------------------------------------ helpers

    def _emit(self, kind: str, t: float, body: Mapping[str, Any], clock: str) -> Event:
        return self.stamp.event(kind, t, body, clock, self._fix)

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
        where = self.where
        drive = where.drive
        got = drive.step(lat, lon, h) if drive is not None else None
        if got is not None:
            inside, near, hits = got
        else:
            inside, near = where.loc.locate(lat, lon, h, geo.watched)
            hits = None

        # the speed limit where the car is (used by on_speed); a change ends an episode
        roads = self.roads
        changed = inside is not self._inside_list and inside != self._inside_list
        if changed:
            self._inside_list = inside
            if roads is None and where.has_limits:
                for at, b in self.speed.set_limit(t, *self._limit_at(inside)):
                    out.append(self._emit("overspeed", at, b, "gnss"))
        if roads is not None:  # the road under the car changes without a zone change
            roads.on_fix(fix)
            for at, b in self.speed.set_limit(t, *self._limit_at(inside)):
                out.append(self._emit("overspeed", at, b, "gnss"))

        # geofences (``hits`` empty: the drive's geometry says no fence on the segment)
        if (hits is None or hits) and prev is not None and not gap and not geo.in_gap:
            crossed = where.crossings(prev[1], prev[2], lat, lon, h, t - prev[0], inside,
                                      self._prev_inside, geo.is_busy, hits)
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
        if inside and where.has_pois:
            pois = where.pois_at(inside, lat, lon)
            if pois:
                for body in self.poi.on_fix(t, pois):
                    out.append(self._emit("poi", t, body, "gnss"))
        return out

    def _limit_at(self, inside: list[int]) -> tuple[Limit, str | None]:
        """The applicable limit and the road it is posted on: the zones the car is in
        claim theirs (``maxspeed``, "none" included); ``edge.core.limits.decide_limit``
        decides, with the matched road's posted limit when ``[roads]`` has an index."""
        claims = self.where.limit_claims(inside)
        if self.roads is not None:
            return self.roads.decide(claims, self.cfg.speed)
        return self.speed.decide(claims), None

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
        return self.where.drive

    def use_drive_geometry(self, geometry: DriveGeometry | None) -> None:
        """Geometry answers precomputed for the drive about to be fed (replay, report):
        the same events as without, fewer geometry calls. Dropped on a zones reload."""
        self.where.use_drive_geometry(geometry)

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
        self.where.swap(zones, loc)
        self._prev_inside = set(inside_now or ())
        self._inside_list = list(inside_now or ())
        out = [self._emit("geofence", t, tr.body(), "gnss") for tr in trs]
        if self._fix is not None:
            for at, b in self.speed.set_limit(t, *self._limit_at(inside_now or [])):
                out.append(self._emit("overspeed", at, b, "gnss"))
        return out

    def zones_rejected(self, reason: str) -> None:
        """Record a zones update the caller could not use (the old zones stay and
        ``health()["zones"]["error"]`` says why)."""
        self.where.reject(reason)

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        return {
            "zones": self.where.health(),
            "inputs": {k: self._count[k] for k in (
                "fixes", "invalid_fixes", "reordered_fixes", "speed_samples", "invalid_speed",
                "reordered_speed")},
            "geofence": {
                "state": "unknown" if self._fix is None or self.geofence.in_gap else "known",
                "inside": self.geofence.inside_ids(),
                "hysteresis_m": round(self._h, 1),
            },
            "overspeed": self.speed.health() if self.roads is None else {
                **self.speed.health(), "road": self.speed.road, "roads": self.roads.health()},
            "trip": self.trip.health(),
            "poi": self.poi.health(),
            "events": dict(self.stamp.counts),
            "index": {"queries": self.where.loc.queries,
                      "evaluations": self.where.loc.evaluations},
        }


class EventStamper:
    """Stamps the trackers' decisions into ``Event``s: time made monotone (never earlier
    than an event before it), the last valid fix's position rounded to 7 decimals (once
    per fix, however many events it makes), counted by kind."""

    __slots__ = ("_rounded", "_rounded_for", "counts", "last_t")

    def __init__(self) -> None:
        self.last_t = float("-inf")
        self.counts: Counter[str] = Counter()
        self._rounded_for: tuple[float, float, float] | None = None
        self._rounded: tuple[float | None, float | None] = (None, None)

    def event(self, kind: str, t: float, body: Mapping[str, Any], clock: str,
              fix: tuple[float, float, float] | None) -> Event:
        t = max(t, self.last_t)
        self.last_t = t
        self.counts[kind] += 1
        if fix is not self._rounded_for:
            self._rounded_for = fix
            self._rounded = (None, None) if fix is None else (round(fix[1], 7),
                                                              round(fix[2], 7))
        lat, lon = self._rounded
        return Event(kind=kind, time=t, body=body, lat=lat, lon=lon, clock=clock)
