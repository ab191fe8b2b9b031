"""Replay a drive's merged timeline through device interfaces, in time.

NMEA goes into a ``PtySerial`` (the daemon's serial port); CAN goes into a ``CanSink``:
the fake USB slcan adapter of ``sim.slcan`` (a pty too) or python-can's in-process
virtual bus. Timing follows the recorded timestamps, scaled by ``rate`` (1.0 = real
time, 10.0 = ten times faster, None = as fast as the consumers take it); idle gaps
longer than ``max_gap_s`` are shortened to that; ``loop`` starts over at the end.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from sim.drive import Drive, iter_timeline, parse_candump
from sim.pty import PtySerial

log = structlog.get_logger()


class CanSink(Protocol):
    """Where replayed CAN frames go."""

    def send(self, arbitration_id: int, data: bytes, extended: bool = False) -> Any: ...


class BusCanSink:
    """A python-can bus as the replay's CAN output: ``virtual`` (in-process, for tests) or
    ``socketcan`` on a vcan interface where the host has one (``ip link add vcan0 type
    vcan``): the daemon then reads it exactly as it would read a car's bus."""

    def __init__(self, channel: str, *, interface: str = "virtual") -> None:
        import can

        self.channel = channel
        self.interface = interface
        if interface == "virtual":
            self._bus = can.Bus(interface="virtual", channel=channel,
                                receive_own_messages=False)
        else:
            self._bus = can.Bus(interface=interface, channel=channel)
        self._can = can
        self.unplugged = False

    def send(self, arbitration_id: int, data: bytes, extended: bool = False) -> None:
        if self.unplugged:
            return
        self._bus.send(self._can.Message(arbitration_id=arbitration_id, data=data,
                                         is_extended_id=extended))

    def is_open(self) -> bool:
        """True once someone else listens (virtual: another bus joined the channel; a
        frame sent before that is lost, as on a real bus with nobody attached)."""
        if self.interface != "virtual":
            return True
        from can.interfaces import virtual

        with virtual.channels_lock:
            return len(virtual.channels.get(self.channel, [])) > 1

    def send_error(self) -> None:
        if not self.unplugged:
            self._bus.send(self._can.Message(is_error_frame=True, data=bytes(8)))

    def unplug(self) -> None:
        self.unplugged = True

    def replug(self) -> None:
        self.unplugged = False

    def close(self) -> None:
        self._bus.shutdown()


class VirtualCanSink(BusCanSink):
    """python-can's in-process virtual bus (``interface = "virtual"`` in the config)."""

    def __init__(self, channel: str) -> None:
        super().__init__(channel, interface="virtual")


@dataclass(slots=True)
class ReplayStats:
    nmea_lines: int = 0
    can_frames: int = 0
    can_errors: int = 0
    can_skipped: int = 0  # error frames a sink cannot carry, bad lines, unplugged time
    unplugs: int = 0
    loops: int = 0
    drive_s: float = 0.0  # timeline seconds covered (before gap shortening)
    wall_s: float = 0.0


