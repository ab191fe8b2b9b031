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
import threading
import time
from collections import deque
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
        self.written_units = 0  # frames sent (with pending(): the listener's read position)

    @property
    def plugged(self) -> bool:
        return not self.unplugged

    def send(self, arbitration_id: int, data: bytes, extended: bool = False) -> bool:
        if self.unplugged:
            return False
        self._bus.send(self._can.Message(arbitration_id=arbitration_id, data=data,
                                         is_extended_id=extended))
        self.written_units += 1
        return True

    def pending(self) -> int:
        """Frames sent that a listener has not received yet (virtual: the fullest of the
        other buses' queues; a real interface has its own flow control: 0)."""
        if self.interface != "virtual":
            return 0
        from can.interfaces import virtual

        with virtual.channels_lock:
            queues = list(virtual.channels.get(self.channel, []))
        own = getattr(self._bus, "queue", None)
        return max((q.qsize() for q in queues if q is not own), default=0)

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
        nmea_lead: int | None = None,
        can_lead: int | None = None,
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
        # how far the writer may run ahead of the reader (the sink's ``pending()``: bytes
        # for a pty, frames for a virtual bus); None: only the sink's buffer limits it.
        # Kept small, the reader lives the replay's clock a fraction of a second behind.
        self.leads: dict[str, int | None] = {"gnss": nmea_lead, "can": can_lead}
        # what the reader has taken of each stream, when the reader can tell (``edge
        # sim``: the daemon's GNSS source's bytes and CAN source's frames): exact, where a
        # pty's FIONREAD misses what the kernel has not handed to the line discipline yet
        self.readers: dict[str, Callable[[], int]] = {}
        self.stats = ReplayStats()
        self._span: tuple[float, float] | None = None
        self._t: float | None = None  # timeline time of the last item delivered
        self._t_wall = 0.0
        # per stream, (units written up to the end of an item, its time): with the sink's
        # pending() they tell the time of the last item the reader has taken
        self._marks: dict[str, deque[tuple[int, float]]] = {"gnss": deque(), "can": deque()}
        self._read_t: dict[str, float | None] = {"gnss": None, "can": None}
        self._clock_lock = threading.Lock()

    def can_clock(self) -> float:
        """The drive's clock as the CAN reader lives it (the time of the last frame it
        took): what the daemon stamps CAN samples with under ``edge sim``."""
        return self.clock(only="can")

    def clock(self, only: str | None = None) -> float:
        """The drive's clock as the reader lives it: the timeline time of the last item
        delivered (advancing with the wall clock times ``rate`` in between), held back
        to the last item a reader has taken while a stream has unread items. ``edge sim``
        hands it to the daemon as its clock, so a 2018 drive is lived in 2018 and CAN
        and GNSS of the recording meet in one timeline whatever the host's date or the
        replay's speed. Thread-safe (the CAN source may read it from its thread)."""
        if self._t is None:
            return self.span()[0]
        t = self._t
        if self.rate is not None:
            t += (time.monotonic() - self._t_wall) * self.rate
        with self._clock_lock:
            for kind, marks in self._marks.items():
                if only is not None and kind != only:
                    continue
                if not marks:
                    continue
                reader = self.readers.get(kind)
                if reader is not None:
                    read = reader()
                else:
                    sink = self.nmea if kind == "gnss" else self.can
                    pending = getattr(sink, "pending", None)
                    if pending is None:
                        continue
                    read = int(getattr(sink, "written_units", 0)) - int(pending())
                while marks and marks[0][0] <= read:
                    self._read_t[kind] = marks.popleft()[1]
                if marks:  # unread items: the reader is at its last taken one
                    taken = self._read_t[kind]
                    t = min(t, taken if taken is not None else marks[0][1])
        return t

    def _written(self, kind: str) -> int:
        """Units of ``kind`` delivered: NMEA bytes, CAN frames (data and error)."""
        if kind == "gnss":
            return self.nmea.written_bytes if self.nmea is not None else 0
        return self.stats.can_frames + self.stats.can_errors

    def pending(self, kind: str) -> int | None:
        """Units of ``kind`` written that the reader has not taken (None: unknown)."""
        reader = self.readers.get(kind)
        if reader is not None:
            return max(0, self._written(kind) - reader())
        sink = self.nmea if kind == "gnss" else self.can
        fn = getattr(sink, "pending", None)
        return None if fn is None else int(fn())

    def _mark(self, kind: str, t: float) -> None:
        if kind in self.readers:
            units: object = self._written(kind)
        else:
            sink = self.nmea if kind == "gnss" else self.can
            units = getattr(sink, "written_units", None)
            if getattr(sink, "pending", None) is None:
                return
        if isinstance(units, int):
            with self._clock_lock:
                marks = self._marks[kind]
                marks.append((units, t))
                if len(marks) > 100_000:  # nobody reads: stop tracking, bounded memory
                    marks.popleft()

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

    async def _pace(self, kind: str) -> None:
        """Wait until the reader is at most ``leads[kind]`` behind. A reader that does
        not catch up within 5 s ends the pacing of that stream (said once)."""
        limit = self.leads[kind]
        behind = self.pending(kind)
        if behind is None or limit is None or behind <= limit:
            return
        deadline = time.monotonic() + 5.0
        while (behind := self.pending(kind) or 0) > limit:
            if time.monotonic() >= deadline:
                log.warning("sim.replay_reader_stalled", stream=kind, pending=behind,
                            reason="the reader stopped reading; pacing off for this stream")
                self.leads[kind] = None
                return
            await asyncio.sleep(0.0005)

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
            if self.leads.get(kind) is not None:
                await self._pace(kind)
            self._t, self._t_wall = t, time.monotonic()
            if kind == "gnss":
                if self.nmea is not None:
                    await self.nmea.write(data + b"\r\n")
                    self._mark("gnss", t)
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
                    self._mark("can", t)
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

    async def _wait_taken(self, timeout_s: float = 30.0) -> None:
        """At the end: wait until the readers that can tell have taken everything (the
        drive's last lines are delivered, not left in a buffer when the run stops)."""
        deadline = time.monotonic() + timeout_s
        for kind in list(self.readers):
            while (self.pending(kind) or 0) > 0:
                if time.monotonic() >= deadline:
                    log.warning("sim.replay_not_taken", stream=kind, pending=self.pending(kind))
                    return
                await asyncio.sleep(0.005)

    async def run(self) -> None:
        start = time.monotonic()
        try:
            while True:
                await self._once()
                self.stats.loops += 1
                if not self.loop:
                    await self._wait_taken()
                    break
        finally:
            self.stats.wall_s = time.monotonic() - start
            log.info("sim.replay_done", drive=str(self.drive.path), nmea=self.stats.nmea_lines,
                     can=self.stats.can_frames, can_errors=self.stats.can_errors,
                     wall_s=round(self.stats.wall_s, 3))
