"""Value types that flow through the daemon. Stdlib only.

Clocks: ``time`` fields are UTC seconds since the epoch (GNSS time when a valid fix
exists); ``mono`` fields are a monotonic clock used only for durations. In a replay the
recorded timestamps play both roles, which keeps every decision deterministic.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Fix:
    """One merged GNSS epoch (RMC + GGA + GSA + VTG ... of the same timestamp)."""

    time: float | None  # UTC epoch seconds; None until a date is known
    lat: float | None
    lon: float | None
    speed_mps: float | None = None
    course_deg: float | None = None
    alt_m: float | None = None
    mode: int = 0  # 0 none, 2 = 2D, 3 = 3D
    hdop: float | None = None
    sats: int | None = None
    quality: int | None = None  # GGA fix quality
    valid: bool = False
    reason: str | None = None  # why the fix is not valid for decisions
    mono: float = 0.0  # monotonic receive time (live) or log time (replay)

    def to_json(self) -> dict[str, Any]:
        from datetime import UTC, datetime

        iso = None
        if self.time is not None:
            iso = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
            iso = iso.replace("+00:00", "Z")
        return {
            "time": iso,
            "lat": self.lat,
            "lon": self.lon,
            "speed_mps": self.speed_mps,
            "course_deg": self.course_deg,
            "alt_m": self.alt_m,
            "mode": self.mode,
            "hdop": self.hdop,
            "sats": self.sats,
            "valid": self.valid,
            **({} if self.valid else {"invalid_reason": self.reason}),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeedSample:
    """Vehicle speed from one source at one instant."""

    time: float  # UTC epoch seconds (bus/log timestamp)
    speed_kmh: float
    source: str  # "can", "obd" or "gnss"
    mono: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalSample:
    """One more vehicle signal for telemetry (OBD-II engine speed, coolant temperature),
    under its COVESA VSS name. It reaches telemetry through the engine, so a replay of
    the same bus log reproduces it."""

    time: float  # UTC epoch seconds (bus/log timestamp)
    name: str  # VSS name, e.g. "Vehicle.Powertrain.CombustionEngine.Speed"
    value: float
    mono: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Ignition:
    """Ignition state from the bus (when ``[can] ignition_signal`` is configured)."""

    time: float  # UTC epoch seconds (bus/log timestamp)
    on: bool
    mono: float = 0.0


class Lane(enum.IntEnum):
    """Outbox priority lanes: lower drains first and is evicted last."""

    ALERT = 0
    TRIP = 1
    TELEMETRY = 2
    HEALTH = 3


EVENT_LANES: Mapping[str, Lane] = {
    "overspeed": Lane.ALERT,
    "geofence": Lane.ALERT,
    "poi": Lane.ALERT,
    "diagnostic": Lane.ALERT,
    "trip": Lane.TRIP,
    "telemetry": Lane.TELEMETRY,
    "health": Lane.HEALTH,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Something the core decided: an alert, a trip edge, a telemetry sample."""

    kind: str  # overspeed | geofence | poi | trip | telemetry | health
    time: float  # UTC epoch seconds
    body: Mapping[str, Any] = field(default_factory=dict)
    lat: float | None = None
    lon: float | None = None
    clock: str = "gnss"  # "gnss" when time came from a valid fix, else "system"


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A message ready for the outbox: what is published, byte for byte."""

    id: str
    thing: str
    type: str
    ts: int  # ms since epoch UTC
    seq: int
    topic: str
    lane: Lane
    body: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "thing": self.thing,
            "type": self.type,
            "ts": self.ts,
            "seq": self.seq,
            **self.body,
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.payload(), separators=(",", ":"), allow_nan=False).encode()
