"""``edge replay``: a drive through the pure engine (``edge.replay``), every would-be
publish to a file, a summary on stderr."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO

from edge.config import Config
from edge.errors import EdgeError, ExitCode
from edge.replay import replay_events


def main(drive: Path, cfg: Config, *, out: Path) -> int:
    from edge.uplinks.file import format_line

    started = time.process_time()
    wall = time.perf_counter()
    stats: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    from edge.commands import out_refused

    if out_refused("edge replay", out):
        return ExitCode.USAGE
    fh: IO[str]
    try:
        fh = sys.stdout if str(out) == "-" else out.open("w", encoding="utf-8")
    except OSError as exc:
        print(f"edge replay: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.USAGE

    def warn(message: str) -> None:
        print(f"edge replay: warning: {message}", file=sys.stderr)

    try:
        for env in replay_events(drive, cfg, stats=stats, warn=warn):
            kinds[env.type] += 1
            fh.write(format_line(env.topic, env.to_bytes()))
    except (EdgeError, OSError) as exc:
        print(f"edge: replay {drive}: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    finally:
        if fh is not sys.stdout:
            fh.close()
    n = sum(kinds.values())
    detail = " ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
    print(
        f"replay {drive}: {stats['fixes']} fixes, {stats['speed_samples']} speed samples"
        + (f", {stats['signal_samples']} engine signal samples" if stats["signal_samples"]
           else "")
        + f" -> {n} messages ({detail}) in {time.perf_counter() - wall:.2f} s "
        f"({time.process_time() - started:.2f} s CPU)",
        file=sys.stderr,
    )
    return ExitCode.OK
