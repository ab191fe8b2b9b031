"""``edge decode can FILE --dbc DBC --signal MESSAGE.SIGNAL``: a CAN log -> speed JSON lines.

One line per decoded sample on ``out``: ``{"t": <log timestamp, epoch s>, "speed_kmh": x}``.
Any format python-can reads (candump -L .log takes the fast path; .asc, .blf, .trc, .csv,
...). A summary goes to stderr. Exit 0 on success, 2 on bad input (missing/unreadable log,
DBC or signal), with one clear line on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from edge.commands import reader_went_away
from edge.errors import ConfigError, ExitCode
from edge.model import SpeedSample
from edge.sources.canlog import LogStats, iter_log_speed
from edge.sources.dbc import speed_decoder


def main(path: Path, *, dbc: Path, signal: str, out: TextIO, err: TextIO | None = None) -> int:
    err = err if err is not None else sys.stderr
    path = Path(path)
    if not path.is_file():
        print(f"edge decode can: no such file: {path}", file=err)
        return ExitCode.USAGE
    try:
        decoder = speed_decoder(Path(dbc), signal)
    except ConfigError as exc:
        print(f"edge decode can: {exc}", file=err)
        return ExitCode.USAGE
    stats = LogStats()
    write = out.write
    try:
        for s in iter_log_speed(path, decoder, stats):
            if not isinstance(s, SpeedSample):
                continue
            write(json.dumps({"t": s.time, "speed_kmh": round(s.speed_kmh, 3)}) + "\n")
    except ValueError as exc:
        print(f"edge decode can: {exc}", file=err)
        return ExitCode.USAGE
    except BrokenPipeError:
        return reader_went_away()
    except OSError as exc:
        print(f"edge decode can: cannot read {path}: {exc.strerror or exc}", file=err)
        return ExitCode.USAGE
    d = decoder.stats
    summary = {
        "format": stats.format,
        "frames": stats.frames,
        "speed_frames": stats.wanted,
        "samples": stats.samples,
        "error_frames": stats.error_frames,
        "malformed": stats.malformed,
        "comments": stats.comments,
        "wrong_length": d.wrong_length,
        "checksum_errors": d.checksum_errors,
        "checksum": d.checksum,
        "invalid": d.invalid,
        "other_mux": d.other_mux,
    }
    if stats.truncated:
        summary["truncated"] = stats.truncated
    print("edge decode can: " + json.dumps(summary), file=err)
    problems = stats.problems()
    if problems:
        print(f"edge decode can: warning: {problems}", file=err)
    if stats.frames == 0:
        print(f"edge decode can: {path} holds no CAN frames", file=err)
        return ExitCode.USAGE
    return ExitCode.OK
