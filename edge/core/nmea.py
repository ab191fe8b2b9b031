"""NMEA 0183 bytes -> merged, validated GNSS fixes. Pure: no asyncio, files or sockets.

Two stages, both fed by the caller with time as an argument:

``NmeaFramer``
    Cuts an arbitrary byte stream into candidate sentences (``$...`` / ``!...`` without
    the line ending). It survives what real serial lines deliver: non-ASCII garbage and
    NUL bytes (skipped), a ``$`` in the middle of a sentence (restart there: the first
    part was truncated), ``\\r\\r\\n`` and bare ``\\n`` endings, sentences longer than
    ``MAX_SENTENCE`` (dropped), and binary frames of u-blox UBX (``B5 62``) and RTCM 3
    (``D3``) mixed in (checksum-verified and skipped, so a ``$`` inside their payload
    never starts a sentence). Everything is counted in ``stats``.

``FixAssembler``
    Parses sentences with pynmea2 (checksum required, any talker), merges one epoch
    (RMC, GGA, GNS, GLL, VTG, GSA, ZDA sharing a time of day) into one ``Fix`` and
    decides whether a car may trust it (``valid``) or not (``reason``).

Validity, checked in this order (the first failing rule is the ``reason``):

=====================  =============================================================
``no_position``        no latitude/longitude in the epoch (empty fields stay None,
                       never 0,0); exactly 0,0 is ``null_island``
``status_void``        RMC / GLL status is not ``A`` (``V``: void)
``faa_mode``           FAA mode indicator N (no fix), V (invalid), E (dead reckoning),
                       S (simulator) or M (manual input)
``gga_quality``        GGA quality 0 (none); ``dead_reckoning`` for 6, ``simulator`` 8
``gsa_no_fix``         GSA fix type 1
``no_satellites``      GGA claims a fix from 0 satellites in use
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

Invalid fixes are still returned (telemetry keeps them) with ``valid=False``.

Dates. The time of day comes with every positional sentence; the date only with RMC
(``ddmmyy``) and ZDA, or from the ``date`` argument (a drive's ``drive.toml``). Between
dated sentences the date is carried forward and advanced at midnight (the time of day
going back by more than 12 hours).

GPS week-number rollover. The GPS week is a 10-bit counter (1024 weeks, ~19.6 years).
A receiver whose firmware pins an old epoch reports a date exactly 1024 weeks in the
past after a rollover (the last ones were 1999-08-22 and 2019-04-07). A date alone
cannot tell a rollover from history (a 2018 recording really is from 2018), so a
correction needs a second clock, the ``reference_date``:

1. with a reference (live: the host clock once it is plausible; a recording: its
   other clock -- CAN log timestamps, ``drive.toml``), the reported date gets the
   multiple of 1024 weeks (>= 0) that brings it nearest to the reference. A date that
   already agrees with the reference is never moved, whatever its year.
2. without a reference, ``rollover_floor`` (live only: the daemon passes 2019-04-07,
   before which no receiver in service can really be) adds 1024 weeks until the date
   is not before it. Replays and ``edge decode nmea`` pass no floor: without a second
   clock the receiver's date is kept as it is.
3. ``rollover=False`` keeps every date verbatim.

Each correction is counted in ``stats['rollover_corrected']``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import pynmea2

from edge.model import Fix

__all__ = [
    "GPS_ROLLOVER_2019",
    "MAX_SENTENCE",
    "FixAssembler",
    "NmeaDecoder",
    "NmeaFramer",
    "correct_week_rollover",
    "iter_fixes",
]

MAX_SENTENCE = 128  # bytes from '$' to the end of the checksum (NMEA says 82)
MAX_UBX_PAYLOAD = 2048  # larger "frames" are taken for garbage (bounds the wait)
GPS_ROLLOVER_2019 = dt.date(2019, 4, 7)
WEEKS_1024 = dt.timedelta(weeks=1024)
JUMP_SLACK_M = 20.0  # position noise allowed on top of max_jump_mps * dt
# Two sentences of one epoch closer than this report one measurement (rounded to other
# decimals, e.g. GGA 5 and RMC 4): the later one is kept. Further apart they are two
# measurements (another filter, a stale repeat) and become two fixes. 0.15 m: over
# gpsd's regression logs the pair (recall, precision) is best between 0.15 and 0.2 m.
SAME_POSITION_M = 0.15
KNOTS = 1852.0 / 3600.0
EARTH_R = 6_371_008.8
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DAY = 86400.0

# --------------------------------------------------------------------------- framing

# Inside a sentence: anything not printable ASCII, or a new start character.
_BREAK = re.compile(rb"[^\x20-\x7e]|[$!]")
# Outside a sentence: the next byte that may start something.
_START = re.compile(rb"[$!\xb5\xd3]")
_EOL = re.compile(rb"[\r\n]")


def _crc24q_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
        table.append(crc & 0xFFFFFF)
    return table


_CRC24Q = _crc24q_table()


def _crc24q(data: bytes | bytearray) -> int:
    crc = 0
    table = _CRC24Q
    for b in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[(crc >> 16) ^ b]
    return crc


def _ubx_ok(frame: bytes | bytearray) -> bool:
    a = b = 0
    for x in frame[2:-2]:
        a = (a + x) & 0xFF
        b = (b + a) & 0xFF
    return a == frame[-2] and b == frame[-1]


class NmeaFramer:
    """Cut a byte stream into NMEA sentences. Never raises; counts what it drops.

    ``stats`` keys: ``sentences`` (returned), ``garbage_bytes`` (skipped outside a
    sentence, line endings not counted), ``restarts`` (a ``$``/``!`` inside a sentence),
    ``aborted`` (a non-printable byte inside a sentence), ``too_long`` (over
    ``MAX_SENTENCE``), ``ubx`` / ``rtcm3`` (valid binary frames skipped),
    ``binary_bad`` (a binary header whose checksum failed: rescanned as garbage).
    """

    __slots__ = ("_buf", "stats")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats: dict[str, int] = dict.fromkeys(
            ("sentences", "garbage_bytes", "restarts", "aborted", "too_long", "ubx",
             "rtcm3", "binary_bad"), 0)

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a sentence or binary frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial sentence (call after the port was reopened)."""
        self._buf.clear()

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        buf = self._buf
        if not buf and data[:1] == b"$" and data[-1:] == b"\n":
            # fast path: exactly one clean line (a capture read line by line)
            body = bytes(data).rstrip(b"\r\n")
            if 1 < len(body) <= MAX_SENTENCE and _BREAK.search(body, 1) is None:
                self.stats["sentences"] += 1
                return [body]
        buf += data
        n = len(buf)
        out: list[bytes] = []
        st = self.stats
        i = 0
        while i < n:
            c = buf[i]
            if c == 0x24 or c == 0x21:  # '$' or '!'
                m = _BREAK.search(buf, i + 1, min(n, i + MAX_SENTENCE + 1))
                if m is None:
                    if n - i > MAX_SENTENCE:
                        st["too_long"] += 1
                        i += 1  # the rest is skipped as garbage up to the next start
                        continue
                    break  # incomplete: wait for more bytes
                k = m.start()
                b = buf[k]
                if b == 0x0D or b == 0x0A:
                    if k - i > 1:
                        out.append(bytes(buf[i:k]))
                    else:
                        st["garbage_bytes"] += 1
                    i = k
                    continue
                if b == 0x24 or b == 0x21:
                    st["restarts"] += 1
                else:
                    st["aborted"] += 1
                i = k
                continue
            if c == 0x0D or c == 0x0A:
                i += 1
                continue
            if c == 0xB5:
                if n - i < 6:
                    break
                if buf[i + 1] == 0x62:
                    length = buf[i + 4] | (buf[i + 5] << 8)
                    if length <= MAX_UBX_PAYLOAD:
                        total = length + 8
                        if n - i < total:
                            break
                        if _ubx_ok(buf[i:i + total]):
                            st["ubx"] += 1
                            i += total
                            continue
                        st["binary_bad"] += 1
            elif c == 0xD3:
                if n - i < 3:
                    break
                if buf[i + 1] & 0xFC == 0:
                    total = (((buf[i + 1] & 0x03) << 8) | buf[i + 2]) + 6
                    if n - i < total:
                        break
                    end = i + total - 3
                    crc = (buf[end] << 16) | (buf[end + 1] << 8) | buf[end + 2]
                    if _crc24q(buf[i:end]) == crc:
                        st["rtcm3"] += 1
                        i += total
                        continue
                    st["binary_bad"] += 1
            # garbage: skip to the next byte that may start something
            m = _START.search(buf, i + 1)
            k = n if m is None else m.start()
            skipped = buf[i:k]
            st["garbage_bytes"] += len(skipped) - skipped.count(b"\r") - skipped.count(b"\n")
            i = k
        del buf[:i]
        st["sentences"] += len(out)
        return out


