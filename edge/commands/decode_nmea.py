"""``edge decode nmea FILE [--date D] [--reference-date D | --no-rollover]``: fixes as JSON.

One JSON line per merged fix (``Fix.to_json()``'s keys; an invalid fix carries
``invalid_reason``). On stderr: the week-rollover reference used, a one-line summary of
the counts, and the invalid fixes' reasons with their counts.

When no date is given and the file sits in a drive directory, the ``date`` of its
``drive.toml`` dates GGA-only streams. The rollover reference (a second clock, see
``edge.core.nmea``) is ``--reference-date``, else the drive's (drive.toml date, else the
CAN log's clock), else none: the receiver's dates are then kept as sent. Exit 0, or 2
when the file or a date is bad.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tomllib
from pathlib import Path
from typing import TextIO

from edge.commands import reader_went_away
from edge.core.nmea import NmeaDecoder, iter_fixes
from edge.errors import ExitCode

_SUMMARY_KEYS = (
    ("framer_sentences", "sentences"),
    ("fixes", "fixes"),
    ("valid_fixes", "valid"),
    ("invalid_fixes", "invalid"),
    ("bad_checksum", "bad checksum"),
    ("parse_error", "parse errors"),
    ("unknown", "unknown"),
    ("proprietary", "proprietary"),
    ("framer_garbage_bytes", "garbage bytes"),
    ("framer_too_long", "too long"),
    ("framer_ubx", "UBX frames"),
    ("framer_rtcm3", "RTCM3 frames"),
    ("jumps_rejected", "jumps rejected"),
    ("rollover_corrected", "week rollovers corrected"),
)


def drive_date(path: Path) -> dt.date | None:
    """The ``date`` key of the ``drive.toml`` beside *path*, if there is one."""
    toml = path.parent / "drive.toml"
    try:
        data = tomllib.loads(toml.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = data.get("date")
    if value is None and isinstance(data.get("drive"), dict):
        value = data["drive"].get("date")
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def _drive_reference(path: Path) -> tuple[dt.date | None, str]:
    """The rollover reference of the drive directory *path* sits in, if it is one."""
    from sim.drive import DriveError, load_drive, reference

    if path.name != "gnss.nmea":
        return None, "none (dates kept as the receiver sent them)"
    try:
        return reference(load_drive(path.parent))
    except (DriveError, OSError):
        return None, "none (dates kept as the receiver sent them)"


def main(path: Path, *, date: str | None, out: TextIO, reference_date: str | None = None,
         rollover: bool = True) -> int:
    day: dt.date | None = None
    ref: dt.date | None = None
    for flag, value in (("--date", date), ("--reference-date", reference_date)):
        if value is None:
            continue
        try:
            parsed = dt.date.fromisoformat(value)
        except ValueError:
            print(f"edge decode nmea: {flag} must be YYYY-MM-DD, got {value!r}",
                  file=sys.stderr)
            return ExitCode.USAGE
        if flag == "--date":
            day = parsed
        else:
            ref = parsed
    if day is None:
        day = drive_date(path)
    if not rollover:
        source = "none (--no-rollover: dates exactly as sent)"
    elif ref is not None:
        source = f"--reference-date {ref}"
    elif date is not None and day is not None:
        ref, source = day, f"--date {day}"
    else:
        ref, source = _drive_reference(path)
        if ref is None and day is not None:
            ref, source = day, f"drive.toml date {day}"
    try:
        fh = path.open("rb")
    except OSError as exc:
        print(f"edge decode nmea: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.USAGE
    decoder = NmeaDecoder(date=day, reference_date=ref, rollover=rollover)
    print(f"{path.name}: week-rollover reference: {source}", file=sys.stderr)
    dumps = json.dumps
    write = out.write
    try:
        with fh:
            for fix in iter_fixes(fh, decoder=decoder):
                write(dumps(fix.to_json(), separators=(",", ":")) + "\n")
    except BrokenPipeError:
        return reader_went_away()
    except OSError as exc:
        print(f"edge decode nmea: error reading {path}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.USAGE
    stats = decoder.stats
    parts = [f"{stats.get(key, 0)} {label}" for key, label in _SUMMARY_KEYS]
    print(f"{path.name}: " + ", ".join(parts), file=sys.stderr)
    reasons = sorted(((k[len("invalid_"):], v) for k, v in stats.items()
                      if k.startswith("invalid_") and k != "invalid_fixes" and v),
                     key=lambda kv: (-kv[1], kv[0]))
    if reasons:
        print(f"{path.name}: invalid_reason: "
              + ", ".join(f"{r} {n}" for r, n in reasons), file=sys.stderr)
    return ExitCode.OK
