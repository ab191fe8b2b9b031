"""One python-can bus for the CAN source: open it, read it on the event loop, keep the
frames the decoder wants in a bounded queue, and say why the bus is lost.

Reading happens on the event loop: when the bus has a file descriptor (socketcan, slcan's
serial port) ``loop.add_reader`` wakes us and we drain ``bus.recv(0)``; buses without one
(the in-process virtual bus) are read by one thread blocked in ``recv(timeout)`` that
hands frames to the loop. Only the frame IDs the decoder needs pass: kernel filters on
socketcan; elsewhere (slcan, virtual) a set lookup drops the others before they are
queued (python-can's own software filter would also drop error frames).

Between reading and decoding sits a bounded queue of ``config.queue_max`` frames. Policy
when it is full: **drop the oldest frame** and count it (``dropped``): for speed the
newest frame is the one worth having, and a burst can never grow memory or latency.

Error frames are counted and skipped; bus-off, a failed read and a vanished adapter end
the session (``serve`` returns the reason; the source reopens). python-can's
``ValueError`` (or ``IndexError``, for a truncated line) out of ``recv()`` on a malformed
slcan line is counted and reading goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from edge.config import CanConfig

log = structlog.get_logger()

CAN_ERR_BUSOFF = 0x00000040
DRAIN_PER_WAKEUP = 256  # frames read per readiness callback before yielding the loop

Frame = tuple[int, bytes, float, float]  # arbitration_id, data, bus time, monotonic
Fault = Callable[[str, str], None]  # (kind, message): logged once per kind, then debug


class BusReader:
    """The bus side of the CAN source: ``open()`` a bus, ``serve(bus, ...)`` it until it
    is lost, ``close(bus)``. Frames it keeps wait in ``queue``; ``wake`` is set when one
    arrives. Counters survive reopening."""

    def __init__(self, config: CanConfig, *, wanted: frozenset[int], extended: bool,
                 filters: list[dict[str, Any]], fault: Fault,
                 clock: Callable[[], float] | None = None,
                 every_1024: Callable[[], None] | None = None) -> None:
        self.config = config
        self._wanted = wanted
        self._extended = extended
        self._filters = filters
        self._fault = fault
        self._clock = clock  # None: bus timestamps and time.monotonic(); sim: its clock
        self._every_1024 = every_1024 or (lambda: None)
        self.received = 0  # every frame read from the bus, wanted or not
        self.queue: deque[Frame] = deque()
        self.wake = asyncio.Event()
        self._failure: asyncio.Future[str] | None = None
        self._fresh = False
        self.on_flow: Callable[[], None] = lambda: None  # first wanted frame of a session
        self.counters: dict[str, int] = {
            "frames": 0, "dropped": 0, "error_frames": 0, "bus_off": 0, "remote": 0,
            "malformed": 0,
        }

    def where(self) -> str:
        return f"{self.config.interface}:{self.config.channel}"

    def bus_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        kwargs: dict[str, Any] = {"interface": cfg.interface, "channel": cfg.channel}
        if cfg.interface == "socketcan":
            # kernel filters: unwanted frames never wake us (error frames still come,
            # through CAN_RAW_ERR_FILTER). Elsewhere python-can would filter in Python
            # *and* drop error frames, so we filter ourselves in push().
            kwargs["can_filters"] = self._filters
            kwargs["fd"] = cfg.fd  # bitrate is set by `ip link`, not by the socket
        elif cfg.interface == "slcan":
            kwargs["bitrate"] = cfg.bitrate
            kwargs["sleep_after_open"] = cfg.slcan_open_delay_s
        elif cfg.interface == "virtual":
            kwargs["receive_own_messages"] = False
        return kwargs

    async def open(self) -> Any:
        import can  # python-can is imported only when a bus is actually opened

        kwargs = self.bus_kwargs()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, lambda: can.Bus(**kwargs))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # the open finishes in its thread: close what it opens
            def _late(f: asyncio.Future[Any]) -> None:
                if not f.cancelled() and f.exception() is None:
                    self.close(f.result())

            fut.add_done_callback(_late)
            raise

    def close(self, bus: Any) -> None:
        try:
            bus.shutdown()
        except Exception as exc:  # closing a vanished adapter fails; it is closed anyway
            log.debug("can.close_failed", reason=repr(exc))

    def fail(self, reason: str) -> None:
        """End the current session (from the loop): ``serve`` returns ``reason``."""
        fut = self._failure
        if fut is not None and not fut.done():
            fut.set_result(reason)

    async def serve(self, bus: Any, tasks: Sequence[Awaitable[None]]) -> str:
        """Read ``bus`` while ``tasks`` (the decoder, the OBD poller) run; the reason the
        bus was lost. The tasks are cancelled when it is."""
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        self.queue.clear()
        self.wake = asyncio.Event()
        self._fresh = True
        stop_reading = self._start(bus, loop)
        running = [asyncio.ensure_future(t) for t in tasks]
        try:
            return await self._failure
        finally:
            stop_reading()
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self._failure = None

    # ------------------------------------------------------------------ frames in
    def push(self, msg: Any, mono: float) -> None:
        c = self.counters
        if msg.is_error_frame:
            c["error_frames"] += 1
            if msg.arbitration_id & CAN_ERR_BUSOFF:
                c["bus_off"] += 1
                self.fail("bus-off")
            else:
                self._fault("error_frame", f"error frame 0x{msg.arbitration_id:08X}")
            return
        if msg.arbitration_id not in self._wanted or msg.is_extended_id != self._extended:
            return  # a frame the kernel filter would have dropped (slcan, virtual)
        if msg.is_remote_frame:
            c["remote"] += 1
            return
        c["frames"] += 1
        if self._fresh:
            self._fresh = False
            self.on_flow()  # frames flow: the next fault starts from a short delay
        q = self.queue
        if len(q) >= self.config.queue_max:
            q.popleft()
            c["dropped"] += 1
            if c["dropped"] == 1:
                self._fault("queue_full", f"queue of {self.config.queue_max} full: "
                            "dropping oldest")
        ts = float(msg.timestamp) if self._clock is None else self._clock()
        q.append((msg.arbitration_id, bytes(msg.data), ts, mono))
        self.wake.set()

    def _push_many(self, batch: list[tuple[Any, float]]) -> None:
        for msg, mono in batch:
            self.push(msg, mono)

    def _malformed(self, exc: Exception) -> None:
        self.counters["malformed"] += 1
        self._fault("malformed", f"malformed frame from {self.where()}: {exc}")

    def _count(self) -> None:
        self.received += 1
        if not self.received & 1023:
            self._every_1024()

    def _on_readable(self, bus: Any) -> None:
        mono = time.monotonic() if self._clock is None else self._clock()
        for _ in range(DRAIN_PER_WAKEUP):
            try:
                msg = bus.recv(0)
            except (ValueError, IndexError) as exc:  # python-can on a malformed slcan line
                self._malformed(exc)
                continue
            except Exception as exc:
                self.fail(f"read failed: {exc}")
                return
            if msg is None:
                return
            self._count()
            self.push(msg, mono)

    def _start(self, bus: Any, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        fd = -1
        with contextlib.suppress(Exception):
            fd = int(bus.fileno())
        if fd < 0:
            return self._start_thread(bus, loop)
        loop.add_reader(fd, self._on_readable, bus)

        def remove() -> None:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)

        return remove

    def _start_thread(self, bus: Any, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        stop = threading.Event()
        wanted, extended, clock = self._wanted, self._extended, self._clock

        def hand_over(batch: list[tuple[Any, float]]) -> bool:
            if batch:
                try:
                    loop.call_soon_threadsafe(self._push_many, batch)
                except RuntimeError:  # loop closed
                    return False
            return True

        def reader() -> None:
            # Buses without a file descriptor (virtual, some vendor drivers): a thread
            # reads, drops the IDs we do not need right there -- before they cost the
            # event loop anything, as a kernel filter would -- and hands the rest over
            # in batches of what arrived together (one loop wake-up per batch).
            while not stop.is_set():
                batch: list[tuple[Any, float]] = []
                try:
                    msg = bus.recv(0.1)
                    while msg is not None:
                        self._count()
                        if msg.is_error_frame or (msg.arbitration_id in wanted
                                                  and msg.is_extended_id == extended):
                            batch.append((msg, time.monotonic() if clock is None
                                          else clock()))
                            if len(batch) >= DRAIN_PER_WAKEUP:
                                break
                        msg = bus.recv(0)
                except (ValueError, IndexError) as exc:
                    if not hand_over(batch):
                        return
                    loop.call_soon_threadsafe(self._malformed, exc)
                    continue
                except Exception as exc:
                    hand_over(batch)
                    if not stop.is_set():
                        loop.call_soon_threadsafe(self.fail, f"read failed: {exc}")
                    return
                if not hand_over(batch):
                    return

        thread = threading.Thread(target=reader, name=f"can-read-{self.config.channel}",
                                  daemon=True)
        thread.start()

        def stop_thread() -> None:
            stop.set()
            thread.join(timeout=1.0)

        return stop_thread