# --------------------------------------------------------------------------- fields

_INVALID_FAA = frozenset("NVESM")
_GOOD_FAA = frozenset("ADPRF")
_USED = frozenset({"RMC", "GGA", "GNS", "GLL", "VTG", "GSA", "ZDA"})


def _field(data: list[str], i: int) -> str:
    return data[i] if i < len(data) else ""


def _float(s: str) -> float | None:
    if not s:
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _int(s: str) -> int | None:
    if not s or not s.isdigit():
        return None
    return int(s)


def _coord(value: str, hemi: str, width: int, limit: float) -> float | None:
    """``ddmm.mmmm`` (width 2) / ``dddmm.mmmm`` (width 3) and N/S/E/W -> degrees."""
    if hemi in ("N", "E"):
        sign = 1.0
    elif hemi in ("S", "W"):
        sign = -1.0
    else:
        return None
    head, dot, frac = value.partition(".")
    if len(head) != width + 2 or not head.isdigit() or (dot and frac and not frac.isdigit()):
        return None
    minutes = float(value[width:])
    if minutes >= 60.0:
        return None
    deg = int(head[:width]) + minutes / 60.0
    if deg > limit:
        return None
    return sign * deg


def _tod(s: str) -> float | None:
    head, dot, frac = s.partition(".")
    if len(head) != 6 or not head.isdigit() or (dot and frac and not frac.isdigit()):
        return None
    h, mi = int(head[0:2]), int(head[2:4])
    sec = float(s[4:])
    if h > 23 or mi > 59 or sec >= 61.0:
        return None
    return h * 3600 + mi * 60 + sec


