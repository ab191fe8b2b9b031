"""The posted limit of the road the car is on, for the speed rule: the one hook
between the road index / map matcher and the rules.

``RoadLimits.on_fix(fix)`` matches the fix and returns the road's limit in the
direction of travel (a ``maxspeed:conditional`` window that is open at the fix's
local time replaces it; the last open window wins). ``decide`` combines it with the
zones' and the configured default limit by ``[roads] priority``:

* ``"zone>road>default"`` (default): a speed zone the car is in wins, else the road,
  else the default;
* ``"road>zone>default"``: the road wins where it is known;
* ``"lowest"``: the lowest of the three.

A road tagged ``none`` has no limit: nothing is enforced there (``limit`` None) unless a
zone says otherwise. A road whose limit is unknown (``signals``) counts as no road.
Sources: ``road:osm:way/<id>`` (a tag of that way), ``road:default`` (the country's
fallback for the road class), ``zone:<id>``, ``default``.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edge.core.limits import DEFAULT_SOURCE, Limit, LimitClaim, decide_limit
from edge.errors import ConfigError
from edge.model import Fix
from edge.roads.index import RoadIndex, RoadIndexError
from edge.roads.matcher import Match, Matcher, MatchParams

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edge.config import Config, RoadsConfig, SpeedRuleConfig


@dataclass(frozen=True, slots=True)
class RoadLimit:
    kmh: float  # math.inf: the road has no limit
    source: str  # road:osm:way/<id> | road:default
    road: str | None  # name (ref)
    way: int


class RoadLimits:
    def __init__(self, index: RoadIndex, *, priority: str = "zone>road>default",
                 params: MatchParams | None = None) -> None:
        self.index = index
        self.priority = priority
        self.matcher = Matcher(index, params)
        self.current: RoadLimit | None = None
        self._oh: dict[str, Any] = {}
        self._bad_conditions: set[str] = set()
        self.conditional_applied = 0
        self.read_errors = 0
        self.last_error: str | None = None

    @classmethod
    def for_config(cls, cfg: Config) -> RoadLimits | None:
        """The provider ``[roads]`` asks for, None without an index; a file that is not
        an index is a ConfigError naming ``roads.index``."""
        if cfg.roads.index is None:
            return None
        try:
            return cls.open(cfg.roads)
        except RoadIndexError as exc:
            raise ConfigError("roads.index", str(exc)) from exc

    @classmethod
    def open(cls, cfg: RoadsConfig) -> RoadLimits:
        """The provider for ``[roads]``; raises RoadIndexError when the file is not one."""
        assert cfg.index is not None
        params = MatchParams(radius_m=cfg.radius_m, hdop_radius_m=cfg.hdop_radius_m,
                             max_radius_m=cfg.max_radius_m, sigma_m=cfg.sigma_m,
                             heading_sigma_deg=cfg.heading_sigma_deg,
                             switch_margin=cfg.switch_margin)
        return cls(RoadIndex(cfg.index, cache_kb=cfg.cache_kb), priority=cfg.priority,
                   params=params)

    def on_fix(self, fix: Fix) -> RoadLimit | None:
        """The road limit after this fix; None off the road. An index that fails to
        read (a file damaged under the daemon) counts in health and gives None: the
        zone or default limit applies, the daemon goes on."""
        if fix.lat is None or fix.lon is None or fix.time is None:
            return self.current
        try:
            m = self.matcher.on_fix(fix.time, fix.lat, fix.lon, hdop=fix.hdop,
                                    speed_mps=fix.speed_mps, course_deg=fix.course_deg)
        except (sqlite3.Error, KeyError, ValueError) as exc:
            self.read_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.matcher.reset()
            m = None
        self.current = None if m is None else self._limit(m, fix.time)
        return self.current

    def _limit(self, m: Match, t: float) -> RoadLimit | None:
        w = m.way
        kmh = w.fwd_kmh if m.forward else w.bwd_kmh
        default = w.fwd_default if m.forward else w.bwd_default
        cond = w.fwd_cond if m.forward else w.bwd_cond
        if cond and w.tz:
            for ckmh, when in cond:
                if self._open(when, t, w.tz):
                    kmh, default = ckmh, False
                    self.conditional_applied += 1
        if kmh is None:
            return None  # posted but unknown here (variable signs)
        source = "road:default" if default else f"road:osm:way/{w.id}"
        return RoadLimit(kmh, source, w.label, w.id)

    def _open(self, when: str, t: float, tz: str) -> bool:
        """Whether the opening-hours window ``when`` is open at ``t`` in zone ``tz``."""
        if when in self._bad_conditions:
            return False
        oh = self._oh.get(when)
        try:
            if oh is None:
                import opening_hours  # [roads] extra; only ways with conditional limits

                oh = self._oh[when] = opening_hours.OpeningHours(when)
            from zoneinfo import ZoneInfo

            local = datetime.fromtimestamp(t, ZoneInfo(tz)).replace(tzinfo=None)
            return bool(oh.is_open(local))
        except Exception:  # a window the library cannot read, or a zone unknown here
            self._bad_conditions.add(when)
            return False

    def decide(self, zone_claims: Sequence[LimitClaim], speed: SpeedRuleConfig
               ) -> tuple[Limit, str | None]:
        """The applicable limit by ``[roads] priority`` and the road's label (name/ref;
        None unless the road's own limit is the one that applies). ``zone_claims``: what
        the zones the car is in say (``Zones.limit_claims``); among themselves they are
        decided by ``[rules.speed] limit_policy`` (``edge.core.limits``)."""
        road = self.current
        road_lim = None if road is None else Limit(
            None if math.isinf(road.kmh) else road.kmh, road.source)
        if self.priority == "lowest":
            claims = list(zone_claims)
            if road_lim is not None:
                claims.append(LimitClaim(road_lim.kmh, road_lim.source))
            lim = decide_limit(speed.limit_kmh, "lowest", claims)
        else:
            zone = (decide_limit(None, speed.limit_policy, zone_claims)
                    if zone_claims and speed.limit_policy != "default" else None)
            order = [zone, road_lim] if self.priority == "zone>road>default" else [road_lim, zone]
            lim = next((x for x in order if x is not None),
                       Limit(speed.limit_kmh, DEFAULT_SOURCE))
        label = road.road if road is not None and road_lim == lim else None
        return lim, label

    def health(self) -> dict[str, Any]:
        cur = self.current
        return {
            "index": str(self.index.path),
            "segments": int(self.index.meta.get("segments", 0)),
            "matched_way": cur.way if cur else None,
            "road": cur.road if cur else None,
            **self.matcher.counts,
            "lookups": self.index.lookups,
            "conditional_applied": self.conditional_applied,
            "bad_conditions": len(self._bad_conditions),
            "read_errors": self.read_errors,
            "last_error": self.last_error,
        }


__all__ = ["RoadIndexError", "RoadLimit", "RoadLimits"]
