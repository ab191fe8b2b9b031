"""Shared helpers for the rules tests: zones and fixes placed in metres.

Everything is laid out in a local frame around ``ORIGIN`` (Munich), so a test reads
"a square fence 200 m wide, the car 5 m outside its east edge".
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edge.config import (
    GeofenceRuleConfig,
    PoiRuleConfig,
    RulesConfig,
    SpeedRuleConfig,
    TripRuleConfig,
)
from edge.core.geo import LocalFrame
from edge.core.rules import Rules
from edge.core.zones import Zones, parse_zones
from edge.model import Event, Fix, SpeedSample

ORIGIN = LocalFrame.at(48.1370, 11.5750)
T0 = 1_750_000_000.0  # 2025-06-15


def ll(x: float, y: float, frame: LocalFrame = ORIGIN) -> list[float]:
    """[lon, lat] of a point x m east, y m north of the frame's origin."""
    lat, lon = frame.latlon(x, y)
    return [(lon + 180.0) % 360.0 - 180.0, lat]


def square(zid: str, cx: float, cy: float, half: float, **props: Any) -> dict[str, Any]:
    ring = [ll(cx - half, cy - half), ll(cx + half, cy - half), ll(cx + half, cy + half),
            ll(cx - half, cy + half)]
    ring.append(ring[0])
    return {"type": "Feature", "properties": {"id": zid, "name": zid.title(), **props},
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def circle(zid: str, cx: float, cy: float, r: float, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "properties": {"id": zid, "name": zid.title(), "radius_m": r,
                                              **props},
            "geometry": {"type": "Point", "coordinates": ll(cx, cy)}}


def zones(*features: dict[str, Any]) -> Zones:
    return parse_zones({"type": "FeatureCollection", "features": list(features)}, source="test")


def fix(t: float, x: float, y: float, *, hdop: float | None = 1.0, valid: bool = True,
        speed_mps: float | None = None, frame: LocalFrame = ORIGIN) -> Fix:
    lon, lat = ll(x, y, frame)
    return Fix(time=T0 + t, lat=lat, lon=lon, hdop=hdop, valid=valid, mode=3 if valid else 0,
               speed_mps=speed_mps)


def speed(t: float, kmh: float, source: str = "can") -> SpeedSample:
    return SpeedSample(time=T0 + t, speed_kmh=kmh, source=source)


def config(**sections: dict[str, Any]) -> RulesConfig:
    """RulesConfig with overrides per section: config(geofence={"debounce_s": 0})."""
    defaults: dict[str, Any] = {
        "geofence": GeofenceRuleConfig(hysteresis_m=10.0, debounce_s=2.0, gap_s=30.0),
        "speed": SpeedRuleConfig(limit_kmh=50.0, min_duration_s=3.0, end_after_s=3.0),
        "poi": PoiRuleConfig(),
        "trip": TripRuleConfig(),
    }
    for name, over in sections.items():
        defaults[name] = dataclasses.replace(defaults[name], **over)
    return RulesConfig(**defaults)


def feed(rules: Rules, items: list[Fix | SpeedSample]) -> list[Event]:
    out: list[Event] = []
    for it in items:
        out.extend(rules.on_fix(it) if isinstance(it, Fix) else rules.on_speed(it))
    return out


def transitions(events: list[Event]) -> list[tuple[str, str]]:
    """(fence, transition) of the geofence events, in order."""
    return [(e.body["fence"], e.body["transition"]) for e in events if e.kind == "geofence"]


def line(t0: float, x0: float, y0: float, x1: float, y1: float, n: int, dt: float = 1.0,
         **kw: Any) -> list[Fix]:
    """n fixes from (x0, y0) to (x1, y1), dt apart, starting at t0."""
    return [fix(t0 + i * dt, x0 + (x1 - x0) * i / max(1, n - 1),
                y0 + (y1 - y0) * i / max(1, n - 1), **kw) for i in range(n)]