class Replayer:
    """``await Replayer(drive, nmea=pty, can=sink, rate=1.0).run()``."""

    def __init__(
        self,
        drive: Drive,
        *,
        nmea: PtySerial | None = None,
        can: CanSink | None = None,
        rate: float | None = 1.0,
        max_gap_s: float | None = None,
        loop: bool = False,
        progress: Callable[[float, float], None] | None = None,
        yield_every: int = 64,
        wait_reader_s: float | None = None,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None for as fast as possible)")
        self.drive = drive
        self.nmea = nmea
        self.can = can
        self.rate = rate
        self.max_gap_s = max_gap_s
        self.loop = loop
        self.progress = progress
        self.yield_every = yield_every
        self.wait_reader_s = wait_reader_s  # after the first NMEA line: wait for a reader
        # True once the reader has the serial port open (``edge sim``: the daemon's GNSS
        # source): nothing is written before, because opening a port flushes its input
        # (pyserial's open does) -- bytes written earlier would be lost, the drive's start
        self.reader_ready: Callable[[], bool] | None = None
        self.stats = ReplayStats()
        self._span: tuple[float, float] | None = None
        self._t: float | None = None  # timeline time of the last item delivered
        self._t_wall = 0.0

    def clock(self) -> float:
        """The drive's clock: the timeline time of the last item delivered (advancing
        with the wall clock times ``rate`` in between). ``edge sim`` hands it to the
        daemon as its wall clock, so a 2018 drive is lived in 2018: CAN and GNSS of the
        recording meet in one timeline whatever the host's date."""
        if self._t is None:
            return self.span()[0]
        if self.rate is None:
            return self._t
        return self._t + (time.monotonic() - self._t_wall) * self.rate

    def span(self) -> tuple[float, float]:
        """(first, last) timeline time of the drive."""
        if self._span is None:
            first = last = None
            for t, _, _ in iter_timeline(self.drive):
                if first is None:
                    first = t
                last = t
            self._span = (first or 0.0, last or 0.0)
        return self._span

    async def _send_can(self, line: bytes) -> None:
        assert self.can is not None
        frame = parse_candump(line)
        if frame is None:
            self.stats.can_skipped += 1
            return
        if frame.error:
            send_error = getattr(self.can, "send_error", None)
            if send_error is None:
                self.stats.can_skipped += 1
                return
            result = send_error()
            self.stats.can_errors += 1
        else:
            result = self.can.send(frame.arbitration_id, frame.data, frame.extended)
            if inspect.isawaitable(result):
                result = await result
            if result is False:
                # the adapter's buffer is full: wait for the host to read (never drop a
                # frame because the replay outran the daemon)
                for _ in range(2000):
                    if not self._sink_open():
                        break
                    await asyncio.sleep(0.001)
                    result = self.can.send(frame.arbitration_id, frame.data, frame.extended)
                    if result is not False:
                        break
            if result is False:
                self.stats.can_skipped += 1
            else:
                self.stats.can_frames += 1
            return
        if inspect.isawaitable(result):
            await result

    def _sink_open(self) -> bool:
        opened = getattr(self.can, "opened", None)
        plugged = getattr(self.can, "plugged", True)
        return bool(plugged) and (opened is None or opened.is_set())

    async def _control(self, what: bytes) -> None:
        if self.can is None:
            return
        fn = getattr(self.can, what.decode(), None)
        if fn is None:
            log.warning("sim.replay_control_unsupported", action=what.decode(),
                        sink=type(self.can).__name__)
            return
        fn()
        if what == b"unplug":
            self.stats.unplugs += 1
        elif self.rate is None or self.rate > 1.0:
            # faster than life: give the host its real reopen time after a replug
            await self.wait_open()

    async def wait_open(self, timeout_s: float = 15.0) -> bool:
        """Wait until the host has opened the CAN sink (sinks without the notion: True)."""
        opened = getattr(self.can, "opened", None)  # slcan: a threading.Event
        is_open = getattr(self.can, "is_open", None)  # python-can buses
        if opened is not None:
            check = opened.is_set
        elif is_open is not None:
            check = is_open
        else:
            return True
        deadline = time.monotonic() + timeout_s
        # set by another thread (or process): poll it
        while not check() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return bool(check())

    async def _wait_reader_ready(self) -> None:
        ready = self.reader_ready
        if ready is None or self.nmea is None:
            return
        deadline = time.monotonic() + (self.wait_reader_s or 15.0)
        while not ready():
            if time.monotonic() >= deadline:
                log.warning("sim.replay_no_reader", path=self.nmea.path,
                            waited_s=self.wait_reader_s)
                return
            await asyncio.sleep(0.01)

    async def _once(self) -> None:
        if self.stats.loops == 0:
            await self._wait_reader_ready()
        first, last = self.span()
        wall0 = time.monotonic()
        skipped = 0.0  # timeline seconds cut out of long idle gaps
        prev: float | None = None
        n = 0
        last_progress = 0.0
        for t, kind, data in iter_timeline(self.drive, control=True):
            if prev is not None and self.max_gap_s is not None and t - prev > self.max_gap_s:
                skipped += t - prev - self.max_gap_s
            prev = t
            if self.rate is not None:
                due = wall0 + (t - first - skipped) / self.rate
                delay = due - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)
                    n = 0
            n += 1
            if n >= self.yield_every:
                n = 0
                await asyncio.sleep(0)
            self._t, self._t_wall = t, time.monotonic()
            if kind == "gnss":
                if self.nmea is not None:
                    await self.nmea.write(data + b"\r\n")
                    self.stats.nmea_lines += 1
                    if self.stats.nmea_lines == 1 and self.wait_reader_s:
                        t_wait = time.monotonic()
                        if not await self.nmea.wait_drained(self.wait_reader_s):
                            log.warning("sim.replay_no_reader", path=self.nmea.path,
                                        waited_s=self.wait_reader_s)
                        wall0 += time.monotonic() - t_wait
            elif kind == "can":
                if self.can is not None:
                    await self._send_can(data)
            elif kind == "ctl":
                t_ctl = time.monotonic()
                await self._control(data)
                wall0 += time.monotonic() - t_ctl  # the wait is not drive time
            if self.progress is not None:
                now = time.monotonic()
                if now - last_progress >= 0.5:
                    last_progress = now
                    self.progress(t - first, last - first)
        self.stats.drive_s += last - first
        if self.progress is not None:
            self.progress(last - first, last - first)

    async def run(self) -> None:
        start = time.monotonic()
        try:
            while True:
                await self._once()
                self.stats.loops += 1
                if not self.loop:
                    break
        finally:
            self.stats.wall_s = time.monotonic() - start
            log.info("sim.replay_done", drive=str(self.drive.path), nmea=self.stats.nmea_lines,
                     can=self.stats.can_frames, can_errors=self.stats.can_errors,
                     wall_s=round(self.stats.wall_s, 3))
