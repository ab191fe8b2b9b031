"""Serial GNSS source: NMEA bytes from a receiver -> merged fixes, on the event loop.

The port is opened with pyserial (it sets baud and raw mode) and read without blocking
through ``loop.add_reader`` on its file descriptor, so a USB receiver, a UART and a pty
(the simulator, the tests) are read the same way. Framing and merging are
``edge.core.nmea``'s.

When the port cannot be opened, vanishes, reports EOF or an I/O error (a receiver
unplugged: the kernel returns EIO / ENODEV), the source logs it (WARNING the first time,
DEBUG while it keeps failing), counts it, flushes the pending epoch, closes the port and
reopens it after a capped, jittered exponential backoff (``reopen_max_s``). The backoff
resets once bytes flow again. Re-resolving the path on each attempt is what makes a
replug work: udev's ``/dev/serial/by-id/...`` symlink (or a test's symlink) points to
the new device node. ``run`` never raises except ``CancelledError``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial
import structlog

from edge import BUILD_DATE
from edge.config import GnssConfig
from edge.core.backoff import Backoff
from edge.core.nmea import GPS_ROLLOVER_2019, FixAssembler, NmeaDecoder
from edge.errors import GnssError
from edge.logconf import Once
from edge.model import Fix

log = structlog.get_logger()

READ_SIZE = 4096
BACKOFF_BASE_S = 0.2
# Counters whose first increment is worth one log line (the reason of bad input).
_BAD_INPUT = ("bad_checksum", "parse_error", "unknown", "framer_garbage_bytes",
              "framer_too_long", "framer_aborted", "framer_restarts", "framer_binary_bad",
              "jumps_rejected", "rollover_corrected", "late_sentences")


NTP_SYNCED_FLAG = Path("/run/systemd/timesync/synchronized")  # systemd-timesyncd's


def host_clock_reference(now: float | None = None) -> tuple[dt.date | None, str]:
    """The host clock's date when it is plausible (NTP-synchronised, or not before the
    build date), with how that was decided; (None, why not) otherwise."""
    day = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC).date()
    if NTP_SYNCED_FLAG.exists():
        return day, "host clock (NTP-synchronised)"
    if day >= dt.date.fromisoformat(BUILD_DATE):
        return day, f"host clock (not before the build date {BUILD_DATE})"
    return None, f"host clock {day} is before the build date {BUILD_DATE}: not trusted"


def _default_assembler(config: GnssConfig, clock: Callable[[], float] | None = None
                       ) -> FixAssembler:
    date = dt.date.fromisoformat(config.date) if config.date else None
    if clock is None:
        reference, why = host_clock_reference()
    else:  # a clock handed in (``edge sim``: the replayed drive's) is the reference
        reference = dt.datetime.fromtimestamp(clock(), dt.UTC).date()
        why = "the clock given to the daemon"
    log.debug("gnss.rollover_reference", reference=str(reference), source=why)
    # Without a plausible host clock, a date before the last rollover (2019-04-07) is a
    # receiver with the week-number bug: live, no receiver can be before it.
    return FixAssembler(date=date, max_hdop=config.max_hdop,
                        max_jump_mps=config.max_jump_mps,
                        confirm_fixes=config.confirm_fixes, reference_date=reference,
                        rollover_floor=GPS_ROLLOVER_2019)


class GnssSource:
    """Read fixes from ``config.port`` until cancelled. ``health()`` is cheap."""

    def __init__(self, config: GnssConfig, *, assembler: FixAssembler | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        if not config.port:
            raise GnssError("gnss.port is not set")
        self.config = config
        self._clock = clock or time.time  # the host's (``edge sim``: the drive's)
        self._decoder = NmeaDecoder(assembler or _default_assembler(config, clock))
        # ``edge sim``: durations on the drive's clock too (a fix's mono is its GNSS time,
        # as in a replay), so the daemon's time mapping does not depend on the replay speed
        self._mono: Callable[[], float] = time.monotonic
        if clock is not None:
            self._mono = clock
            self._decoder.assembler.replay = True
        self._connected = False
        # consecutive failures: the reopen delay, and the port_lost line (WARNING once)
        self._backoff = Backoff(base_s=BACKOFF_BASE_S,
                                cap_s=max(config.reopen_max_s, BACKOFF_BASE_S))
        self._once = Once()
        self._counters: dict[str, int] = dict.fromkeys(
            ("opens", "open_failures", "disconnects", "bytes", "fixes_emitted",
             "emit_errors"), 0)
        self._last_fix_mono: float | None = None
        self._last_valid_mono: float | None = None
        self._skew_s: float | None = None
        self._last_error: str | None = None

    # -- public --------------------------------------------------------------------

    async def run(self, emit: Callable[[Fix], None]) -> None:
        port = self.config.port
        assert port is not None
        while True:
            try:
                ser = self._open(port)
            except GnssError as exc:
                self._counters["open_failures"] += 1
                self._lost(str(exc))
                await asyncio.sleep(self._backoff.next())
                continue
            try:
                reason = await self._read(ser, emit)
            finally:
                self._connected = False
                self._decoder.framer.reset()
                try:
                    ser.close()
                except Exception:  # closing a vanished device may fail: nothing to do
                    pass
            self._counters["disconnects"] += 1
            self._lost(reason)
            await asyncio.sleep(self._backoff.next())

    @property
    def bytes_read(self) -> int:
        """Bytes read from the port so far (``edge sim`` paces its writer on it)."""
        return self._counters["bytes"]

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "port": self.config.port,
            "connected": self._connected,
            "last_error": self._last_error,
            "last_fix_age_s": None if self._last_fix_mono is None
            else round(now - self._last_fix_mono, 3),
            "last_valid_fix_age_s": None if self._last_valid_mono is None
            else round(now - self._last_valid_mono, 3),
            # system clock minus GNSS time at the last valid fix (includes the ~0.1-0.5 s
            # the receiver takes to output an epoch); positive: the system clock is ahead
            "clock_skew_s": None if self._skew_s is None else round(self._skew_s, 3),
            **self._counters,
            **self._decoder.stats,
        }

    # -- internals -----------------------------------------------------------------

    def _open(self, port: str) -> serial.Serial:
        try:
            ser = serial.Serial(port=port, baudrate=self.config.baud, timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise GnssError(f"cannot open {port}: {exc}") from exc
        self._counters["opens"] += 1
        self._connected = True
        log.debug("gnss.opened", port=port, baud=self.config.baud)
        return ser

    async def _read(self, ser: serial.Serial, emit: Callable[[Fix], None]) -> str:
        """Read until the port is lost; return why."""
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()
        fd = ser.fileno()
        decoder = self._decoder

        def on_readable() -> None:
            try:
                data = os.read(fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if not lost.done():
                    lost.set_result(f"read error: {exc.strerror or exc}")
                loop.remove_reader(fd)
                return
            if not data:
                if not lost.done():
                    lost.set_result("end of file (device closed)")
                loop.remove_reader(fd)
                return
            if self._backoff.attempts:
                self._backoff.reset()
                self._once.clear("port")
                log.info("gnss.receiving", port=self.config.port)
            self._counters["bytes"] += len(data)
            self._deliver(decoder.feed(data, self._mono()), emit)

        loop.add_reader(fd, on_readable)
        try:
            reason = await lost
        finally:
            loop.remove_reader(fd)
        # the epoch in progress when the port went away is complete as far as we know
        self._deliver(decoder.flush(), emit)
        return reason

    def _deliver(self, fixes: list[Fix], emit: Callable[[Fix], None]) -> None:
        if fixes:
            now = time.monotonic()
            for fix in fixes:
                self._last_fix_mono = now
                if fix.valid and fix.time is not None:
                    self._last_valid_mono = now
                    self._skew_s = self._clock() - fix.time
                self._counters["fixes_emitted"] += 1
                try:
                    emit(fix)
                except Exception as exc:  # a consumer bug must not kill the source
                    self._counters["emit_errors"] += 1
                    if self._once.first("emit"):
                        log.error("gnss.emit_failed", error=repr(exc))
        stats = self._decoder.stats
        for key in _BAD_INPUT:  # the first of each kind: one line with its reason
            if stats.get(key, 0) and self._once.first(f"bad_input:{key}"):
                log.warning("gnss.bad_input", port=self.config.port, kind=key,
                            count=stats[key])

    def _lost(self, reason: str) -> None:
        self._last_error = reason
        self._once(log, "port", "gnss.port_lost", port=self.config.port, reason=reason,
                   attempt=self._backoff.attempts + 1)
