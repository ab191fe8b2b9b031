"""``edge report DRIVE --config FILE --out report.png``: draw a drive and its events.

The events come from replaying the drive through the engine with the config (the same
path as ``edge replay``); the drawing is ``sim.report.render`` (matplotlib, offline).
"""

from __future__ import annotations

import sys
from pathlib import Path

from edge.config import load_config
from edge.errors import ConfigError, EdgeError, ExitCode


def main(drive: Path, *, config: Path, out: Path) -> int:
    from edge.commands import out_refused

    if out_refused("edge report", out):
        return ExitCode.USAGE
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        print(f"edge report: invalid config {config}: {exc.field}: {exc.reason}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("edge report: needs matplotlib (pip install 'vehicle-edge[report]')",
              file=sys.stderr)
        return ExitCode.USAGE
    from sim.drive import DriveError
    from sim.report import main as report_main

    try:
        rc = report_main(drive, config=cfg, out=out,
                         warn=lambda m: print(f"edge report: warning: {m}", file=sys.stderr))
    except (DriveError, EdgeError) as exc:
        print(f"edge report: {drive}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as exc:
        print(f"edge report: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"edge report: wrote {out}", file=sys.stderr)
    return rc
