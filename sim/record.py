"""Capture a real gateway's GNSS serial stream and CAN bus into a drive directory.

``gnss.nmea`` gets the serial bytes exactly as the receiver sent them (binary noise
included: that is what a replay should reproduce); ``can.log`` gets candump -L lines
with the bus timestamps. ``drive.toml`` records the channels and, when the receiver
gave a valid RMC, the offset between GNSS UTC and this machine's clock, so a
recording made on a Pi whose clock is years off (no RTC) still replays in sync.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from edge.private import PrivacyError, private_dir, private_file, write_private
from sim.drive import format_candump, nmea_time_fields

log = structlog.get_logger()


class RecordError(Exception):
    """The capture cannot start (names the device or the directory)."""


@dataclass(slots=True)
class RecordStats:
    serial_bytes: int = 0
    nmea_lines: int = 0
    can_frames: int = 0
    can_errors: int = 0
    clock_offset_s: float | None = None  # GNSS UTC - system clock, from the first RMC
    date: dt.date | None = None
    problems: list[str] = field(default_factory=list)


class Recorder:
    """Threads reading the serial port and the CAN bus into ``out`` until ``stop()``."""

    def __init__(self, out: Path, *, serial: str | None, baud: int = 9600,
                 can_interface: str | None = None, can_channel: str | None = None,
                 can_name: str = "can0") -> None:
        if serial is None and can_interface is None:
            raise RecordError("nothing to record: give a serial port and/or a CAN interface")
        self.out = Path(out)
        self.serial_port = serial
        self.baud = baud
        self.can_interface = can_interface
        self.can_channel = can_channel
        self.can_name = can_name
        self.stats = RecordStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ser: Any = None
        self._bus: Any = None

    def start(self) -> None:
        for name in ("gnss.nmea", "can.log"):
            if (self.out / name).exists():
                raise RecordError(f"{self.out / name} exists: record into a new directory")
        try:  # a recording is where the car went: private (0700 folder, 0600 files)
            private_dir(self.out)
        except (PrivacyError, OSError) as exc:
            raise RecordError(str(exc)) from exc
        if self.serial_port is not None:
            import serial

            try:
                self._ser = serial.Serial(self.serial_port, baudrate=self.baud, timeout=0.1)
            except (serial.SerialException, OSError, ValueError) as exc:
                raise RecordError(f"cannot open serial port {self.serial_port}: {exc}") from exc
        if self.can_interface is not None:
            import can

            try:
                self._bus = can.Bus(interface=self.can_interface,
                                    channel=self.can_channel or self.can_name)
            except (can.CanError, OSError, ValueError, ImportError) as exc:
                if self._ser is not None:
                    self._ser.close()
                raise RecordError(f"cannot open CAN {self.can_interface}:"
                                  f"{self.can_channel}: {exc}") from exc
        if self._ser is not None:
            self._threads.append(threading.Thread(target=self._serial_loop, name="record-serial",
                                                  daemon=True))
        if self._bus is not None:
            self._threads.append(threading.Thread(target=self._can_loop, name="record-can",
                                                  daemon=True))
        for t in self._threads:
            t.start()

    def _serial_loop(self) -> None:
        import serial

        pending = b""
        private_file(self.out / "gnss.nmea")  # 0600 before the first byte
        with (self.out / "gnss.nmea").open("wb") as fh:
            while not self._stop.is_set():
                try:
                    chunk = self._ser.read(4096)
                except (serial.SerialException, OSError) as exc:
                    self.stats.problems.append(f"serial: {exc}")
                    log.warning("record.serial_lost", port=self.serial_port, reason=str(exc))
                    break
                if not chunk:
                    continue
                now = time.time()
                fh.write(chunk)
                fh.flush()
                self.stats.serial_bytes += len(chunk)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                pending = pending[-4096:]
                for line in lines:
                    self.stats.nmea_lines += 1
                    self._clock_from(line.rstrip(b"\r"), now)
        self._ser.close()

    def _clock_from(self, line: bytes, now: float) -> None:
        if self.stats.clock_offset_s is not None or line[3:6] != b"RMC" or b",A," not in line:
            return
        tod, day = nmea_time_fields(line)
        if tod is None or day is None:
            return
        utc = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() + tod
        self.stats.clock_offset_s = round(utc - now, 3)
        self.stats.date = day

    def _can_loop(self) -> None:
        import can

        private_file(self.out / "can.log")  # 0600 before the first byte
        with (self.out / "can.log").open("w", encoding="ascii") as fh:
            while not self._stop.is_set():
                try:
                    msg = self._bus.recv(timeout=0.1)
                except (can.CanError, OSError) as exc:
                    self.stats.problems.append(f"can: {exc}")
                    log.warning("record.can_lost", channel=self.can_channel, reason=str(exc))
                    break
                if msg is None:
                    continue
                ts = msg.timestamp or time.time()
                line = format_candump(ts, self.can_name, msg.arbitration_id, bytes(msg.data),
                                      extended=msg.is_extended_id, error=msg.is_error_frame)
                fh.write(line.decode() + "\n")
                if msg.is_error_frame:
                    self.stats.can_errors += 1
                else:
                    self.stats.can_frames += 1
        self._bus.shutdown()

    def request_stop(self) -> None:
        """Ask the capture to end (safe from a signal handler); ``stop()`` finishes it."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (or ``timeout``); True when stopped."""
        return self._stop.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        self._write_meta()

    def _write_meta(self) -> None:
        lines = ["# written by edge record"]
        if self.stats.date is not None:
            lines.append(f'date = "{self.stats.date.isoformat()}"')
        off = self.stats.clock_offset_s
        if off is not None and abs(off) > 2.0 and self._bus is not None:
            # the system clock stamped can.log; GNSS says it was this far off
            lines.append(f"can_time_offset_s = {off!r}")
        recorded = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        lines.append(f"notes = {json.dumps(f'recorded {recorded} (system clock)')}")
        lines += ["", "[channels]"]
        if self.can_interface is not None:
            lines.append(f"can = {json.dumps(self.can_name)}")
            lines.append(f"can_source = {json.dumps(f'{self.can_interface}:{self.can_channel}')}")
        if self.serial_port is not None:
            lines.append(f"gnss = {json.dumps(self.serial_port)}")
        write_private(self.out / "drive.toml", ("\n".join(lines) + "\n").encode())
