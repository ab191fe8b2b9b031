"""Geofence state per fence: enter / exit / dwell / crossed / inside, without flapping.

Rules (all on fix time, only valid fixes move state):

* **Hysteresis.** A fence is entered when a fix is inside it, and left only when a fix
  is farther than ``hysteresis_m`` outside it (the fence grown by the hysteresis).
  With ``hysteresis_m`` unset it follows the fix's HDOP: ``2 x 5 m x HDOP`` (a 2-sigma
  radius for a 5 m UERE), clamped to 5-50 m; 15 m when the HDOP is unknown.
* **Debounce.** A change is committed only once it held for ``debounce_s`` of fix time
  (the fix that confirms it stamps the event). A single jittery fix never flips state.
* **Start-up and new fences.** The first state the daemon learns is reported as
  ``inside`` (never ``enter``): a car parked inside a fence at boot, or inside a fence
  that a reload adds, gets ``inside``; outside is silent. At boot a fence whose edge
  is within the hysteresis stays unknown until the car is clearly in (``inside``) or
  clearly out (silent), so a jittery first fix cannot turn into a false ``enter``.
* **Gaps.** No valid fix for ``gap_s``: every fence's state becomes unknown, pending
  changes are dropped, and the next committed transition of each fence carries
  ``after_gap: true`` (so an exit missed during an outage still arrives, flagged).
* **Dwell.** Once per stay, ``dwell_s`` (the fence's property) after enter/inside.
* **Crossed.** Two consecutive valid fixes (no gap between them) whose straight
  segment passes through a fence that neither fix is inside, when the car moved more
  than twice the hysteresis (jitter cannot fake a crossing) at a plausible speed; or
  a single fix inside that the next fix already left (sparse fixes through a fence),
  again only when the car moved more than twice the hysteresis in between.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable
from dataclasses import dataclass

from edge.config import GeofenceRuleConfig
from edge.core.geo import haversine_m
from edge.core.zones import Zone, Zones

UERE_M = 5.0
HYST_MIN_M = 5.0
HYST_MAX_M = 50.0
HYST_UNKNOWN_M = 15.0
MAX_CROSS_MPS = 90.0  # a faster implied speed between two fixes is a jump, not a crossing


def hysteresis_for(cfg: GeofenceRuleConfig, hdop: float | None) -> float:
    if cfg.hysteresis_m is not None:
        return cfg.hysteresis_m
    if hdop is None or hdop <= 0:
        return HYST_UNKNOWN_M
    return min(HYST_MAX_M, max(HYST_MIN_M, 2.0 * UERE_M * hdop))


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


_EVERYTHING = _Everything()


@dataclass(slots=True)
class _Fence:
    state: bool | None  # True inside, False outside, None never known
    pending: bool | None = None
    pending_since: float = 0.0
    pending_pos: tuple[float, float] | None = None
    since: float = 0.0  # when the current stay inside began (for dwell)
    dwelled: bool = False
    stale: bool = False  # state unknown after a gap: next transition says after_gap


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    zone: Zone
    transition: str  # enter | exit | dwell | crossed | inside
    after_gap: bool = False

    def body(self) -> dict[str, object]:
        b: dict[str, object] = {
            "fence": self.zone.id,
            "name": self.zone.name,
            "transition": self.transition,
        }
        if self.after_gap:
            b["after_gap"] = True
        return b


class GeofenceTracker:
    """Per-fence state machines. Fences outside and settled are not stored."""

    def __init__(self, config: GeofenceRuleConfig, zones: Zones) -> None:
        self.cfg = config
        self.zones = zones
        self._st: dict[int, _Fence] = {}
        self._known = False  # a first state has been learned
        self._gap = False  # in a gap: fences not stored are stale too
        self._watch: set[int] = set()
        self.transitions = 0
        # the answer (inside, near) of the last pass, and until when the same answer
        # again changes nothing (no debounce or dwell timer due; -inf: not settled)
        self.last_inside: list[int] = []
        self.last_near: list[int] = []
        self.quiet_until = -math.inf

    @property
    def in_gap(self) -> bool:
        return self._gap

    def inside_ids(self) -> list[str]:
        return sorted(self.zones.zones[i].id for i, s in self._st.items() if s.state)

    @property
    def watched(self) -> Container[int]:
        """Fences whose state hangs on the hysteresis line (inside, or never known):
        before the first fix, all of them."""
        return self._watch if self._known else _EVERYTHING

    def is_inside(self, index: int) -> bool:
        s = self._st.get(index)
        return bool(s and s.state)

    def is_busy(self, index: int) -> bool:
        """Inside, or a change pending: a crossing is not reported for it."""
        s = self._st.get(index)
        return bool(s and (s.state or s.pending))

    def mark_gap(self) -> None:
        if not self._known or self._gap:
            return
        self._gap = True
        self.quiet_until = -math.inf
        for s in self._st.values():
            s.stale = True
            s.pending = None

    def update(
        self,
        t: float,
        inside: list[int],
        near: list[int],
        lat: float | None = None,
        lon: float | None = None,
        prev: tuple[float, float, float] | None = None,
        pass_m: float = math.inf,
    ) -> list[Transition]:
        """Advance every fence with one valid fix at ``t`` (``lat``, ``lon``; ``prev``
        = the previous valid fix's time, lat, lon).

        A fence entered by a single fix that the next fix already left (too short to
        pass the debounce) is reported ``crossed`` when the fixes before and after it
        are more than ``pass_m`` apart (it drove through; a spike comes back)."""
        if t < self.quiet_until and inside == self.last_inside and near == self.last_near:
            # the same answer as last time and no debounce or dwell timer due: the
            # pass below would change nothing
            return []
        if not self._st and not inside and self._known:
            self._gap = False  # in no fence and none stored: nothing to track, no timer
            self.last_inside, self.last_near, self.quiet_until = inside, near, math.inf
            return []
        zones = self.zones.zones
        fences = self.zones.fence_index
        inside_f = fences.intersection(inside)
        near_f = fences.intersection(near)
        first = not self._known
        gap = self._gap
        out: list[Transition] = []
        debounce = self.cfg.debounce_s
        sts = self._st
        todo = inside_f.union(sts)
        if first:
            todo |= near_f
        for i in sorted(todo) if len(todo) > 1 else todo:
            st = sts.get(i)
            if st is None:
                st = _Fence(state=None if first else False, stale=gap)
                sts[i] = st
            target = (i in near_f) if st.state else (i in inside_f)
            if st.state is None and not target:
                # never known: clearly outside settles it; within the hysteresis band
                # it stays unknown (a car parked at the edge at boot gets no "enter")
                st.pending = None
                if i not in near_f:
                    st.state = False
            elif st.state is not None and target == st.state:
                if st.pending and st.pending_pos is not None and lat is not None and (
                    lon is not None and haversine_m(*st.pending_pos, lat, lon) > pass_m
                ):
                    out.append(Transition(zone=zones[i], transition="crossed"))
                st.pending = None
                st.stale = False  # known again, unchanged across the gap
            else:
                if st.pending is not target:
                    st.pending = target
                    st.pending_since = t
                    st.pending_pos = (prev[1], prev[2]) if prev is not None else None
                if t - st.pending_since >= debounce:
                    kind = ("inside" if st.state is None else "enter") if target else "exit"
                    gap_flag = st.stale and st.state is not None
                    out.append(Transition(zone=zones[i], transition=kind, after_gap=gap_flag))
                    st.state = target
                    st.pending = None
                    st.stale = False
                    if target:
                        st.since = t
                        st.dwelled = False
            dwell = zones[i].dwell_s
            if st.state and not st.dwelled and dwell is not None and t - st.since >= dwell:
                st.dwelled = True
                out.append(Transition(zone=zones[i], transition="dwell"))
            if st.state is False and st.pending is None and not st.stale:
                del sts[i]
        self._known = True
        self._gap = False
        self.transitions += len(out)
        self._settle()
        self.last_inside = inside
        self.last_near = near
        return out

    def _settle(self) -> None:
        """After a pass: the watched fences, and until when the same answer again
        changes nothing (``quiet_until``): the earliest debounce or dwell deadline, a little
        early so that rounding cannot skip one (the full pass decides those); -inf
        while a fence is stale (a second pass settles it)."""
        due = math.inf
        watch = set()
        zones = self.zones.zones
        debounce = self.cfg.debounce_s
        for i, s in self._st.items():
            if s.state is not False:
                watch.add(i)
            if s.stale:
                due = -math.inf
            elif s.pending is not None and s.pending_since + debounce < due:
                due = s.pending_since + debounce
            if s.state and not s.dwelled:
                dwell = zones[i].dwell_s
                if dwell is not None and s.since + dwell < due:
                    due = s.since + dwell
        if math.isfinite(due):
            due -= 1e-12 * abs(due) + 1e-9  # rounding of ``t - since >= d`` stays covered
        self._watch = watch
        self.quiet_until = due

    def crossed(self, indices: Iterable[int]) -> list[Transition]:
        out = [Transition(zone=self.zones.zones[i], transition="crossed") for i in sorted(indices)]
        self.transitions += len(out)
        return out

    def reload(
        self, zones: Zones, inside_now: Iterable[int] | None, t: float
    ) -> list[Transition]:
        """Swap to ``zones``. States of ids in both sets carry over; a new fence the car
        is in now (``inside_now``: new indices at the last fix) is reported ``inside``."""
        old = self.zones
        moved: dict[int, _Fence] = {}
        for i, st in self._st.items():
            nz = zones.by_id.get(old.zones[i].id)
            if nz is not None and nz.kind == "fence":
                moved[nz.index] = st
        out: list[Transition] = []
        if inside_now is not None and self._known:
            for i in sorted(inside_now):
                z = zones.zones[i]
                if z.kind != "fence" or (z.id in old.by_id and old.by_id[z.id].kind == "fence"):
                    continue
                moved[i] = _Fence(state=True, since=t)
                out.append(Transition(zone=z, transition="inside"))
        self.zones = zones
        self._st = moved
        self.quiet_until = -math.inf
        self._watch = {i for i, s in moved.items() if s.state is not False}
        self.transitions += len(out)
        return out
