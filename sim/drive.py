"""The drive directory: a recorded (or generated) drive, and its merged timeline.

A drive is a directory holding::

    gnss.nmea     raw NMEA lines as the receiver sent them ('#' comment lines allowed)
    can.log       candump -L lines "(1700000000.123456) can0 3E9#DEADBEEF", or any
                  python-can log format by suffix (can.asc, can.blf, can.log.gz, ...)
    drive.toml    optional:
                    date = "YYYY-MM-DD"        for GGA-only logs that never carry a date
                    notes = "..."
                    can_time_offset_s = 0.0    added to can.log timestamps: the recorder's
                                               system clock was this far behind GNSS UTC
                    [channels]  can = "can0"   names, informative
                    [[unplug]]  at = 1700000000.0, duration_s = 5.0
                                               the CAN adapter was pulled at `at` (UTC s)

At least one of gnss.nmea and can.* must exist.

``iter_timeline`` merges both streams on one clock (UTC seconds): an NMEA line takes
its time from its own sentence (UTC time of day + the date from RMC/ZDA or drive.toml);
lines without a usable time (GSA, GSV, bad checksum, garbage) inherit the previous
line's time, and lines before the first timed one take that first time.

One clock per drive: a receiver date is corrected for a GPS week-number rollover only
against the drive's other clock (``reference``: drive.toml ``date``, else the CAN log's
timestamps). A 2018 recording keeps its 2018 dates. ``check_clocks`` compares the two
streams' spans and reports an offset when they disagree by more than
``CLOCK_TOLERANCE_S`` (``can_time_offset_s`` in drive.toml fixes it).
"""

from __future__ import annotations

import datetime as dt
import heapq
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from edge.core.nmea import correct_week_rollover
from edge.errors import EdgeError
from edge.sources.canlog import LogStats, iter_candump_lines

log = structlog.get_logger()

GNSS_NAME = "gnss.nmea"
CAN_STEM = "can"
CAN_ERR_FLAG = 0x20000000
CAN_ERR_BUSERROR = 0x00000080

TimelineItem = tuple[float, str, bytes]
CLOCK_TOLERANCE_S = 5.0  # GNSS and CAN clocks further apart than this are reported
# a CAN timestamp before this is relative (seconds since the capture started), not UTC
PLAUSIBLE_EPOCH_S = dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp()


