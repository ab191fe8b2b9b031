"""Overspeed episodes: a start after ``min_duration_s`` above the threshold, one end.

``threshold = limit x (1 + tolerance_pct/100) + tolerance_kmh``. The limit and its
source are decided in one place, ``edge.core.limits.decide_limit`` (the default, the
policy and the zones' ``maxspeed`` claims), and handed over with ``set_limit``. An
episode starts when every sample for ``min_duration_s`` (sample time) was above the
threshold, so a short flicker starts nothing; it ends once every sample for
``end_after_s`` was at least ``recovery_kmh`` below the threshold (``reason:
"recovered"``), when no sample came for ``gap_s`` (``reason: "unknown"``), or when the
drive/daemon ends (``"closed"``). ``duration_s`` runs from the first sample above to
the first sample of the recovery (or the gap).

An episode is measured against one limit, the one its events report. When the
applicable limit changes during an episode (the car left the 30 zone), the episode ends
at that moment with ``reason: "limit_changed"`` (``"no_limit"`` when no limit applies
any more), and when the last speed is above the new threshold a new episode starts at
once against the new limit: it has been over continuously, so it is not debounced again.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import SpeedRuleConfig
from edge.core.limits import Limit, LimitClaim, decide_limit


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

    def health(self) -> dict[str, object]:
        return {"active": self.active, "limit_kmh": self.limit, "limit_source": self.source}

    def decide(self, claims: list[LimitClaim]) -> Limit:
        """The limit that applies given the claims of every source at the car's place."""
        return decide_limit(self.cfg.limit_kmh, self.cfg.limit_policy, claims)

    def set_limit(self, t: float, limit: Limit, road: str | None = None
                  ) -> list[tuple[float, dict[str, object]]]:
        """The applicable limit from ``t`` on (``road``: the name/ref of the road whose
        posted limit it is, ``edge.roads``). An open episode measured against another
        limit ends at ``t`` (``limit_changed``/``no_limit``; ``left_road`` when the car
        left the road whose posted limit it broke); a new one starts at ``t`` when the
        last speed is above the new threshold."""
        if limit.kmh == self.limit and limit.source == self.source and road == self.road:
            return []
        out = self.tick(t)  # samples that stopped long ago end the episode as unknown
        old_thr = self.threshold()
        self.limit, self.source, self.road = limit.kmh, limit.source, road
        thr = self.threshold()
        v = self._last_v
        fresh = self._last_t is not None and t - self._last_t <= self.cfg.gap_s
        ep = self._ep
        if ep is not None:
            left = ep.source.startswith("road:") and not limit.source.startswith("road:")
            if limit.kmh == ep.limit and not left:
                return out  # the same limit from another source: the episode goes on
            until = ep.below_since if ep.below_since is not None else t
            reason = "no_limit" if thr is None else "left_road" if left else "limit_changed"
            out.append(self._end(t, v, reason, until))
            if thr is not None and fresh and v > thr:
                self._above_since = t
                self._peak = v
                out.append(self._start(t, v))
            return out
        if self._above_since is not None and (thr is None or (
                old_thr is not None and thr > old_thr)):
            # a higher limit: the run above the old one does not count for it
            self._above_since = t if thr is not None and fresh and v > thr else None
            self._peak = v
        return out

    def threshold(self) -> float | None:
        if self.limit is None:
            return None
        return self.limit * (1.0 + self.cfg.tolerance_pct / 100.0) + self.cfg.tolerance_kmh

    def _start(self, t: float, v: float) -> tuple[float, dict[str, object]]:
        assert self.limit is not None and self._above_since is not None
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
        return t, body

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
                    out.append(self._start(t, v))
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
