"""Trips from movement (or ignition when a signal is fed).

A trip starts once the speed stayed at or above ``start_kmh`` for ``start_s`` (stamped
by the sample that confirms it); it ends once it stayed below for ``end_s``, stamped at
that deadline (stop lights and queues are idle time, not trip ends). Speed data that
stops for ``end_s`` ends the trip too (``reason: "no_data"``). When an ignition signal
is fed (``on_ignition``), ignition on/off starts and ends trips instead and movement
no longer does. The end carries the distance (speed integrated over time, trapezoids;
intervals longer than ``gap_s`` are not counted),
duration (first movement to the final stop), max and mean speed, idle time (stopped
inside the trip), and counts of harsh accelerations (>= ``harsh_accel_kmhs``) and
harsh brakings (<= ``harsh_brake_kmhs``), each measured over >= 1 s windows and
counted once per episode.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import TripRuleConfig

ACCEL_WINDOW_S = 1.0
ACCEL_MAX_WINDOW_S = 3.0


def _ms(t: float) -> int:
    return round(t * 1000)


@dataclass(slots=True)
class _Stats:
    start: float
    distance_m: float = 0.0
    max_kmh: float = 0.0
    idle_s: float = 0.0
    harsh_accel: int = 0
    harsh_brake: int = 0
    stop_since: float | None = None


class TripTracker:
    def __init__(self, config: TripRuleConfig, gap_s: float = 10.0) -> None:
        self.cfg = config
        self.gap_s = gap_s
        self._cand: _Stats | None = None  # movement seen, not yet a trip
        self._trip: _Stats | None = None
        self._last: tuple[float, float] | None = None
        self._ref: tuple[float, float] | None = None
        self._acc_on = False
        self._brk_on = False
        self._ignition: bool | None = None
        self.trips = 0

    @property
    def active(self) -> bool:
        return self._trip is not None

    def health(self) -> dict[str, object]:
        return {"active": self.active, "trips": self.trips}

    def _stats(self) -> _Stats | None:
        return self._trip or self._cand

    def _start(self, t: float, v: float, s: _Stats) -> tuple[float, dict[str, object]]:
        self._trip = s
        self._cand = None
        self.trips += 1
        return t, {"phase": "start", "start_ts": _ms(s.start), "speed_kmh": round(v, 1)}

    def _end(self, t: float, reason: str, until: float) -> tuple[float, dict[str, object]]:
        s = self._trip
        assert s is not None
        self._trip = None
        self._cand = None
        dur = max(0.0, until - s.start)
        mean = s.distance_m / dur * 3.6 if dur > 0 else 0.0
        return t, {
            "phase": "end",
            "start_ts": _ms(s.start),
            "distance_m": round(s.distance_m, 1),
            "duration_s": round(dur, 1),
            "max_kmh": round(s.max_kmh, 1),
            "mean_kmh": round(mean, 1),
            "idle_s": round(s.idle_s, 1),
            "harsh_accel": s.harsh_accel,
            "harsh_brake": s.harsh_brake,
            "reason": reason,
        }

    def on_speed(self, t: float, v: float) -> list[tuple[float, dict[str, object]]]:
        last = self._last
        trip = self._trip
        cfg = self.cfg
        if (trip is not None and last is not None and trip.stop_since is None
                and self._ignition is None and v >= cfg.start_kmh and t - last[0] < cfg.end_s):
            # the common case, a trip driving on (the path below, without what cannot
            # happen here: no end due, no start, no stop)
            self._last = (t, v)
            dt = t - last[0]
            if 0 < dt <= self.gap_s:
                trip.distance_m += (v + last[1]) / 2.0 / 3.6 * dt
            if v > trip.max_kmh:
                trip.max_kmh = v
            self._harsh(t, v, trip)
            return []
        # a trip whose end deadline passed ends at that deadline, before this sample
        # (``tick``, asked only when it can have something to say)
        if trip is not None and self._ignition is None and (
                trip.stop_since is not None or last is None or t - last[0] >= self.cfg.end_s):
            out = self.tick(t)
        else:
            out = []
        self._last = (t, v)
        s = self._trip or self._cand
        if last is not None and s is not None:
            dt = t - last[0]
            if 0 < dt <= self.gap_s:
                s.distance_m += (v + last[1]) / 2.0 / 3.6 * dt
        if s is not None and v > s.max_kmh:
            s.max_kmh = v
        if self._ignition is not None:
            if self._trip is None and self._ignition:
                out.append(self._start(t, v, _Stats(start=t, max_kmh=v)))
            self._harsh(t, v, self._stats())
            return out
        moving = v >= self.cfg.start_kmh
        if self._trip is None:
            if moving:
                if self._cand is None:
                    self._cand = _Stats(start=t, max_kmh=v)
                if t - self._cand.start >= self.cfg.start_s:
                    out.append(self._start(t, v, self._cand))
            # the launch that starts a trip counts: the window ending at the first
            # moving sample belongs to the candidate created for it
            self._harsh(t, v, self._stats())
            if not moving:
                self._cand = None
            return out
        self._harsh(t, v, s)
        trip = self._trip
        if moving:
            if trip.stop_since is not None:
                trip.idle_s += t - trip.stop_since
                trip.stop_since = None
        else:
            if trip.stop_since is None:
                trip.stop_since = t
            if t - trip.stop_since >= self.cfg.end_s:  # only with end_s = 0
                out.append(self._end(t, "stopped", trip.stop_since))
        return out

    def _harsh(self, t: float, v: float, s: _Stats | None) -> None:
        ref = self._ref
        if ref is None or t - ref[0] > ACCEL_MAX_WINDOW_S or t < ref[0]:
            self._ref = (t, v)
            self._acc_on = self._brk_on = False
            return
        dt = t - ref[0]
        if dt < ACCEL_WINDOW_S:
            return
        a = (v - ref[1]) / dt
        self._ref = (t, v)
        acc = a >= self.cfg.harsh_accel_kmhs
        brk = a <= self.cfg.harsh_brake_kmhs
        if s is not None:
            if acc and not self._acc_on:
                s.harsh_accel += 1
            if brk and not self._brk_on:
                s.harsh_brake += 1
        self._acc_on, self._brk_on = acc, brk

    def on_ignition(self, t: float, on: bool) -> list[tuple[float, dict[str, object]]]:
        self._ignition = on
        if on and self._trip is None:
            v = self._last[1] if self._last else 0.0
            return [self._start(t, v, _Stats(start=t, max_kmh=v))]
        if not on and self._trip is not None:
            return [self._end(t, "ignition", t)]
        return []

    def tick(self, t: float) -> list[tuple[float, dict[str, object]]]:
        """Ends a trip whose data stopped (no sample for ``end_s``) or that stood still."""
        trip = self._trip
        if trip is None or self._ignition is not None:
            return []
        if trip.stop_since is not None and t - trip.stop_since >= self.cfg.end_s:
            return [self._end(trip.stop_since + self.cfg.end_s, "stopped", trip.stop_since)]
        if self._last is not None and t - self._last[0] < self.cfg.end_s:
            return []  # data still coming (``_no_data`` would say the same)
        return self._no_data(t)

    def _no_data(self, t: float) -> list[tuple[float, dict[str, object]]]:
        if self._trip is None or self._ignition is not None or self._last is None:
            return []
        if t - self._last[0] < self.cfg.end_s:
            return []
        until = self._last[0]
        if self._trip.stop_since is not None:  # it had stopped before the data did
            return [self._end(self._trip.stop_since + self.cfg.end_s, "stopped",
                              self._trip.stop_since)]
        return [self._end(until + self.cfg.end_s, "no_data", until)]

    def close(self, t: float) -> list[tuple[float, dict[str, object]]]:
        self._cand = None
        if self._trip is None:
            return []
        until = self._trip.stop_since if self._trip.stop_since is not None else t
        return [self._end(t, "closed", until)]