class DriveError(EdgeError):
    """The directory is not a usable drive (names the file and the reason)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Unplug:
    at: float  # UTC seconds on the drive's timeline
    duration_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Drive:
    path: Path
    gnss: Path | None
    can: Path | None
    date: dt.date | None = None
    notes: str = ""
    channels: Mapping[str, str] = field(default_factory=dict)
    can_time_offset_s: float = 0.0
    unplugs: tuple[Unplug, ...] = ()

    @property
    def name(self) -> str:
        return self.path.name


def _find_can(path: Path) -> Path | None:
    preferred = path / "can.log"
    if preferred.is_file():
        return preferred
    for p in sorted(path.glob(CAN_STEM + ".*")):
        if p.is_file():
            return p
    return None


def load_drive(path: Path) -> Drive:
    """Read a drive directory. Raises ``DriveError`` naming what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise DriveError(f"{path}: not a directory (a drive is a directory with "
                         f"{GNSS_NAME} and/or can.log)")
    gnss = path / GNSS_NAME
    gnss_path = gnss if gnss.is_file() else None
    can_path = _find_can(path)
    if gnss_path is None and can_path is None:
        raise DriveError(f"{path}: not a drive: neither {GNSS_NAME} nor can.log found")
    meta: dict[str, Any] = {}
    toml = path / "drive.toml"
    if toml.is_file():
        try:
            meta = tomllib.loads(toml.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DriveError(f"{toml}: not valid TOML: {exc}") from exc
    known = {"date", "notes", "channels", "can_time_offset_s", "unplug"}
    for key in meta:
        if key not in known:
            raise DriveError(f"{toml}: {key}: unknown key (known: {', '.join(sorted(known))})")
    date: dt.date | None = None
    raw_date = meta.get("date")
    if raw_date is not None:
        if isinstance(raw_date, dt.date) and not isinstance(raw_date, dt.datetime):
            date = raw_date
        elif isinstance(raw_date, str):
            try:
                date = dt.date.fromisoformat(raw_date)
            except ValueError as exc:
                raise DriveError(f"{toml}: date: must be YYYY-MM-DD, got {raw_date!r}") from exc
        else:
            raise DriveError(f"{toml}: date: must be YYYY-MM-DD, got {raw_date!r}")
    notes = meta.get("notes", "")
    if not isinstance(notes, str):
        raise DriveError(f"{toml}: notes: must be a string")
    channels = meta.get("channels", {})
    if not isinstance(channels, dict) or not all(isinstance(v, str) for v in channels.values()):
        raise DriveError(f"{toml}: channels: must be a table of strings")
    offset = meta.get("can_time_offset_s", 0.0)
    if isinstance(offset, bool) or not isinstance(offset, int | float):
        raise DriveError(f"{toml}: can_time_offset_s: must be a number")
    unplugs: list[Unplug] = []
    for i, u in enumerate(meta.get("unplug", [])):
        try:
            unplugs.append(Unplug(at=float(u["at"]), duration_s=float(u["duration_s"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise DriveError(f"{toml}: unplug[{i}]: needs numbers 'at' and 'duration_s'") from exc
    return Drive(path=path, gnss=gnss_path, can=can_path, date=date, notes=notes,
                 channels=dict(channels), can_time_offset_s=float(offset),
                 unplugs=tuple(unplugs))


# ------------------------------------------------------------------------------ NMEA


def nmea_checksum_ok(line: bytes) -> bool:
    """True when ``line`` is ``$...*HH`` with a matching XOR checksum."""
    if not line.startswith((b"$", b"!")):
        return False
    star = line.rfind(b"*")
    if star < 0 or len(line) < star + 3:
        return False
    try:
        want = int(line[star + 1 : star + 3], 16)
    except ValueError:
        return False
    got = 0
    for b in line[1:star]:
        got ^= b
    return got == want


_TOD = re.compile(rb"^(\d{2})(\d{2})(\d{2}(?:\.\d+)?)$")


def _tod(field_: bytes) -> float | None:
    m = _TOD.match(field_)
    if not m:
        return None
    h, mi, s = int(m.group(1)), int(m.group(2)), float(m.group(3))
    if h > 23 or mi > 59 or s >= 61:
        return None
    return h * 3600 + mi * 60 + s


def _ddmmyy(field_: bytes) -> dt.date | None:
    if len(field_) != 6 or not field_.isdigit():
        return None
    d, m, y = int(field_[:2]), int(field_[2:4]), int(field_[4:6])
    try:
        return dt.date(2000 + y if y < 80 else 1900 + y, m, d)
    except ValueError:
        return None


def nmea_time_fields(line: bytes) -> tuple[float | None, dt.date | None]:
    """(seconds of day, date) carried by a checksum-valid sentence; None where absent."""
    if not nmea_checksum_ok(line):
        return None, None
    body = line[1 : line.rfind(b"*")]
    f = body.split(b",")
    kind = f[0][-3:]
    if kind == b"RMC" and len(f) > 9:
        return _tod(f[1]), _ddmmyy(f[9])
    if kind == b"GGA" and len(f) > 1:
        return _tod(f[1]), None
    if kind == b"GLL" and len(f) > 5:
        return _tod(f[5]), None
    if kind == b"GNS" and len(f) > 1:
        return _tod(f[1]), None
    if kind == b"ZDA" and len(f) > 4:
        try:
            day = dt.date(int(f[4]), int(f[3]), int(f[2]))
        except ValueError:
            day = None
        return _tod(f[1]), day
    return None, None


def _read_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\r\n")
            if not line or line.startswith(b"#"):
                continue
            yield line


def _first_date(path: Path) -> dt.date | None:
    for line in _read_lines(path):
        _, day = nmea_time_fields(line)
        if day is not None:
            return day
    return None


def can_span(drive: Drive) -> tuple[float, float] | None:
    """(first, last) CAN timestamp of the drive, offset applied; None without CAN."""
    first = last = None
    for t, _, _ in iter_can(drive, warn=False):
        if first is None:
            first = t
        last = t
    return None if first is None or last is None else (first, last)


def gnss_span(drive: Drive) -> tuple[float, float] | None:
    """(first, last) time of the drive's timed NMEA lines; None without any."""
    first = last = None
    for t, _, _ in iter_gnss(drive):
        if first is None:
            first = t
        last = t
    return None if first is None or last is None else (first, last)


def reference(drive: Drive) -> tuple[dt.date | None, str]:
    """The drive's second clock for GPS week-rollover correction, and what it is.

    drive.toml's ``date``, else the date of the CAN log's first timestamp (when it is an
    absolute UTC time), else none (the receiver's dates are then kept as they are).
    """
    if drive.date is not None:
        return drive.date, f"drive.toml date {drive.date}"
    if drive.can is not None:
        first = next(iter_can(drive, warn=False), None)
        if first is not None and first[0] >= PLAUSIBLE_EPOCH_S:
            day = dt.datetime.fromtimestamp(first[0], dt.UTC).date()
            return day, f"CAN log clock {drive.can.name} ({day})"
    return None, "none (receiver dates kept as they are)"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockCheck:
    """How the drive's GNSS and CAN clocks compare (offset_s: GNSS minus CAN)."""

    gnss: tuple[float, float] | None
    can: tuple[float, float] | None
    offset_s: float | None  # None: one stream is missing, or they agree

    @property
    def agree(self) -> bool:
        return self.offset_s is None

    def message(self, drive: Drive) -> str:
        assert self.offset_s is not None
        fix = drive.can_time_offset_s + self.offset_s
        return (f"the GNSS and CAN clocks of {drive.name} disagree by {self.offset_s:+.1f} s "
                f"(GNSS minus CAN); if the recorder's clock was off, set "
                f"can_time_offset_s = {fix:.1f} in drive.toml")


def check_clocks(drive: Drive) -> ClockCheck:
    """Compare the spans of both streams. They are taken to disagree when both the starts
    and the ends are more than ``CLOCK_TOLERANCE_S`` apart in the same direction (a
    receiver may start late or a CAN capture stop early, but not both the same way);
    the offset reported is the smaller of the two."""
    g = gnss_span(drive) if drive.gnss is not None else None
    c = can_span(drive) if drive.can is not None else None
    offset = None
    if g is not None and c is not None:
        a, b = g[0] - c[0], g[1] - c[1]
        if min(abs(a), abs(b)) > CLOCK_TOLERANCE_S and (a > 0) == (b > 0):
            offset = a if abs(a) < abs(b) else b
    return ClockCheck(gnss=g, can=c, offset_s=offset)


def iter_gnss(drive: Drive) -> Iterator[TimelineItem]:
    """NMEA lines of the drive with their UTC times (see module docstring)."""
    if drive.gnss is None:
        return
    ref, _ = reference(drive)
    date = drive.date or _first_date(drive.gnss)
    if date is not None and ref is not None:
        date = correct_week_rollover(date, reference=ref)
    if date is None:
        log.warning("drive_no_date", drive=str(drive.path),
                    reason="no RMC/ZDA date and no date in drive.toml; GNSS lines skipped")
        return
    epoch0 = dt.datetime(date.year, date.month, date.day, tzinfo=dt.UTC).timestamp()
    day_start = epoch0
    last_tod: float | None = None
    current: float | None = None
    pending: list[bytes] = []
    for line in _read_lines(drive.gnss):
        tod, day = nmea_time_fields(line)
        if day is not None:
            if ref is not None:
                day = correct_week_rollover(day, reference=ref)
            day_start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
            last_tod = tod
        elif tod is not None and last_tod is not None and tod < last_tod - 43200:
            day_start += 86400.0  # midnight rollover in a GGA-only stream
        if tod is not None:
            last_tod = tod
            current = day_start + tod
        if current is None:
            pending.append(line)
            continue
        if pending:
            for p in pending:
                yield current, "gnss", p
            pending.clear()
        yield current, "gnss", line
    if pending:
        log.warning("drive_gnss_untimed", drive=str(drive.path), lines=len(pending),
                    reason="no sentence with a valid time; lines skipped")


# ------------------------------------------------------------------------------- CAN


_CANDUMP = re.compile(rb"^\((\d+(?:\.\d+)?)\)\s+(\S+)\s+([0-9A-Fa-f]{1,8})#(\S*)(?:\s+[RTrt])?$")


def format_candump(ts: float, channel: str, arbitration_id: int, data: bytes, *,
                   extended: bool = False, error: bool = False) -> bytes:
    """One candump -L line (no newline)."""
    if error:
        ident = f"{CAN_ERR_FLAG | CAN_ERR_BUSERROR:08X}"
    elif extended:
        ident = f"{arbitration_id:08X}"
    else:
        ident = f"{arbitration_id:03X}"
    return f"({ts:.6f}) {channel} {ident}#{data.hex().upper()}".encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class CandumpFrame:
    ts: float
    channel: str
    arbitration_id: int
    data: bytes
    extended: bool
    error: bool
    remote: bool = False


def parse_candump(line: bytes) -> CandumpFrame | None:
    """Parse one candump -L line; None when it is not one."""
    m = _CANDUMP.match(line.strip())
    if not m:
        return None
    ident_s, data_s = m.group(3), m.group(4)
    ident = int(ident_s, 16)
    remote = data_s[:1] in (b"R", b"r")
    if data_s.startswith(b"#"):  # CAN FD: "##<flags><data>"
        data_s = data_s[2:]
    try:
        data = b"" if remote else bytes.fromhex(data_s.decode())
    except ValueError:
        return None
    error = bool(ident & CAN_ERR_FLAG) and len(ident_s) > 3
    # an error frame's "id" is its error class (CAN_ERR_BUSERROR, ...), not an address
    return CandumpFrame(ts=float(m.group(1)), channel=m.group(2).decode(),
                        arbitration_id=ident & 0x1FFFFFFF, data=data,
                        extended=len(ident_s) > 3 and not error, error=error, remote=remote)


def iter_can(drive: Drive, *, warn: bool = True) -> Iterator[TimelineItem]:
    """CAN frames of the drive as candump -L lines, with their (offset-corrected) times.

    candump logs go through ``edge.sources.canlog.iter_candump_lines`` (the reader the
    replay and ``edge decode can`` use): comment and blank lines skipped, a line that is
    not a frame (truncated, garbage) counted and skipped, one warning with the count."""
    if drive.can is None:
        return
    off = drive.can_time_offset_s
    if drive.can.name == "can.log" or drive.can.suffix == ".candump":
        stats = LogStats()
        for ts, line in iter_candump_lines(drive.can, stats):
            if off:
                ts += off
                line = b"(%.6f)" % ts + line[line.index(b")") + 1 :]
            yield ts, "can", line
        if warn and stats.problems():
            log.warning("drive_can_bad_lines", file=str(drive.can), lines=stats.malformed,
                        reason=stats.problems())
        return
    import can  # lazily: only for non-candump formats

    with can.LogReader(str(drive.can)) as reader:
        for msg in reader:
            ts = float(msg.timestamp) + off
            channel = msg.channel if isinstance(msg.channel, str) else f"can{msg.channel or 0}"
            yield ts, "can", format_candump(ts, channel, msg.arbitration_id, bytes(msg.data),
                                            extended=msg.is_extended_id,
                                            error=msg.is_error_frame)


def iter_timeline(drive: Drive, *, control: bool = False) -> Iterator[TimelineItem]:
    """Both streams merged by time: (t, "gnss", NMEA line) and (t, "can", candump line).

    Lines carry no newline. Ties keep GNSS before CAN. With ``control=True`` the adapter
    unplug markers from drive.toml appear too, as (t, "ctl", b"unplug") and
    (t + duration, "ctl", b"replug").
    """
    streams: list[Iterator[TimelineItem]] = [iter_gnss(drive), iter_can(drive)]
    if control and drive.unplugs:
        marks: list[TimelineItem] = []
        for u in drive.unplugs:
            marks.append((u.at, "ctl", b"unplug"))
            marks.append((u.at + u.duration_s, "ctl", b"replug"))
        streams.append(iter(sorted(marks, key=lambda m: m[0])))
    return heapq.merge(*streams, key=lambda item: item[0])
