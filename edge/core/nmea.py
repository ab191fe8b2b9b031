"""NMEA 0183 bytes -> merged, validated GNSS fixes. Pure: no asyncio, files or sockets.

The rooms, each fed by the caller with time as an argument:

``edge.core.nmeaframe.NmeaFramer``
    cuts an arbitrary byte stream into candidate sentences (garbage, binary UBX/RTCM
    frames and truncated sentences skipped and counted).
``FixAssembler`` (here)
    parses sentences with pynmea2 (checksum required, any talker) and decides which
    sentences make one epoch (RMC, GGA, GNS, GLL, VTG, GSA, ZDA sharing a time of day),
    with its helpers:

    * ``edge.core.nmeaepoch.Epoch``: one epoch's fields merged from its sentences;
    * ``edge.core.nmeadate.NmeaCalendar``: the date of each epoch (carried between
      dated sentences, across midnight) and the GPS week-number rollover;
    * ``edge.core.fixjudge.FixJudge``: whether a car may trust the fix (``valid``)
      or not (``reason``: the table is in that module).
``NmeaDecoder`` / ``iter_fixes`` (here)
    framer and assembler together: bytes or a whole capture in, fixes out.

Invalid fixes are still returned (telemetry keeps them) with ``valid=False``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

import pynmea2

from edge.core.fixjudge import FixJudge, haversine
from edge.core.nmeadate import (
    GPS_ROLLOVER_2019,
    NmeaCalendar,
    correct_week_rollover,
    parse_tod,
)
from edge.core.nmeaepoch import Epoch, field, parse_int, position
from edge.core.nmeaframe import NmeaFramer
from edge.model import Fix

# GPS_ROLLOVER_2019 and correct_week_rollover (edge.core.nmeadate) are exported here too:
# the live GNSS source and sim/drive.py take them from the NMEA entry point
__all__ = [
    "GPS_ROLLOVER_2019",
    "FixAssembler",
    "NmeaDecoder",
    "correct_week_rollover",
    "iter_fixes",
]

# Two sentences of one epoch closer than this report one measurement (rounded to other
# decimals, e.g. GGA 5 and RMC 4): the later one is kept. Further apart they are two
# measurements (another filter, a stale repeat) and become two fixes. 0.15 m: over
# gpsd's regression logs the pair (recall, precision) is best between 0.15 and 0.2 m.
SAME_POSITION_M = 0.15
_USED = frozenset({"RMC", "GGA", "GNS", "GLL", "VTG", "GSA", "ZDA"})


class FixAssembler:
    """Merge parsed sentences into one ``Fix`` per epoch and judge its validity.

    ``push`` returns the fixes completed by this sentence (usually none or one): an
    epoch is emitted when a sentence with another time of day arrives, when a sentence
    of the same time reports a position more than ``SAME_POSITION_M`` away (two
    measurements of one instant: two fixes, as gpsd reports them), or right after
    the sentence that ended the previous two cycles (learned, so a live fix is not held
    back a whole second). ``flush`` emits the pending epoch at the end of a stream.
    """

    def __init__(
        self,
        *,
        date: dt.date | None = None,
        max_hdop: float = 5.0,
        max_jump_mps: float = 90.0,
        confirm_fixes: int = 3,
        reference_date: dt.date | None = None,
        rollover_floor: dt.date | None = None,
        rollover: bool = True,
    ) -> None:
        self.stats: dict[str, int] = dict.fromkeys(
            ("sentences", "bad_checksum", "unknown", "proprietary", "ignored",
             "parse_error", "fixes", "valid_fixes", "invalid_fixes", "jumps_rejected",
             "jumps_confirmed", "rollover_corrected", "late_sentences",
             "untimed_epochs", "no_time"), 0)
        self.calendar = NmeaCalendar(self.stats, date=date, reference_date=reference_date,
                                     rollover_floor=rollover_floor, rollover=rollover)
        self.judge = FixJudge(self.stats, max_hdop=max_hdop, max_jump_mps=max_jump_mps,
                              confirm_fixes=confirm_fixes)
        self._epoch: Epoch | None = None
        self._last_tod: float | None = None  # time of day of the previous emitted epoch
        # the receiver's cycle end (last sentence type, how many of it) once two epochs
        # in a row agreed on it; the epoch emitted early on it, and its sentence types
        self._end_candidate: tuple[str, int] | None = None
        self._cycle_end: tuple[str, int] | None = None
        self._ended_early = False
        self._early_types: dict[str, int] = {}
        self.replay = False  # Fix.mono = GNSS time (replays have no receive clock)

    # -- public --------------------------------------------------------------------

    @property
    def date(self) -> dt.date | None:
        """The current UTC date as far as the stream told (None until known)."""
        return self.calendar.date

    @property
    def reference_date(self) -> dt.date | None:
        """The second clock a week rollover is corrected against (None: none)."""
        return self.calendar.reference_date

    def push(self, sentence: bytes, mono: float) -> list[Fix]:
        st = self.stats
        st["sentences"] += 1
        head = sentence[:6]
        if head[:1] == b"!":  # AIS / encapsulated: not ours
            st["ignored"] += 1
            return []
        if head[1:2] == b"P":
            st["proprietary"] += 1
            return []
        stype = head[3:6]
        try:
            kind = stype.decode("ascii")
        except UnicodeDecodeError:
            st["parse_error"] += 1
            return []
        if kind not in _USED:
            if kind in pynmea2.TalkerSentence.sentence_types:
                st["ignored"] += 1
            else:
                st["unknown"] += 1
            return []
        try:
            msg = pynmea2.parse(sentence.decode("ascii"), check=True)
        except pynmea2.ChecksumError:
            st["bad_checksum"] += 1
            return []
        except pynmea2.SentenceTypeError:
            st["unknown"] += 1
            return []
        except Exception:  # pynmea2 raises ValueError, TypeError... on odd input
            st["parse_error"] += 1
            return []
        if not isinstance(msg, pynmea2.TalkerSentence):
            st["unknown"] += 1
            return []
        try:
            return self._merge(msg.sentence_type, msg.talker + msg.sentence_type,
                               msg.data, mono)
        except (ValueError, IndexError, OverflowError, TypeError):
            st["parse_error"] += 1
            return []

    def flush(self, *, complete_only: bool = False) -> list[Fix]:
        """Emit the pending epoch. ``complete_only``: not when the receiver's cycle end
        was learned and this epoch has not reached it (a capture cut mid-epoch: gpsd
        drops it too); counted in ``incomplete_epochs``."""
        ep, self._epoch = self._epoch, None
        if ep is None:
            return []
        if complete_only and self._cycle_end is not None:
            key, count = self._cycle_end
            if ep.types.get(key, 0) < count:
                self.stats["incomplete_epochs"] = self.stats.get("incomplete_epochs", 0) + 1
                return []
        return self._emit(ep)

    # -- merging -------------------------------------------------------------------

    def _merge(self, kind: str, key: str, d: list[str], mono: float) -> list[Fix]:
        out: list[Fix] = []
        tod: float | None = None
        if kind == "ZDA":
            tod = parse_tod(field(d, 0))
            day, month, year = (parse_int(field(d, i)) for i in (1, 2, 3))
            if tod is not None and day and month and year:
                try:
                    date = dt.date(year, month, day)
                except ValueError:
                    self.stats["parse_error"] += 1
                    return out
                date = self.calendar.corrected(date)
                ep = self._epoch
                if ep is not None and ep.tod == tod:
                    ep.date = date
                else:
                    self.calendar.dated(date, tod)
            return out
        if kind in ("RMC", "GGA", "GNS", "GLL"):
            raw = field(d, 4 if kind == "GLL" else 0)
            tod = parse_tod(raw)
            if tod is None:
                # an empty time: the receiver has no fix nor time yet (not an error)
                self.stats["parse_error" if raw else "no_time"] += 1
                return out
            ep = self._epoch
            if ep is not None and ep.tod is not None and ep.tod != tod:
                self._learn_end(ep)
                self._epoch = None
                out += self._emit(ep)
                ep = None
            if (ep is None and self._ended_early and tod == self._last_tod
                    and key not in self._early_types):
                # A sentence of the epoch we already emitted: the learned end was wrong.
                # (The same type again is a repeated epoch: judged time_not_advancing.)
                self._ended_early = False
                self._cycle_end = self._end_candidate = None
                self.stats["late_sentences"] += 1
                return out
            if ep is None:
                ep = self._epoch = Epoch(mono)
            if ep.tod is None:
                ep.tod = tod
            elif ep.lat is not None and ep.lon is not None:
                here = position(kind, d)
                if here is not None and haversine(here[0], here[1], ep.lat,
                                                  ep.lon) > SAME_POSITION_M:
                    # Two positions for one instant (a receiver whose RMC repeats the
                    # previous second's position, GGA and GLL from different filters):
                    # two measurements, reported as two fixes as gpsd reports each --
                    # the second is not after the first in time (time_not_advancing).
                    self.stats["split_epochs"] = self.stats.get("split_epochs", 0) + 1
                    self._epoch = None
                    out += self._emit(ep)
                    carried = ep.date
                    ep = self._epoch = Epoch(mono)
                    ep.tod, ep.date = tod, carried
        else:
            ep = self._epoch
            if ep is None:
                ep = self._epoch = Epoch(mono)
        ep.types[key] = ep.types.get(key, 0) + 1
        ep.fill(kind, d, self.calendar.corrected)
        if self._cycle_end is not None and self._cycle_end == (key, ep.types[key]):
            self._epoch = None
            self._ended_early = True
            self._early_types = ep.types
            out += self._emit(ep)
        return out

    def _learn_end(self, ep: Epoch) -> None:
        # the last type in the epoch, and how many times it came
        if not ep.types:
            return
        key = next(reversed(ep.types))
        end = (key, ep.types[key])
        if end == self._end_candidate:
            self._cycle_end = end
        self._end_candidate = end
        self._ended_early = False

    # -- emitting ------------------------------------------------------------------

    def _emit(self, ep: Epoch) -> list[Fix]:
        st = self.stats
        if ep.tod is None:
            st["untimed_epochs"] += 1
            return []
        date = self.calendar.resolve(ep.date, ep.tod)
        time = None if date is None else NmeaCalendar.timestamp(date, ep.tod)
        mode = ep.mode()
        reason = self.judge.reason(ep, time)
        self._last_tod = ep.tod
        valid = reason is None
        st["fixes"] += 1
        if valid:
            st["valid_fixes"] += 1
        else:
            st["invalid_fixes"] += 1
            key = f"invalid_{reason}"
            st[key] = st.get(key, 0) + 1
        mono = ep.mono
        if self.replay and time is not None:
            mono = time
        return [Fix(time=time, lat=ep.lat, lon=ep.lon, speed_mps=ep.speed,
                    course_deg=ep.course, alt_m=ep.alt, mode=mode, hdop=ep.hdop,
                    sats=ep.sats, quality=ep.quality, valid=valid, reason=reason,
                    mono=mono)]


# --------------------------------------------------------------------------- together


class NmeaDecoder:
    """Framer + assembler: bytes in, fixes out. ``stats`` merges both (framer keys are
    prefixed ``framer_``)."""

    def __init__(self, assembler: FixAssembler | None = None, **kw: Any) -> None:
        self.framer = NmeaFramer()
        self.assembler = assembler if assembler is not None else FixAssembler(**kw)

    def feed(self, data: bytes | bytearray, mono: float) -> list[Fix]:
        out: list[Fix] = []
        push = self.assembler.push
        for sentence in self.framer.feed(data):
            out += push(sentence, mono)
        return out

    def flush(self, *, complete_only: bool = False) -> list[Fix]:
        return self.assembler.flush(complete_only=complete_only)

    @property
    def stats(self) -> dict[str, int]:
        merged = dict(self.assembler.stats)
        merged.update({f"framer_{k}": v for k, v in self.framer.stats.items()})
        return merged


def iter_fixes(
    lines: Iterable[bytes], *, date: dt.date | None = None,
    decoder: NmeaDecoder | None = None, **kw: Any,
) -> Iterator[Fix]:
    """Frame and assemble a whole capture (lines or chunks of bytes).

    Lines starting with ``#`` (gpsd log headers, our captures' comments) are skipped
    when no partial sentence/binary frame is pending. ``Fix.mono`` is the GNSS time when
    known (a capture has no receive clock). Pass ``decoder`` to read its ``stats`` after.
    """
    if decoder is None:
        decoder = NmeaDecoder(date=date, **kw)
    decoder.assembler.replay = True
    framer = decoder.framer
    feed = framer.feed
    push = decoder.assembler.push
    for line in lines:
        if line[:1] == b"#" and not framer.pending:
            continue
        for sentence in feed(line):
            yield from push(sentence, 0.0)
    yield from decoder.flush(complete_only=True)