def _ddmmyy(s: str) -> dt.date | None:
    if len(s) != 6 or not s.isdigit():
        return None
    d, m, y = int(s[0:2]), int(s[2:4]), int(s[4:6])
    # NMEA's two-digit year: 80-99 -> 19xx (GPS began in 1980), else 20xx.
    try:
        return dt.date(1900 + y if y >= 80 else 2000 + y, m, d)
    except ValueError:
        return None


def correct_week_rollover(
    day: dt.date, *, floor: dt.date | None = None, reference: dt.date | None = None,
) -> dt.date:
    """Undo a GPS week-number rollover (see the module docstring): nearest to
    ``reference`` when there is one, else not before ``floor``, else unchanged."""
    if reference is not None:
        k = round((reference - day) / WEEKS_1024)
        return day + WEEKS_1024 * k if k > 0 else day
    if floor is not None:
        while day < floor:
            day += WEEKS_1024
    return day


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_R * math.asin(min(1.0, math.sqrt(h)))


# --------------------------------------------------------------------------- merging


class _Epoch:
    """Mutable accumulator of one epoch's fields (internal)."""

    __slots__ = ("alt", "course", "date", "faa", "gsa_mode", "hdop", "lat", "lon",
                 "mono", "quality", "sats", "speed", "status", "tod", "types")

    def __init__(self, mono: float) -> None:
        self.tod: float | None = None
        self.date: dt.date | None = None
        self.lat: float | None = None
        self.lon: float | None = None
        self.speed: float | None = None
        self.course: float | None = None
        self.alt: float | None = None
        self.hdop: float | None = None
        self.sats: int | None = None
        self.quality: int | None = None
        self.status: str | None = None
        self.faa: str | None = None
        self.gsa_mode: int | None = None
        self.mono = mono
        self.types: dict[str, int] = {}


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
        self.max_hdop = max_hdop
        self.max_jump_mps = max_jump_mps
        self.confirm_fixes = max(1, confirm_fixes)
        self.rollover_floor = rollover_floor
        self.reference_date = reference_date or date  # a given date is a second clock
        self.rollover = rollover
        # date bookkeeping: the date valid at time of day self._date_tod
        self._date: dt.date | None = date
        self._date_tod: float | None = None
        self._epoch: _Epoch | None = None
        self._last_time: float | None = None  # time of the last valid fix
        self._rewind: list[float] = []  # consecutive fixes behind _last_time, advancing
        self._last_tod: float | None = None  # time of day of the previous emitted epoch
        self._anchor: tuple[float, float, float] | None = None  # lat, lon, time (valid)
        self._chain: list[tuple[float, float, float]] = []  # jump candidates
        self._end_candidate: tuple[str, int] | None = None
        self._cycle_end: tuple[str, int] | None = None
        self._ended_early = False
        self._early_types: dict[str, int] = {}
        self.replay = False  # Fix.mono = GNSS time (replays have no receive clock)
        self.stats: dict[str, int] = dict.fromkeys(
            ("sentences", "bad_checksum", "unknown", "proprietary", "ignored",
             "parse_error", "fixes", "valid_fixes", "invalid_fixes", "jumps_rejected",
             "jumps_confirmed", "rollover_corrected", "late_sentences",
             "untimed_epochs", "no_time"), 0)

    # -- public --------------------------------------------------------------------

    @property
    def date(self) -> dt.date | None:
        """The current UTC date as far as the stream told (None until known)."""
        return self._date

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
            tod = _tod(_field(d, 0))
            day, month, year = _int(_field(d, 1)), _int(_field(d, 2)), _int(_field(d, 3))
            if tod is not None and day and month and year:
                try:
                    date = dt.date(year, month, day)
                except ValueError:
                    self.stats["parse_error"] += 1
                    return out
                date = self._rollover(date)
                ep = self._epoch
                if ep is not None and ep.tod == tod:
                    ep.date = date
                else:
                    self._date, self._date_tod = date, tod
            return out
        if kind in ("RMC", "GGA", "GNS", "GLL"):
            raw = _field(d, 4 if kind == "GLL" else 0)
            tod = _tod(raw)
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
                ep = self._epoch = _Epoch(mono)
            if ep.tod is None:
                ep.tod = tod
            elif ep.lat is not None and ep.lon is not None:
                here = self._pos(kind, d)
                if here is not None and _haversine(here[0], here[1], ep.lat,
                                                   ep.lon) > SAME_POSITION_M:
                    # Two positions for one instant (a receiver whose RMC repeats the
                    # previous second's position, GGA and GLL from different filters):
                    # two measurements, reported as two fixes as gpsd reports each --
                    # the second is not after the first in time (time_not_advancing).
                    self.stats["split_epochs"] = self.stats.get("split_epochs", 0) + 1
                    self._epoch = None
                    out += self._emit(ep)
                    carried = ep.date
                    ep = self._epoch = _Epoch(mono)
                    ep.tod, ep.date = tod, carried
        else:
            ep = self._epoch
            if ep is None:
                ep = self._epoch = _Epoch(mono)
        ep.types[key] = ep.types.get(key, 0) + 1
        self._fill(ep, kind, d)
        if self._cycle_end is not None and self._cycle_end == (key, ep.types[key]):
            self._epoch = None
            self._ended_early = True
            self._early_types = ep.types
            out += self._emit(ep)
        return out

    def _learn_end(self, ep: _Epoch) -> None:
        # the last type in the epoch, and how many times it came
        if not ep.types:
            return
        key = next(reversed(ep.types))
        end = (key, ep.types[key])
        if end == self._end_candidate:
            self._cycle_end = end
        self._end_candidate = end
        self._ended_early = False

    def _fill(self, ep: _Epoch, kind: str, d: list[str]) -> None:
        if kind == "RMC":
            self._status(ep, _field(d, 1))
            self._position(ep, d, 2)
            spd = _float(_field(d, 6))
            if spd is not None and spd >= 0:
                ep.speed = spd * KNOTS
            crs = _float(_field(d, 7))
            if crs is not None and 0 <= crs <= 360:
                ep.course = crs % 360
            date = _ddmmyy(_field(d, 8))
            if date is not None:
                ep.date = self._rollover(date)
            self._faa(ep, _field(d, 11))
        elif kind == "GGA":
            self._position(ep, d, 1)
            q = _int(_field(d, 5))
            if q is not None:
                ep.quality = q
            self._sats_hdop_alt(ep, _field(d, 6), _field(d, 7), _field(d, 8),
                                _field(d, 9))
        elif kind == "GNS":
            self._position(ep, d, 1)
            mode = _field(d, 5)
            if mode:
                # one character per constellation: usable if any of them has a fix
                if any(ch in _GOOD_FAA for ch in mode):
                    ep.faa = ep.faa or "A"
                else:
                    ep.faa = mode[0]
            self._sats_hdop_alt(ep, _field(d, 6), _field(d, 7), _field(d, 8), "M")
        elif kind == "GLL":
            self._position(ep, d, 0)
            self._status(ep, _field(d, 5))
            self._faa(ep, _field(d, 6))
        elif kind == "VTG":
            crs = _float(_field(d, 0))
            if crs is not None and 0 <= crs <= 360 and ep.course is None:
                ep.course = crs % 360
            if ep.speed is None:
                kmh = _float(_field(d, 6))
                kts = _float(_field(d, 4))
                if kmh is not None and kmh >= 0:
                    ep.speed = kmh / 3.6
                elif kts is not None and kts >= 0:
                    ep.speed = kts * KNOTS
            self._faa(ep, _field(d, 8))
        elif kind == "GSA":
            m = _int(_field(d, 1))
            if m in (1, 2, 3):
                ep.gsa_mode = m if ep.gsa_mode is None else max(ep.gsa_mode, m)
            hdop = _float(_field(d, 15))
            if hdop is not None and hdop > 0 and ep.hdop is None:
                ep.hdop = hdop

    @staticmethod
    def _pos(kind: str, d: list[str]) -> tuple[float, float] | None:
        i = {"RMC": 2, "GGA": 1, "GNS": 1, "GLL": 0}[kind]
        lat = _coord(_field(d, i), _field(d, i + 1), 2, 90.0)
        lon = _coord(_field(d, i + 2), _field(d, i + 3), 3, 180.0)
        return None if lat is None or lon is None else (lat, lon)

    @staticmethod
    def _position(ep: _Epoch, d: list[str], i: int) -> None:
        lat = _coord(_field(d, i), _field(d, i + 1), 2, 90.0)
        lon = _coord(_field(d, i + 2), _field(d, i + 3), 3, 180.0)
        if lat is not None and lon is not None:
            ep.lat, ep.lon = lat, lon

    @staticmethod
    def _status(ep: _Epoch, status: str) -> None:
        # any RMC/GLL of the epoch that does not say A (empty included) makes it invalid
        if ep.status is None or ep.status == "A":
            ep.status = status

    @staticmethod
    def _faa(ep: _Epoch, mode: str) -> None:
        if mode:
            ch = mode[0]
            if ep.faa is None or ch in _INVALID_FAA:
                ep.faa = ch

    @staticmethod
    def _sats_hdop_alt(ep: _Epoch, sats: str, hdop: str, alt: str, unit: str) -> None:
        n = _int(sats)
        if n is not None:
            ep.sats = n
        h = _float(hdop)
        if h is not None and h > 0:
            ep.hdop = h
        a = _float(alt)
        if a is not None and unit in ("M", "") and -1000.0 < a < 100_000.0:
            ep.alt = a

    def _rollover(self, date: dt.date) -> dt.date:
        if not self.rollover:
            return date
        fixed = correct_week_rollover(
            date, floor=self.rollover_floor, reference=self.reference_date)
        if fixed != date:
            self.stats["rollover_corrected"] += 1
        return fixed

    # -- emitting ------------------------------------------------------------------

    def _resolve_date(self, ep: _Epoch) -> dt.date | None:
        tod = ep.tod
        assert tod is not None
        if ep.date is not None:
            date = ep.date
        elif self._date is not None:
            date = self._date
            ref = self._date_tod
            if ref is not None:
                if tod < ref - _DAY / 2:  # passed midnight
                    date += dt.timedelta(days=1)
                elif tod > ref + _DAY / 2:  # the dating sentence was just after midnight
                    date -= dt.timedelta(days=1)
        else:
            return None
        self._date, self._date_tod = date, tod
        return date

    def _emit(self, ep: _Epoch) -> list[Fix]:
        st = self.stats
        if ep.tod is None:
            st["untimed_epochs"] += 1
            return []
        date = self._resolve_date(ep)
        time: float | None = None
        if date is not None:
            time = (dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)
                    - _EPOCH).total_seconds() + ep.tod
        lat, lon = ep.lat, ep.lon
        # mode is what the receiver says of its fix (gpsd's TPV mode): no fix when any
        # sentence of the epoch says so, whatever GSA's (possibly stale) 2D/3D claim
        if (lat is None or (ep.status is not None and ep.status != "A") or ep.quality == 0
                or ep.faa in ("N", "V") or ep.sats == 0):
            mode = 0
        elif ep.gsa_mode is not None:
            mode = 0 if ep.gsa_mode == 1 else ep.gsa_mode
        else:
            mode = 3 if ep.alt is not None else 2
        reason = self._judge(ep, time)
        if reason is None:
            assert lat is not None and lon is not None and time is not None
            reason = self._jump(lat, lon, time)
        if reason is None and time is not None:
            self._last_time = time
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
        return [Fix(time=time, lat=lat, lon=lon, speed_mps=ep.speed, course_deg=ep.course,
                    alt_m=ep.alt, mode=mode, hdop=ep.hdop, sats=ep.sats,
                    quality=ep.quality, valid=valid, reason=reason, mono=mono)]

    def _judge(self, ep: _Epoch, time: float | None) -> str | None:
        if ep.lat is None or ep.lon is None:
            return "no_position"
        if ep.lat == 0.0 and ep.lon == 0.0:
            return "null_island"
        if ep.status is not None and ep.status != "A":
            return "status_void"
        if ep.faa is not None and ep.faa in _INVALID_FAA:
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
        dist = _haversine(a[0], a[1], b[0], b[1])
        return dist <= self.max_jump_mps * max(0.0, b[2] - a[2]) + JUMP_SLACK_M


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
