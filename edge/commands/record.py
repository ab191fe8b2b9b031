"""``edge record --out DRIVE [--serial PORT] [--can-interface I --can-channel C]``.

Captures a real gateway's GNSS serial stream and CAN bus into the drive format (see
``sim.record``) until Ctrl-C / SIGTERM or ``--duration`` seconds.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from edge.errors import ExitCode


def main(out: Path, *, serial: str | None, baud: int, can_interface: str | None,
         can_channel: str | None, duration_s: float | None) -> int:
    from sim.record import Recorder, RecordError

    if can_interface is not None and not can_channel:
        print("edge record: --can-channel is required with --can-interface", file=sys.stderr)
        return ExitCode.USAGE
    if not Path(out).absolute().parent.is_dir():  # the drive folder is made, not its parents
        print(f"edge record: cannot write {out}: the folder {Path(out).absolute().parent} "
              f"does not exist (create it first)", file=sys.stderr)
        return ExitCode.USAGE
    try:
        rec = Recorder(out, serial=serial, baud=baud, can_interface=can_interface,
                       can_channel=can_channel)
        rec.start()
    except RecordError as exc:
        print(f"edge record: {exc}", file=sys.stderr)
        return ExitCode.USAGE

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, frame: FrameType | None) -> None:
            rec.request_stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    start = time.monotonic()
    print(f"edge record: recording into {out} "
          + (f"for {duration_s:g} s" if duration_s else "until Ctrl-C"), file=sys.stderr)
    try:
        while not rec.wait(0.2):
            if duration_s is not None and time.monotonic() - start >= duration_s:
                break
    finally:
        rec.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    s = rec.stats
    print(f"edge record: {out}: {s.nmea_lines} NMEA lines ({s.serial_bytes} bytes), "
          f"{s.can_frames} CAN frames, {s.can_errors} error frames in "
          f"{time.monotonic() - start:.1f} s"
          + (f"; clock offset {s.clock_offset_s:+.3f} s" if s.clock_offset_s is not None else ""),
          file=sys.stderr)
    for p in s.problems:
        print(f"edge record: {p}", file=sys.stderr)
    return ExitCode.OK
