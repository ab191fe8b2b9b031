"""The date of NMEA fixes: time of day, the date carried between dated sentences, and
the GPS week-number rollover. Pure: the stream's sentences are the only clock read.

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

__all__ = ["GPS_ROLLOVER_2019", "NmeaCalendar", "correct_week_rollover", "parse_ddmmyy",
           "parse_tod"]

GPS_ROLLOVER_2019 = dt.date(2019, 4, 7)
WEEKS_1024 = dt.timedelta(weeks=1024)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DAY = 86400.0


def parse_tod(s: str) -> float | None:
    """``hhmmss[.sss]`` -> seconds of the UTC day, None when malformed."""
    head, dot, frac = s.partition(".")
    if len(head) != 6 or not head.isdigit() or (dot and frac and not frac.isdigit()):
        return None
    h, mi = int(head[0:2]), int(head[2:4])
    sec = float(s[4:])
    if h > 23 or mi > 59 or sec >= 61.0:
        return None
    return h * 3600 + mi * 60 + sec


def parse_ddmmyy(s: str) -> dt.date | None:
    """RMC's ``ddmmyy`` -> a date, None when malformed."""
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


class NmeaCalendar:
    """The UTC date of a GNSS stream: rollover-corrected reported dates, carried from
    one dated sentence to the next epochs across midnight.

    ``stats`` is the assembler's counter dict (``rollover_corrected`` is counted there).
    """

    __slots__ = ("_date", "_date_tod", "reference_date", "rollover", "rollover_floor",
                 "stats")

    def __init__(self, stats: dict[str, int], *, date: dt.date | None,
                 reference_date: dt.date | None, rollover_floor: dt.date | None,
                 rollover: bool) -> None:
        self.stats = stats
        self.rollover_floor = rollover_floor
        self.reference_date = reference_date or date  # a given date is a second clock
        self.rollover = rollover
        # the date valid at time of day self._date_tod
        self._date: dt.date | None = date
        self._date_tod: float | None = None

    @property
    def date(self) -> dt.date | None:
        """The current UTC date as far as the stream told (None until known)."""
        return self._date

    def corrected(self, date: dt.date) -> dt.date:
        """A date the receiver reported, with a GPS week rollover undone."""
        if not self.rollover:
            return date
        fixed = correct_week_rollover(
            date, floor=self.rollover_floor, reference=self.reference_date)
        if fixed != date:
            self.stats["rollover_corrected"] += 1
        return fixed

    def dated(self, date: dt.date, tod: float) -> None:
        """A dated sentence (ZDA) outside any epoch: ``date`` holds at ``tod``."""
        self._date, self._date_tod = date, tod

    def resolve(self, date: dt.date | None, tod: float) -> dt.date | None:
        """The date of an epoch at ``tod``: its own ``date`` when it had a dated
        sentence, else the carried one moved across midnight; None when unknown."""
        if date is None:
            if self._date is None:
                return None
            date = self._date
            ref = self._date_tod
            if ref is not None:
                if tod < ref - _DAY / 2:  # passed midnight
                    date += dt.timedelta(days=1)
                elif tod > ref + _DAY / 2:  # the dating sentence was just after midnight
                    date -= dt.timedelta(days=1)
        self._date, self._date_tod = date, tod
        return date

    @staticmethod
    def timestamp(date: dt.date, tod: float) -> float:
        """UTC epoch seconds of ``tod`` on ``date``."""
        return (dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC)
                - _EPOCH).total_seconds() + tod
