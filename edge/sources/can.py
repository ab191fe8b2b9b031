"""Vehicle speed from the CAN bus, through python-can (socketcan | slcan | virtual).

Reading happens on the event loop: when the bus has a file descriptor (socketcan, slcan's
serial port) ``loop.add_reader`` wakes us and we drain ``bus.recv(0)``; buses without one
(the in-process virtual bus) are read by one thread blocked in ``recv(timeout)`` that
hands frames to the loop. Only the frame IDs the decoder needs pass: kernel
filters on socketcan; elsewhere (slcan, virtual) a set lookup on the loop drops the others
before they are queued (python-can's own software filter would also drop error frames).

Between reading and decoding sits a bounded queue of ``config.queue_max`` frames. Policy
when it is full: **drop the oldest frame** and count it (``dropped``): for speed the newest
frame is the one worth having, and a burst can never grow memory or latency.

Faults never escape ``run()``: error frames are counted and skipped; bus-off, a vanished
adapter (slcan pty or USB gone), a failed open or send close the bus and reopen it with
capped, jittered exponential backoff (reset once frames flow again); python-can's
``ValueError`` (or ``IndexError``, for a truncated line) out of ``recv()`` on a malformed
slcan line is counted and reading goes on. Each kind of fault is logged at WARNING the
first time, at DEBUG after that.

OBD mode (``config.mode = "obd"``) polls PID 0x0D (and RPM/coolant when cheap) with
``edge.core.obd.ObdPoller``; the last RPM/coolant are in ``health()["obd"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from edge.config import CanConfig
from edge.core.backoff import Backoff
from edge.core.canspeed import FrameDecoder
from edge.core.obd import PID_SPEED, REQUEST_ID, ObdPoller
from edge.errors import ConfigError
from edge.model import Ignition, SpeedSample
from edge.sources.dbc import decoder_for

log = structlog.get_logger()

CAN_ERR_BUSOFF = 0x00000040
DRAIN_PER_WAKEUP = 256  # frames read per readiness callback before yielding the loop
DECODE_PER_SLICE = 512  # frames decoded before yielding the loop
SLCAN_BITRATES = frozenset(
    {10000, 20000, 50000, 100000, 125000, 250000, 500000, 750000, 1000000, 83300}
)

Frame = tuple[int, bytes, float, float]  # arbitration_id, data, bus time, monotonic


class CanSource:
    """Speed samples from a CAN bus. ``run(emit)`` until cancelled; ``health()`` anytime."""

    def __init__(self, config: CanConfig, *, decoder: FrameDecoder | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        if config.interface == "none":
            raise ConfigError("can.interface", "CAN is disabled ('none')")
        if config.interface == "slcan" and config.bitrate not in SLCAN_BITRATES:
            raise ConfigError(
                "can.bitrate",
                f"slcan adapters take {', '.join(str(b) for b in sorted(SLCAN_BITRATES))}",
            )
        self.config = config
        # None: bus timestamps and the monotonic clock; ``edge sim``: the drive's clock for
        # both (the sim's replay is the one clock, as a log's timestamps are in a replay)
        self._clock = clock
        self.received = 0  # every frame read from the bus, wanted or not (edge sim paces on it)
        self._speed_checked = False
        self._poller: ObdPoller | None = None
        self._decoder: FrameDecoder | None = None
        if config.mode == "obd":
            self._poller = ObdPoller(
                interval_s=config.obd_interval_s,
                timeout_s=config.obd_timeout_s,
                max_pids=config.obd_max_pids,
                backoff_max_s=config.reopen_max_s,
            )
        elif decoder is not None:
            self._decoder = decoder
        else:
            self._decoder = decoder_for(config)
        source = self._poller if self._poller is not None else self._decoder
        assert source is not None
        self._wanted: frozenset[int] = source.frame_ids
        self._extended: bool = source.extended
        self._queue: deque[Frame] = deque()
        self._wake: asyncio.Event | None = None
        self._failure: asyncio.Future[str] | None = None
        self._backoff = Backoff(base_s=0.25, cap_s=config.reopen_max_s)
        self._seen: set[str] = set()
        self.state = "closed"
        self.counters: dict[str, int] = {
            "frames": 0,
            "samples": 0,
            "dropped": 0,
            "error_frames": 0,
            "bus_off": 0,
            "remote": 0,
            "malformed": 0,
            "opens": 0,
            "open_failures": 0,
            "reopens": 0,
            "send_errors": 0,
            "emit_errors": 0,
        }
        self.last_error: str | None = None
        self._fresh_bus = False
        self._obd_kick: asyncio.Event | None = None

    # ------------------------------------------------------------------ public
    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "interface": self.config.interface,
            "channel": self.config.channel,
            "mode": self.config.mode,
            "queue": len(self._queue),
            "queue_max": self.config.queue_max,
            "drop_policy": "drop-oldest",
            **self.counters,
            "last_error": self.last_error,
        }
        if self._decoder is not None:
            stats = getattr(self._decoder, "stats", None)
            if stats is not None and hasattr(stats, "as_dict"):
                out["decoder"] = stats.as_dict()
        if self._poller is not None:
            out["obd"] = {**self._poller.stats.as_dict(), **self._poller.telemetry()}
        return out

    def telemetry(self) -> dict[str, float]:
        """Fresh OBD-II engine values under their COVESA VSS names (empty in DBC mode)."""
        if self._poller is None:
            return {}
        t = self._poller.telemetry(time.monotonic())
        out: dict[str, float] = {}
        if "rpm" in t:
            out["Vehicle.Powertrain.CombustionEngine.Speed"] = round(t["rpm"], 1)
        if "coolant_c" in t:
            out["Vehicle.Powertrain.CombustionEngine.ECT"] = round(t["coolant_c"], 1)
        return out

    async def run(self, emit: Callable[[SpeedSample | Ignition], None]) -> None:
        """Read, decode and emit until cancelled. Never raises anything else."""
        self._wake = asyncio.Event()
        try:
            while True:
                self.state = "connecting"
                try:
                    bus = await self._open()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.counters["open_failures"] += 1
                    self._fault("open_failed", f"cannot open {self._where()}: {exc}")
                    await self._sleep_backoff()
                    continue
                self.counters["opens"] += 1
                if self.counters["opens"] > 1:
                    self.counters["reopens"] += 1
                self.state = "open"
                self._fresh_bus = True
                log.info("can.open", where=self._where(), mode=self.config.mode)
                try:
                    reason = await self._serve(bus, emit)
                finally:
                    self._close(bus)
                self.state = "backoff"
                self._fault("bus_lost", f"{self._where()}: {reason}; reopening")
                await self._sleep_backoff()
        finally:
            self.state = "closed"

    # ------------------------------------------------------------------ internals
    def _where(self) -> str:
        return f"{self.config.interface}:{self.config.channel}"

    def _check_speed(self) -> None:
        """Once: a bus that carries traffic but not the configured speed signal (another
        car's DBC, a wrong signal name), or its frames but no sample out of them, is a
        warning with the counts -- not a silent drive without speed."""
        if self._speed_checked or self._decoder is None:
            return
        ids = ", ".join(f"0x{i:X}" for i in sorted(self._wanted))
        if self.received >= 2048 and self.counters["frames"] == 0:
            self._speed_checked = True
            self._fault("no_speed_frames",
                        f"{self.received} frames read, none with the speed signal's ID "
                        f"({self.config.speed_signal}: {ids}); is can.dbc this car's?")
        elif self.counters["frames"] >= 256 and self.counters["samples"] == 0:
            self._speed_checked = True
            stats = getattr(self._decoder, "stats", None)
            detail = stats.as_dict() if stats is not None and hasattr(stats, "as_dict") else {}
            self._fault("no_speed_samples",
                        f"{self.counters['frames']} frames of {self.config.speed_signal} "
                        f"({ids}), no speed decoded from them {detail}")

    def _fault(self, kind: str, message: str) -> None:
        self.last_error = message
        if kind not in self._seen:
            self._seen.add(kind)
            log.warning("can." + kind, reason=message)
        else:
            log.debug("can." + kind, reason=message)

    async def _sleep_backoff(self) -> None:
        self.state = "backoff"
        await asyncio.sleep(self._backoff.next())

    def _filters(self) -> list[dict[str, Any]]:
        if self._poller is not None:
            return [{"can_id": 0x7E8, "can_mask": 0x7F8, "extended": False}]
        assert self._decoder is not None
        ext = self._decoder.extended
        mask = 0x1FFFFFFF if ext else 0x7FF
        return [
            {"can_id": fid, "can_mask": mask, "extended": ext}
            for fid in sorted(self._decoder.frame_ids)
        ]

    def _bus_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        kwargs: dict[str, Any] = {"interface": cfg.interface, "channel": cfg.channel}
        if cfg.interface == "socketcan":
            # kernel filters: unwanted frames never wake us (error frames still come,
            # through CAN_RAW_ERR_FILTER). Elsewhere python-can would filter in Python
            # *and* drop error frames, so we filter ourselves in _push.
            kwargs["can_filters"] = self._filters()
        if cfg.interface == "slcan":
            kwargs["bitrate"] = cfg.bitrate
            kwargs["sleep_after_open"] = cfg.slcan_open_delay_s
        elif cfg.interface == "socketcan":
            kwargs["fd"] = cfg.fd  # bitrate is set by `ip link`, not by the socket
        elif cfg.interface == "virtual":
            kwargs["receive_own_messages"] = False
        return kwargs

    async def _open(self) -> Any:
        import can  # python-can is imported only when a bus is actually opened

        kwargs = self._bus_kwargs()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, lambda: can.Bus(**kwargs))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # the open finishes in its thread: close what it opens
            def _late(f: asyncio.Future[Any]) -> None:
                if not f.cancelled() and f.exception() is None:
                    self._close(f.result())

            fut.add_done_callback(_late)
            raise

    def _close(self, bus: Any) -> None:
        stop = getattr(bus, "_edge_stop", None)
        if stop is not None:
            stop()
        try:
            bus.shutdown()
        except Exception as exc:  # closing a vanished adapter fails; it is closed anyway
            log.debug("can.close_failed", reason=repr(exc))

    def _fail(self, reason: str) -> None:
        fut = self._failure
        if fut is not None and not fut.done():
            fut.set_result(reason)

    def _push(self, msg: Any, mono: float) -> None:
        if msg.is_error_frame:
            self.counters["error_frames"] += 1
            if msg.arbitration_id & CAN_ERR_BUSOFF:
                self.counters["bus_off"] += 1
                self._fail("bus-off")
            else:
                self._fault("error_frame", f"error frame 0x{msg.arbitration_id:08X}")
            return
        if msg.arbitration_id not in self._wanted or msg.is_extended_id != self._extended:
            return  # a frame the kernel filter would have dropped (slcan, virtual)
        if msg.is_remote_frame:
            self.counters["remote"] += 1
            return
        self.counters["frames"] += 1
        if self._fresh_bus:
            self._fresh_bus = False
            self._backoff.reset()  # frames flow: the next fault starts from a short delay
        q = self._queue
        if len(q) >= self.config.queue_max:
            q.popleft()
            self.counters["dropped"] += 1
            if self.counters["dropped"] == 1:
                self._fault("queue_full", f"queue of {self.config.queue_max} full: dropping oldest")
        ts = float(msg.timestamp) if self._clock is None else self._clock()
        q.append((msg.arbitration_id, bytes(msg.data), ts, mono))
        wake = self._wake
        if wake is not None:
            wake.set()

    def _push_many(self, batch: list[tuple[Any, float]]) -> None:
        for msg, mono in batch:
            self._push(msg, mono)

    def _on_readable(self, bus: Any) -> None:
        mono = time.monotonic() if self._clock is None else self._clock()
        for _ in range(DRAIN_PER_WAKEUP):
            try:
                msg = bus.recv(0)
            except (ValueError, IndexError) as exc:  # python-can on a malformed slcan line
                self.counters["malformed"] += 1
                self._fault("malformed", f"malformed frame from {self._where()}: {exc}")
                continue
            except Exception as exc:
                self._fail(f"read failed: {exc}")
                return
            if msg is None:
                return
            self.received += 1
            if not self.received & 1023:
                self._check_speed()
            self._push(msg, mono)

    def _start_reader(self, bus: Any, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        fd = -1
        with contextlib.suppress(Exception):
            fd = int(bus.fileno())
        if fd >= 0:
            loop.add_reader(fd, self._on_readable, bus)

            def remove() -> None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(fd)

            return remove

        stop = threading.Event()
        wanted, extended = self._wanted, self._extended

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
                        self.received += 1
                        if not self.received & 1023:
                            self._check_speed()
                        if msg.is_error_frame or (msg.arbitration_id in wanted
                                                  and msg.is_extended_id == extended):
                            batch.append((msg, time.monotonic() if self._clock is None
                                          else self._clock()))
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
                        loop.call_soon_threadsafe(self._fail, f"read failed: {exc}")
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

    def _malformed(self, exc: Exception) -> None:
        self.counters["malformed"] += 1
        self._fault("malformed", f"malformed frame from {self._where()}: {exc}")

    async def _serve(self, bus: Any, emit: Callable[[SpeedSample | Ignition], None]) -> str:
        loop = asyncio.get_running_loop()
        self._failure = loop.create_future()
        self._queue.clear()
        remove_reader = self._start_reader(bus, loop)
        tasks = [asyncio.create_task(self._consume(emit), name="can-decode")]
        if self._poller is not None:
            tasks.append(asyncio.create_task(self._obd_loop(bus), name="can-obd-poll"))
        try:
            return await self._failure
        finally:
            remove_reader()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._failure = None

    def _emit(
        self, emit: Callable[[SpeedSample | Ignition], None], sample: SpeedSample | Ignition
    ) -> None:
        self.counters["samples"] += 1
        try:
            emit(sample)
        except Exception as exc:
            self.counters["emit_errors"] += 1
            self._fault("emit_failed", f"emit raised {exc!r}")

    async def _consume(self, emit: Callable[[SpeedSample | Ignition], None]) -> None:
        assert self._wake is not None
        wake, q = self._wake, self._queue
        decoder, poller = self._decoder, self._poller
        while True:
            await wake.wait()
            wake.clear()
            n = 0
            while q:
                arb, data, ts, mono = q.popleft()
                if decoder is not None:
                    sample = decoder.decode(arb, data, ts, mono)
                    if sample is not None:
                        self._emit(emit, sample)
                elif poller is not None:
                    busy = bool(poller.outstanding)
                    values = poller.on_frame(arb, data, mono)
                    if busy and not poller.outstanding and self._obd_kick is not None:
                        self._obd_kick.set()  # answered: the next request may go now
                    for value in values:
                        if value.pid == PID_SPEED:
                            self._emit(emit, SpeedSample(
                                time=ts, speed_kmh=value.value, source="obd", mono=mono))
                n += 1
                if n % DECODE_PER_SLICE == 0:
                    await asyncio.sleep(0)
            if not self._speed_checked and self.counters["samples"] == 0:
                self._check_speed()

    async def _obd_loop(self, bus: Any) -> None:
        import can

        poller = self._poller
        assert poller is not None
        kick = self._obd_kick = asyncio.Event()
        while True:
            now = time.monotonic()
            frame = poller.poll(now)
            if frame is not None:
                msg = can.Message(arbitration_id=REQUEST_ID, data=frame, is_extended_id=False)
                try:
                    bus.send(msg, timeout=0.05)
                except Exception as exc:
                    self.counters["send_errors"] += 1
                    self._fail(f"send failed: {exc}")
                    return
            wait = poller.next_wakeup(time.monotonic())
            kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    kick.wait(), min(max(wait, 0.005), self.config.obd_interval_s)
                )

