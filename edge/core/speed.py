"""Overspeed episodes: a start after ``min_duration_s`` above the threshold, one end.

``threshold = limit x (1 + tolerance_pct/100) + tolerance_kmh``. The limit is the
lowest of the configured default and the ``maxspeed`` of every zone the car is in
(``limit_policy = "lowest"``); ``"zone"`` lets a zone's limit replace the default even
when it is higher; ``"default"`` ignores zones. An episode starts when every sample
for ``min_duration_s`` (sample time) was above the threshold, so a short flicker
starts nothing; it ends once every sample for ``end_after_s`` was at least
``recovery_kmh`` below the threshold (``reason: "recovered"``), when no sample came
for ``gap_s`` (``reason: "unknown"``), when no limit applies any more
(``"no_limit"``), or when the drive/daemon ends (``"closed"``). ``duration_s`` runs
from the first sample above to the first sample of the recovery (or the gap).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import SpeedRuleConfig


def r1(v: float) -> float:
    return round(v, 1)


@dataclass(slots=True)
class _Episode:
    start: float
    limit: float
    source: str
    peak: float
    below_since: float | None = None
    road: str | None = None


class OverspeedTracker:
    def __init__(self, config: SpeedRuleConfig) -> None:
        self.cfg = config
        self.limit: float | None = config.limit_kmh
        self.source = "default"
        self.road: str | None = None  # name (ref) of the road whose posted limit applies
        self._above_since: float | None = None
        self._peak = 0.0
        self._ep: _Episode | None = None
        self._last_t: float | None = None
        self._last_v = 0.0
        self.episodes = 0

    @property
    def active(self) -> bool:
        return self._ep is not None

    def set_zone_limits(self, limits: list[tuple[float, str]]) -> None:
        """(maxspeed km/h, zone id) of the zones the car is in now."""
        default = self.cfg.limit_kmh
        policy = self.cfg.limit_policy
        best: tuple[float, str] | None = min(limits) if limits and policy != "default" else None
        if best is not None and (policy == "zone" or default is None or best[0] < default):
            self.limit, self.source = best[0], f"zone:{best[1]}"
        else:
            self.limit, self.source = default, "default"

    def set_limit(self, t: float, limit: float | None, source: str, road: str | None
                  ) -> list[tuple[float, dict[str, object]]]:
        """The applicable limit decided by the road provider (``edge.roads.provider``).
        An open episode ends when the limit changes (``limit_changed``) or the car leaves
        the road whose limit it broke (``left_road``)."""
        out = []
        ep = self._ep
        left = ep is not None and ep.source.startswith("road:") and not source.startswith("road:")
        if ep is not None and (left or limit != ep.limit):
            out.append(self._end(t, self._last_v, "left_road" if left else "limit_changed", t))
        self.limit, self.source, self.road = limit, source, road
        return out

    def threshold(self) -> float | None:
        if self.limit is None:
            return None
        return self.limit * (1.0 + self.cfg.tolerance_pct / 100.0) + self.cfg.tolerance_kmh

    def _end(
        self, t: float, speed: float, reason: str, until: float
    ) -> tuple[float, dict[str, object]]:
        ep = self._ep
        assert ep is not None
        self._ep = None
        self._above_since = None
        body: dict[str, object] = {
            "phase": "end",
            "speed_kmh": r1(speed),
            "limit_kmh": r1(ep.limit),
            "limit_source": ep.source,
            "peak_kmh": r1(ep.peak),
            "duration_s": round(max(0.0, until - ep.start), 2),
            "reason": reason,
        }
        if ep.road is not None:
            body["road"] = ep.road
        return t, body

    def on_speed(self, t: float, v: float) -> list[tuple[float, dict[str, object]]]:
        out = self.tick(t)
        self._last_t = t
        self._last_v = v
        thr = self.threshold()
        ep = self._ep
        if ep is None:
            if thr is not None and v > thr:
                if self._above_since is None:
                    self._above_since = t
                    self._peak = v
                self._peak = max(self._peak, v)
                if t - self._above_since >= self.cfg.min_duration_s:
                    assert self.limit is not None
                    self._ep = _Episode(start=self._above_since, limit=self.limit,
                                        source=self.source, peak=self._peak, road=self.road)
                    self.episodes += 1
                    body: dict[str, object] = {
                        "phase": "start",
                        "speed_kmh": r1(v),
                        "limit_kmh": r1(self.limit),
                        "limit_source": self.source,
                        "peak_kmh": r1(self._peak),
                        "duration_s": round(t - self._above_since, 2),
                    }
                    if self.road is not None:
                        body["road"] = self.road
                    out.append((t, body))
            else:
                self._above_since = None
            return out
        ep.peak = max(ep.peak, v)
        if thr is None:
            out.append(self._end(t, v, "no_limit", t))
        elif v <= thr - self.cfg.recovery_kmh:
            if ep.below_since is None:
                ep.below_since = t
            if t - ep.below_since >= self.cfg.end_after_s:
                out.append(self._end(t, v, "recovered", ep.below_since))
        else:
            ep.below_since = None
        return out

    def tick(self, t: float) -> list[tuple[float, dict[str, object]]]:
        """A data gap (no sample for ``gap_s``) ends an open episode as unknown."""
        if self._last_t is None or t - self._last_t <= self.cfg.gap_s:
            return []
        self._above_since = None
        if self._ep is None:
            return []
        at = self._last_t + self.cfg.gap_s
        return [self._end(at, self._last_v, "unknown", self._last_t)]

    def close(self, t: float) -> list[tuple[float, dict[str, object]]]:
        out = self.tick(t)
        if self._ep is not None:
            until = self._ep.below_since if self._ep.below_since is not None else t
            out.append(self._end(t, self._last_v, "closed", until))
        self._above_since = None
        return out
