"""Whether a car may trust a GNSS fix (``valid``), and if not, why (``reason``). Pure.

Checked in this order (the first failing rule is the ``reason``):

=====================  =============================================================
``no_position``        no latitude/longitude in the epoch (empty fields stay None,
                       never 0,0); exactly 0,0 is ``null_island``
``status_void``        RMC / GLL status is not ``A`` (``V``: void)
``faa_mode``           FAA mode indicator N (no fix), V (invalid), E (dead reckoning),
                       S (simulator) or M (manual input)
``gga_quality``        GGA quality 0 (none); ``dead_reckoning`` for 6, ``simulator`` 8
``gsa_no_fix``         GSA fix type 1
``no_satellites``      GGA claims a fix from 0 satellites in use
``no_status``          nothing in the epoch (status, quality, FAA mode) vouches for it
``no_date``            the date is unknown (GGA-only stream without a date argument,
                       no RMC/ZDA yet): the time of day alone is not trusted
``hdop``               HDOP above ``max_hdop``
``time_not_advancing`` the epoch time is not after the previous fix's time (a stuck
                       or replaying receiver)
``jump``               the implied speed from the last valid fix is above
                       ``max_jump_mps`` (with ``JUMP_SLACK_M`` of slack); a new place
                       is accepted once ``confirm_fixes`` consecutive fixes agree
                       with each other
=====================  =============================================================
"""

from __future__ import annotations

import math

from edge.core.nmeaepoch import INVALID_FAA, Epoch

__all__ = ["JUMP_SLACK_M", "FixJudge", "haversine"]

JUMP_SLACK_M = 20.0  # position noise allowed on top of max_jump_mps * dt
EARTH_R = 6_371_008.8


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle metres (longitudes not wrapped: NMEA's are within ±180)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_R * math.asin(min(1.0, math.sqrt(h)))


class FixJudge:
    """Judge each epoch in stream order; remembers the last valid fix (time and place)
    to reject a time going backwards or a jump. ``stats`` is the assembler's counter
    dict (``jumps_rejected``, ``jumps_confirmed``, ``time_rewinds``)."""

    __slots__ = ("_anchor", "_chain", "_last_time", "_rewind", "confirm_fixes",
                 "max_hdop", "max_jump_mps", "stats")

    def __init__(self, stats: dict[str, int], *, max_hdop: float, max_jump_mps: float,
                 confirm_fixes: int) -> None:
        self.stats = stats
        self.max_hdop = max_hdop
        self.max_jump_mps = max_jump_mps
        self.confirm_fixes = max(1, confirm_fixes)
        self._last_time: float | None = None  # time of the last valid fix
        self._rewind: list[float] = []  # consecutive fixes behind _last_time, advancing
        self._anchor: tuple[float, float, float] | None = None  # lat, lon, time (valid)
        self._chain: list[tuple[float, float, float]] = []  # jump candidates

    def reason(self, ep: Epoch, time: float | None) -> str | None:
        """Why the epoch at ``time`` (None: undated) is not a valid fix; None when it
        is (it then becomes the last valid fix)."""
        reason = self._judge(ep, time)
        if reason is None:
            assert ep.lat is not None and ep.lon is not None and time is not None
            reason = self._jump(ep.lat, ep.lon, time)
        if reason is None and time is not None:
            self._last_time = time
        return reason

    def _judge(self, ep: Epoch, time: float | None) -> str | None:
        if ep.lat is None or ep.lon is None:
            return "no_position"
        if ep.lat == 0.0 and ep.lon == 0.0:
            return "null_island"
        if ep.status is not None and ep.status != "A":
            return "status_void"
        if ep.faa is not None and ep.faa in INVALID_FAA:
            return "faa_mode"
        q = ep.quality
        if q is not None:
            if q == 0:
                return "gga_quality"
            if q == 6:
                return "dead_reckoning"
            if q == 8:
                return "simulator"
        if ep.gsa_mode == 1:
            return "gsa_no_fix"
        if ep.sats == 0:
            return "no_satellites"  # GGA says a fix from no satellite: not a GNSS fix
        if ep.status is None and q is None and ep.faa is None:
            return "no_status"  # nothing in the epoch vouches for the position
        if time is None:
            return "no_date"
        if ep.hdop is not None and ep.hdop > self.max_hdop:
            return "hdop"
        if self._last_time is not None and time <= self._last_time:
            # Behind the last valid fix. If that one had a bogus future time, the clock
            # must not stay stuck: confirm_fixes consecutive advancing fixes accept it.
            rw = self._rewind
            if rw and time <= rw[-1]:
                rw.clear()
            rw.append(time)
            if len(rw) < self.confirm_fixes:
                return "time_not_advancing"
            self.stats["time_rewinds"] = self.stats.get("time_rewinds", 0) + 1
            self._anchor = None
        self._rewind.clear()
        return None

    def _jump(self, lat: float, lon: float, time: float) -> str | None:
        here = (lat, lon, time)
        anchor = self._anchor
        if anchor is None or self._consistent(anchor, here):
            self._anchor, self._chain = here, []
            return None
        chain = self._chain
        if chain and self._consistent(chain[-1], here):
            chain.append(here)
        else:
            self._chain = chain = [here]
        if len(chain) >= self.confirm_fixes:
            self._anchor, self._chain = here, []
            self.stats["jumps_confirmed"] += 1
            return None
        self.stats["jumps_rejected"] += 1
        return "jump"

    def _consistent(self, a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
        dist = haversine(a[0], a[1], b[0], b[1])
        return dist <= self.max_jump_mps * max(0.0, b[2] - a[2]) + JUMP_SLACK_M
