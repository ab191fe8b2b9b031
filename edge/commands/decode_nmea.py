"""``edge decode nmea FILE [--date YYYY-MM-DD]``: one JSON line per merged fix.

The output keys are ``Fix.to_json()``'s. A one-line summary of the counts goes to
stderr. When no date is given and the file sits in a drive directory, the ``date`` of
its ``drive.toml`` dates GGA-only streams. Exit 0, or 2 when the file or date is bad.
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


def main(path: Path, *, date: str | None, out: TextIO) -> int:
    day: dt.date | None = None
    if date is not None:
        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            print(f"edge decode nmea: --date must be YYYY-MM-DD, got {date!r}", file=sys.stderr)
            return 2
    else:
        day = drive_date(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        print(f"edge decode nmea: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    decoder = NmeaDecoder(date=day)
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
        return 2
    stats = decoder.stats
    parts = [f"{stats.get(key, 0)} {label}" for key, label in _SUMMARY_KEYS]
    print(f"{path.name}: " + ", ".join(parts), file=sys.stderr)
    return 0
