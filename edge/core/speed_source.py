"""Which speed to believe: CAN (or OBD) or GNSS speed over ground. Pure.

CAN speed is preferred whenever it is fresh: younger than ``stale_s`` by ``mono``. When it
is stale (adapter unplugged, bus silent, no DBC frames) a valid GNSS fix's speed is used
instead, and the switch is visible in ``health()["source"]``.

Plausibility: when both are fresh, the car is moving (either says at least
``MOVING_KMH``) and they differ by more than ``disagree_kmh`` for at least
``disagree_s`` (a wrong DBC signal or scale, a slipping wheel, a GNSS multipath spell),
the sources are *implausible*: ``health()["implausible"]`` turns True, one
``diagnostic`` event starts (``take_events``), and ``policy`` decides what the rules get
until they agree again (the event's end):

* ``"fallback"`` (default): GNSS speed while they disagree, CAN again once they agree;
* ``"can"``: CAN regardless (GNSS only when CAN is stale) — the disagreement is reported;
* ``"gnss"``: GNSS whenever a valid fix is fresh, CAN only when GNSS is stale, always.
"""

from __future__ import annotations

from typing import Any, Literal

from edge.model import Fix, SpeedSample

Policy = Literal["can", "gnss", "fallback"]
MOVING_KMH = 10.0  # below this on both sources a difference is not evidence


class SpeedArbiter:
    def __init__(
        self,
        *,
        stale_s: float,
        disagree_kmh: float,
        disagree_s: float,
        gnss_stale_s: float = 3.0,
        policy: Policy = "fallback",
    ) -> None:
        self.stale_s = stale_s
        self.disagree_kmh = disagree_kmh
        self.disagree_s = disagree_s
        self.gnss_stale_s = gnss_stale_s
        self.policy = policy
        self._can: SpeedSample | None = None
        self._gnss: SpeedSample | None = None
        self._disagree_since: float | None = None
        self._implausible = False
        self._last_diff: float | None = None
        self._source: str | None = None
        self._episode: dict[str, Any] | None = None  # the open diagnostic
        self._events: list[tuple[float, dict[str, Any]]] = []
        self._counts = {"can": 0, "gnss": 0, "fallbacks": 0, "invalid_fixes": 0,
                        "diagnostics": 0}

    def _can_fresh(self, mono: float) -> bool:
        return self._can is not None and mono - self._can.mono <= self.stale_s

    def _gnss_fresh(self, mono: float) -> bool:
        return self._gnss is not None and mono - self._gnss.mono <= self.gnss_stale_s

    def _use(self, source: str | None) -> None:
        if source == "gnss" and self._source not in (None, "gnss"):
            self._counts["fallbacks"] += 1
        self._source = source

    def _gnss_first(self, mono: float) -> bool:
        """Whether a fresh GNSS speed beats a fresh CAN one now."""
        if not self._gnss_fresh(mono):
            return False
        return self.policy == "gnss" or (self.policy == "fallback" and self._implausible)

    def _compare(self, mono: float) -> None:
        can, gnss = self._can, self._gnss
        if can is None or gnss is None or abs(can.mono - gnss.mono) > max(
            self.stale_s, self.gnss_stale_s
        ):
            self._disagree_since = None  # cannot compare: not evidence either way
            return
        diff = abs(can.speed_kmh - gnss.speed_kmh)
        self._last_diff = diff
        moving = max(can.speed_kmh, gnss.speed_kmh) >= MOVING_KMH
        if diff > self.disagree_kmh and moving:
            if self._disagree_since is None:
                self._disagree_since = mono
            if mono - self._disagree_since >= self.disagree_s and not self._implausible:
                self._implausible = True
                self._start_episode(can, gnss, diff)
        elif diff <= self.disagree_kmh:
            self._disagree_since = None
            if self._implausible:
                self._implausible = False
                self._end_episode(can, gnss, diff)

    def _body(self, phase: str, can: SpeedSample, gnss: SpeedSample,
              diff: float) -> dict[str, Any]:
        return {"diagnostic": "speed_sources_disagree", "phase": phase,
                "can_kmh": round(can.speed_kmh, 1), "gnss_kmh": round(gnss.speed_kmh, 1),
                "diff_kmh": round(diff, 1), "can_source": can.source,
                "policy": self.policy,
                "using": "can" if self.policy == "can" or phase == "end" else "gnss"}

    def _start_episode(self, can: SpeedSample, gnss: SpeedSample, diff: float) -> None:
        self._counts["diagnostics"] += 1
        body = self._body("start", can, gnss, diff)
        body["threshold_kmh"] = self.disagree_kmh
        body["for_s"] = self.disagree_s
        self._episode = {"since": max(can.time, gnss.time), "max_diff": diff}
        self._events.append((max(can.time, gnss.time), body))

    def _end_episode(self, can: SpeedSample, gnss: SpeedSample, diff: float) -> None:
        ep = self._episode or {"since": can.time}
        t = max(can.time, gnss.time)
        body = self._body("end", can, gnss, diff)
        body["duration_s"] = round(max(0.0, t - float(ep["since"])), 1)
        self._episode = None
        self._events.append((t, body))

    def take_events(self) -> list[tuple[float, dict[str, Any]]]:
        """Diagnostic events (time, body) decided since the last call."""
        out, self._events = self._events, []
        return out

    @property
    def implausible(self) -> bool:
        return self._implausible

    @property
    def source(self) -> str | None:
        """The source of the last speed handed to the rules (None before any)."""
        return self._source

    def on_can(self, s: SpeedSample) -> SpeedSample | None:
        """A CAN/OBD sample arrived: returns it when it is the speed to use now."""
        self._can = s
        self._counts["can"] += 1
        self._compare(s.mono)
        if self._gnss_first(s.mono):
            self._use("gnss")
            return None
        self._use(s.source)
        return s

    def on_gnss(self, fix: Fix) -> SpeedSample | None:
        """A fix arrived: returns a GNSS speed sample when it is the speed to use (CAN
        stale, or the policy prefers GNSS now), else None."""
        if not fix.valid or fix.speed_mps is None or fix.time is None:
            self._counts["invalid_fixes"] += 1
            return None
        sample = SpeedSample(
            time=fix.time, speed_kmh=fix.speed_mps * 3.6, source="gnss", mono=fix.mono
        )
        self._gnss = sample
        self._counts["gnss"] += 1
        self._compare(fix.mono)
        if self._can_fresh(fix.mono) and not self._gnss_first(fix.mono):
            self._use(self._can.source if self._can is not None else "can")
            return None
        self._use("gnss")
        return sample

    def current(self, mono: float) -> SpeedSample | None:
        """The speed to believe at ``mono`` under the policy, else None."""
        if self._gnss_first(mono):
            return self._gnss
        if self._can_fresh(mono):
            return self._can
        if self._gnss_fresh(mono):
            return self._gnss
        return None

    def health(self, mono: float | None = None) -> dict[str, Any]:
        source = self._source
        if mono is not None:
            cur = self.current(mono)
            source = cur.source if cur is not None else None
        return {
            "source": source,
            "policy": self.policy,
            "implausible": self._implausible,
            "diff_kmh": None if self._last_diff is None else round(self._last_diff, 1),
            **self._counts,
        }
