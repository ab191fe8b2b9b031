"""Point-of-interest offers: once per trip per POI, with a cooldown and a rate cap.

A POI is offered when a valid fix is within its ``radius_m``; then it is not offered
again in the same trip, nor within ``cooldown_s`` of its last offer (across trips),
and never more than ``max_per_hour`` offers in any sliding hour (all POIs together).
An offer suppressed by the cap is not remembered, so it may still go out later in the
trip if the car is still near once the hour frees up.
"""

from __future__ import annotations

from collections import deque

from edge.config import PoiRuleConfig
from edge.core.zones import Zone

HOUR_S = 3600.0


class PoiTracker:
    def __init__(self, config: PoiRuleConfig) -> None:
        self.cfg = config
        self._this_trip: set[str] = set()
        self._last: dict[str, float] = {}
        self._recent: deque[float] = deque()
        self.offers = 0
        self.rate_capped = 0
        self.cooldown_skipped = 0

    def health(self) -> dict[str, object]:
        return {"offers": self.offers, "rate_capped": self.rate_capped,
                "cooldown_skipped": self.cooldown_skipped}

    def new_trip(self) -> None:
        self._this_trip.clear()

    def on_fix(self, t: float, near: list[tuple[Zone, float]]) -> list[dict[str, object]]:
        """``near``: (POI, distance in metres) the fix is within the radius of."""
        out: list[dict[str, object]] = []
        while self._recent and t - self._recent[0] >= HOUR_S:
            self._recent.popleft()
        for z, dist in near:
            if z.id in self._this_trip:
                continue
            last = self._last.get(z.id)
            if last is not None and t - last < self.cfg.cooldown_s:
                self._this_trip.add(z.id)  # not this trip: it was offered too recently
                self.cooldown_skipped += 1
                continue
            if len(self._recent) >= self.cfg.max_per_hour:
                self.rate_capped += 1
                continue
            self._this_trip.add(z.id)
            self._last[z.id] = t
            self._recent.append(t)
            self.offers += 1
            out.append({"poi": z.id, "name": z.name, "offer": z.offer,
                        "distance_m": round(dist, 1)})
        return out

    def carry_over(self, ids: set[str]) -> None:
        """After a reload: forget POIs that no longer exist."""
        self._this_trip &= ids
        self._last = {k: v for k, v in self._last.items() if k in ids}
