"""The pure core in one object: fixes and speed samples in, envelopes out.

Used unchanged by the live daemon (``edge.app``) and by ``edge replay``. Deterministic:
all time comes from the inputs.

Event time follows the design's contract: GNSS UTC when a valid fix exists; a CAN
sample's time is mapped onto GNSS time through the monotonic clock
(``last_fix.time + (sample.mono - last_fix.mono)``) so that a Pi whose system clock is
years off at boot still stamps its overspeed alerts correctly; with no valid fix yet the
sample's own (system) time is used and the event is flagged ``clock: system``.

After a restart the daemon hands ``resume(doc)`` the rules' last saved state
(``edge.core.rulestate``); the rules then wait for the first valid fix, whose GNSS time
measures the gap (speed samples before it feed telemetry only), and the trip, the POIs
offered in it and an open overspeed episode go on, or end with ``power_loss``.

When the first valid fix shows that the system clock was more than ``CLOCK_STEP_S``
off, the time base steps: episodes opened on the system clock are closed (their end
carries ``reason: "clock_step"``), rule state starts over on GNSS time, and the step is
counted in health. Without that, every later sample would look older than the
system-stamped ones and be dropped as reordered.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from edge.config import Config
from edge.core import rulestate
from edge.core.envelope import EnvelopeFactory
from edge.core.rules import Rules
from edge.core.speed_source import SpeedArbiter
from edge.core.telemetry import TelemetrySampler
from edge.core.zones import Zones
from edge.model import Envelope, Event, Fix, Ignition, SignalSample, SpeedSample

if TYPE_CHECKING:
    from edge.roads.provider import RoadLimits

CLOCK_STEP_S = 5.0


class Engine:
    def __init__(
        self, config: Config, *, zones: Zones | None = None, seed: int | None = None,
        roads: RoadLimits | None = None,
    ) -> None:
        self.config = config
        self.envelopes = EnvelopeFactory(config.thing, seed=seed)
        self.rules = Rules(config.rules, zones, roads)
        self.arbiter = make_arbiter(config)
        self.telemetry = TelemetrySampler(interval_s=config.telemetry.interval_s)
        self._anchor: Fix | None = None  # last valid fix with a time: the clock anchor
        self.counts: dict[str, int] = {"fixes": 0, "speed_samples": 0, "events": 0,
                                       "clock_steps": 0}
        self._last_time: float | None = None  # latest time handed to the rules
        self.clock_step_s: float | None = None
        self._resume: dict[str, Any] | None = None  # saved rule state, not yet restored
        self.resume_summary: dict[str, Any] | None = None

    # ------------------------------------------------------------------ inputs

    def on_fix(self, fix: Fix) -> list[Envelope]:
        self.counts["fixes"] += 1
        events: list[Event] = []
        if self._resume is not None and fix.valid and fix.time is not None:
            events += self._restore(fix.time)
        if fix.valid and fix.time is not None:
            if self._anchor is None and self._last_time is not None and abs(
                    fix.time - self._last_time) > CLOCK_STEP_S:
                events += self._clock_step(fix.time)
            self._anchor = fix
        if fix.time is not None:
            self._last_time = fix.time if self._last_time is None else max(
                self._last_time, fix.time)
        gnss_speed = self.arbiter.on_gnss(fix)
        events += self._diagnostics("gnss")
        if gnss_speed is not None:
            self.telemetry.on_speed(gnss_speed)
            if self._resume is None:
                events += _sourced(self.rules.on_speed(gnss_speed), "gnss")
        events += self.rules.on_fix(fix)
        tel = self.telemetry.on_fix(fix)
        if tel is not None:
            if self.rules.roads is not None:  # the posted limit and where it comes from
                sp = self.rules.speed
                tel = dataclasses.replace(tel, body={
                    **tel.body, "speed_limit_kmh": sp.limit, "speed_limit_source": sp.source,
                    "road": sp.road})
            events.append(tel)
        return self._wrap(events)

    def on_speed(self, sample: SpeedSample) -> list[Envelope]:
        """A raw speed sample from the CAN bus (DBC or OBD-II)."""
        self.counts["speed_samples"] += 1
        t, clock = self.now(sample.mono, sample.time)
        if clock == "gnss":
            sample = dataclasses.replace(sample, time=t)
        chosen = self.arbiter.on_can(sample)
        diag = _stamped(self._diagnostics(clock), clock)
        if chosen is None:
            return self._wrap(diag)
        if self._resume is not None:
            self.telemetry.on_speed(chosen)
            return []  # the rules wait for GNSS time to measure the restart's gap
        self._last_time = chosen.time if self._last_time is None else max(
            self._last_time, chosen.time)
        self.telemetry.on_speed(chosen)
        # the sample's time was mapped onto GNSS time when a valid fix anchors it
        events = diag + _stamped(_sourced(self.rules.on_speed(chosen), chosen.source), clock)
        if clock == "system":
            # no GNSS at all: telemetry is paced by the bus, stamped by the system clock
            tel = self.telemetry.sample(chosen.time, clock="system")
            if tel is not None:
                events.append(tel)
        return self._wrap(events)

    def on_signal(self, sample: SignalSample) -> list[Envelope]:
        """Another bus signal for telemetry (OBD-II rpm, coolant); no rule reads it."""
        t, clock = self.now(sample.mono, sample.time)
        self.telemetry.on_signal(dataclasses.replace(sample, time=t) if clock == "gnss"
                                 else sample)
        return []

    def on_ignition(self, ign: Ignition) -> list[Envelope]:
        """Ignition from the bus: trips follow it instead of movement."""
        if self._resume is not None:
            return []
        t, clock = self.now(ign.mono, ign.time)
        return self._wrap(_stamped(self.rules.on_ignition(t, ign.on), clock))

    def _clock_step(self, gnss_time: float) -> list[Event]:
        assert self._last_time is not None
        self.clock_step_s = round(gnss_time - self._last_time, 3)
        self.counts["clock_steps"] += 1
        closing = [dataclasses.replace(e, clock="system",
                                       body={**e.body, "reason": "clock_step"})
                   for e in self.rules.close(self._last_time)]
        drive = self.rules.drive_geometry
        self.rules = Rules(self.config.rules, self.rules.zones, self.rules.roads)
        self.rules.use_drive_geometry(drive)
        self.telemetry = TelemetrySampler(interval_s=self.telemetry.interval_s)
        self._last_time = None
        return closing

    @property
    def latest_time(self) -> float | None:
        """The latest time handed to the rules (None before any input)."""
        return self._last_time

    def tick(self, time: float) -> list[Envelope]:
        """``time`` from ``now()``: on GNSS time once a valid fix anchors the clock."""
        if self._resume is not None:
            return []
        return self._wrap(_stamped(_sourced(self.rules.tick(time), self.arbiter.source),
                                   self._clock_name()))

    # ------------------------------------------------------------------ restarts

    def snapshot(self) -> dict[str, Any]:
        """The rules' state to keep across a restart (JSON values)."""
        if self._resume is not None:
            return self._resume  # not restored yet: what was saved still holds
        return rulestate.snapshot(self.rules)

    def resume(self, doc: dict[str, Any]) -> None:
        """Restore ``doc`` (a ``snapshot`` saved before a restart) at the first valid fix."""
        if isinstance(doc, dict) and doc.get("v") == rulestate.VERSION:
            self._resume = doc

    @property
    def resume_pending(self) -> bool:
        return self._resume is not None

    def resume_now(self, time: float | None) -> list[Envelope]:
        """Restore now; ``time`` None: no GNSS time came (the old trip ends)."""
        if self._resume is None:
            return []
        return self._wrap(self._restore(time))

    def _restore(self, time: float | None) -> list[Event]:
        doc, self._resume = self._resume, None
        assert doc is not None
        self.rules = Rules(self.config.rules, self.rules.zones, self.rules.roads)
        events, self.resume_summary = rulestate.restore(
            self.rules, doc, now=time, resume_gap_s=self.config.rules.trip.resume_gap_s)
        return events

    def close(self, time: float | None = None) -> list[Envelope]:
        if time is None:
            time = self._anchor.time if self._anchor and self._anchor.time else 0.0
        return self._wrap(_stamped(_sourced(self.rules.close(time),
                                            self.arbiter.source),
                                   self._clock_name()))

    def _diagnostics(self, clock: str) -> list[Event]:
        """The speed arbiter's plausibility verdicts as ``diagnostic`` events (alerts)."""
        out = []
        for t, body in self.arbiter.take_events():
            lat = lon = None
            a = self._anchor
            if a is not None:
                lat, lon = a.lat, a.lon
            out.append(Event(kind="diagnostic", time=t, body=body, lat=lat, lon=lon,
                             clock=clock))
        return out

    def use_drive_geometry(self, fixes: list[Fix]) -> None:
        """Answer the geometry of these fixes (a whole drive about to be fed) in bulk."""
        if not self.rules.zones.zones:
            return
        from edge.core.drivegeo import DriveGeometry
        from edge.core.geofence import hysteresis_for

        gcfg = self.config.rules.geofence
        self.rules.use_drive_geometry(DriveGeometry(
            self.rules.zones, fixes, lambda hdop: hysteresis_for(gcfg, hdop)))

    def _clock_name(self) -> str:
        a = self._anchor
        return "gnss" if a is not None and a.time is not None else "system"

    def reload(self, zones: Zones) -> list[Envelope]:
        return self._wrap(self.rules.reload(zones))

    def reject_zones(self, reason: str) -> None:
        """A zones file that could not be used (kept out, old zones stay): health says why."""
        self.rules.zones_rejected(reason)

    def use_roads(self, roads: RoadLimits | None) -> RoadLimits | None:
        """Ask ``roads`` for posted limits from now on; returns the provider it replaces
        (the caller closes it)."""
        old, self.rules.roads = self.rules.roads, roads
        return old

    def reconfigure(self, config: Config, *, zones: Zones | None = None) -> list[Envelope]:
        """Run under ``config`` from now on (a validated hot reload); ``zones``: the
        zones ``config`` names, loaded by the caller (None: keep the current ones).

        Rules whose settings changed are rebuilt under the new ones with their state
        carried over (``rulestate.carry_over``); new zones alone
        swap in with the rules' state carried over (events of the swap returned); the
        speed arbiter is rebuilt when its ``[can]`` thresholds or source policy
        changed. The engine keeps ``config``, so what it rebuilds later (a clock step,
        a restore after a restart) is built from it, never from the old one."""
        old, self.config = self.config, config
        if config.telemetry.interval_s != old.telemetry.interval_s:
            self.telemetry.interval_s = config.telemetry.interval_s
        if (config.can, config.rules.speed.source_policy) != (
                old.can, old.rules.speed.source_policy):
            self.arbiter = make_arbiter(config)
        if dataclasses.replace(old.rules, zones=None) != dataclasses.replace(
                config.rules, zones=None):
            old_rules = self.rules
            self.rules = Rules(config.rules, zones if zones is not None else old_rules.zones,
                               old_rules.roads)
            if self._resume is not None:
                return []  # a restart's state still waits for its fix: restored into these
            return self._wrap(rulestate.carry_over(
                old_rules, self.rules, resume_gap_s=config.rules.trip.resume_gap_s))
        if zones is not None:
            return self.reload(zones)
        return []

    def now(self, mono: float, system_time: float) -> tuple[float, str]:
        """Event time for an instant given by its monotonic and system clocks: GNSS time
        through the last valid fix when there is one, else the system clock."""
        a = self._anchor
        if a is not None and a.time is not None:
            return a.time + (mono - a.mono), "gnss"
        return system_time, "system"

    def health(self) -> dict[str, Any]:
        return {
            "engine": {**self.counts, "clock_step_s": self.clock_step_s},
            "speed": self.arbiter.health(),
            "rules": self.rules.health(),
            "resume": {"pending": self._resume is not None, **(self.resume_summary or {})},
        }

    # ------------------------------------------------------------------ helpers

    def _wrap(self, events: list[Event]) -> list[Envelope]:
        self.counts["events"] += len(events)
        return [self.envelopes.make(e) for e in events]


def make_arbiter(config: Config) -> SpeedArbiter:
    """The speed arbiter ``config`` describes (``[can]`` thresholds, ``[rules.speed]``
    source policy)."""
    return SpeedArbiter(
        stale_s=config.can.stale_s,
        disagree_kmh=config.can.disagree_kmh,
        disagree_s=config.can.disagree_s,
        policy=config.rules.speed.source_policy,
    )


def _sourced(events: list[Event], source: str | None) -> list[Event]:
    """Overspeed events say which speed source decided them (``speed_source``)."""
    if source is None:
        return events
    return [dataclasses.replace(e, body={**e.body, "speed_source": source})
            if e.kind == "overspeed" else e for e in events]


def _stamped(events: list[Event], clock: str) -> list[Event]:
    """The rules stamp bus-driven events by the sample's source; the engine knows
    whether that time was mapped onto GNSS time."""
    return [e if e.clock == clock else dataclasses.replace(e, clock=clock) for e in events]
