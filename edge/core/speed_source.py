"""Which speed to believe: CAN (or OBD) first, GNSS speed over ground as a fallback. Pure.

CAN speed is preferred whenever it is fresh: younger than ``stale_s`` by ``mono``. When it
is stale (adapter unplugged, bus silent, no DBC frames) a valid GNSS fix's speed is used
instead, and the switch is visible in ``health()["source"]``. When both are fresh and
differ by more than ``disagree_kmh`` for at least ``disagree_s`` (a wrong DBC signal or
scale, a slipping wheel, a GNSS multipath spell), ``health()["implausible"]`` turns True
until they agree again. Nothing here decides which one is right: it reports.
"""

from __future__ import annotations

from typing import Any

from edge.model import Fix, SpeedSample


class SpeedArbiter:
    def __init__(
        self,
        *,
        stale_s: float,
        disagree_kmh: float,
        disagree_s: float,
        gnss_stale_s: float = 3.0,
    ) -> None:
        self.stale_s = stale_s
        self.disagree_kmh = disagree_kmh
        self.disagree_s = disagree_s
        self.gnss_stale_s = gnss_stale_s
        self._can: SpeedSample | None = None
        self._gnss: SpeedSample | None = None
        self._disagree_since: float | None = None
        self._implausible = False
        self._last_diff: float | None = None
        self._source: str | None = None
        self._counts = {"can": 0, "gnss": 0, "fallbacks": 0, "invalid_fixes": 0}

    def _can_fresh(self, mono: float) -> bool:
        return self._can is not None and mono - self._can.mono <= self.stale_s

    def _gnss_fresh(self, mono: float) -> bool:
        return self._gnss is not None and mono - self._gnss.mono <= self.gnss_stale_s

    def _use(self, source: str | None) -> None:
        if source == "gnss" and self._source not in (None, "gnss"):
            self._counts["fallbacks"] += 1
        self._source = source

    def _compare(self, mono: float) -> None:
        can, gnss = self._can, self._gnss
        if can is None or gnss is None or abs(can.mono - gnss.mono) > max(
            self.stale_s, self.gnss_stale_s
        ):
            self._disagree_since = None  # cannot compare: not evidence either way
            return
        diff = abs(can.speed_kmh - gnss.speed_kmh)
        self._last_diff = diff
        if diff > self.disagree_kmh:
            if self._disagree_since is None:
                self._disagree_since = mono
            if mono - self._disagree_since >= self.disagree_s:
                self._implausible = True
        else:
            self._disagree_since = None
            self._implausible = False

    def on_can(self, s: SpeedSample) -> SpeedSample | None:
        """A CAN/OBD sample arrived: it is the speed to use now."""
        self._can = s
        self._counts["can"] += 1
        self._use(s.source)
        self._compare(s.mono)
        return s

    def on_gnss(self, fix: Fix) -> SpeedSample | None:
        """A fix arrived: returns a GNSS speed sample when CAN is stale, else None."""
        if not fix.valid or fix.speed_mps is None or fix.time is None:
            self._counts["invalid_fixes"] += 1
            return None
        sample = SpeedSample(
            time=fix.time, speed_kmh=fix.speed_mps * 3.6, source="gnss", mono=fix.mono
        )
        self._gnss = sample
        self._counts["gnss"] += 1
        self._compare(fix.mono)
        if self._can_fresh(fix.mono):
            self._use(self._can.source if self._can is not None else "can")
            return None
        self._use("gnss")
        return sample

    def current(self, mono: float) -> SpeedSample | None:
        """The speed to believe at ``mono``: fresh CAN, else fresh GNSS, else None."""
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
            "implausible": self._implausible,
            "diff_kmh": None if self._last_diff is None else round(self._last_diff, 1),
            **self._counts,
        }
