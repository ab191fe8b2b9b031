"""Vehicle speed (and, over OBD-II, engine signals) from the CAN bus, through python-can
(socketcan | slcan | virtual).

Three parts, one job each:

- ``edge.sources.canbus.BusReader``: opens the bus, reads it on the event loop, keeps the
  frames the decoder wants in a bounded drop-oldest queue, says why the bus was lost;
- ``edge.sources.canobd.ObdSession`` (``mode = "obd"``): sends the OBD-II requests and
  turns the answers into samples;
- ``CanSource`` (here): the session loop (open, serve, reopen with capped jittered
  backoff, reset once frames flow again), decoding the queue into samples for ``emit``,
  health.

What ``emit`` gets: ``SpeedSample`` (DBC speed signal or OBD PID 0x0D), ``Ignition``
(``[can] ignition_signal``), and in OBD mode ``SignalSample``s of engine speed and coolant
temperature under their COVESA VSS names, which reach telemetry through the engine (so
``edge replay`` of a recorded OBD log reproduces them).

Faults never escape ``run()``: error frames are counted and skipped; bus-off, a vanished
adapter (slcan pty or USB gone), a failed open or send close the bus and reopen it; a
malformed slcan line is counted and reading goes on. Each kind of fault is logged at
WARNING the first time, at DEBUG after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from edge.config import CanConfig
from edge.core.backoff import Backoff
from edge.core.canspeed import FrameDecoder
from edge.errors import ConfigError
from edge.logconf import Once
from edge.model import Ignition, SignalSample, SpeedSample
from edge.sources.canbus import BusReader

if TYPE_CHECKING:
    from edge.sources.canobd import ObdSession

log = structlog.get_logger()

DECODE_PER_SLICE = 512  # frames decoded before yielding the loop
SLCAN_BITRATES = frozenset(
    {10000, 20000, 50000, 100000, 125000, 250000, 500000, 750000, 1000000, 83300}
)

CanSample = SpeedSample | Ignition | SignalSample
Emit = Callable[[CanSample], None]


class CanSource:
    """Samples from a CAN bus. ``run(emit)`` until cancelled; ``health()`` anytime."""

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
        self._obd: ObdSession | None = None
        self._decoder: FrameDecoder | None = None
        filters: list[dict[str, Any]]
        if config.mode == "obd":
            # the OBD-II session and its PID tables only when polled (a DBC bus never loads them)
            from edge.sources.canobd import RESPONSE_FILTER, ObdSession

            self._obd = ObdSession(config)
            wanted, extended, filters = self._obd.frame_ids, False, RESPONSE_FILTER
        else:
            if decoder is None:
                from edge.sources.dbc import decoder_for

                decoder = decoder_for(config)
            self._decoder = decoder
            wanted, extended = decoder.frame_ids, decoder.extended
            mask = 0x1FFFFFFF if extended else 0x7FF
            filters = [{"can_id": fid, "can_mask": mask, "extended": extended}
                       for fid in sorted(wanted)]
        self._wanted = wanted
        # clock None: bus timestamps and the monotonic clock; ``edge sim``: the drive's
        # clock for both (the sim's replay is the one clock, as a log's timestamps are)
        self.reader = BusReader(config, wanted=wanted, extended=extended, filters=filters,
                                fault=self._fault, clock=clock, every_1024=self._check_speed)
        self._backoff = Backoff(base_s=0.25, cap_s=config.reopen_max_s)
        self.reader.on_flow = self._backoff.reset
        self._speed_checked = False
        self._once = Once()  # each kind of fault: WARNING once, then DEBUG
        self.state = "closed"
        self.last_error: str | None = None
        self._counters = {"samples": 0, "opens": 0, "open_failures": 0, "reopens": 0,
                          "emit_errors": 0}

    # ------------------------------------------------------------------ public
    @property
    def received(self) -> int:
        """Every frame read from the bus, wanted or not (edge sim paces on it)."""
        return self.reader.received

    @property
    def counters(self) -> dict[str, int]:
        """Every counter of the source and its parts, by name (a snapshot)."""
        return {**self.reader.counters, **self._counters,
                "send_errors": self._obd.send_errors if self._obd is not None else 0}

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "interface": self.config.interface,
            "channel": self.config.channel,
            "mode": self.config.mode,
            "queue": len(self.reader.queue),
            "queue_max": self.config.queue_max,
            "drop_policy": "drop-oldest",
            **self.counters,
            "last_error": self.last_error,
        }
        stats = self._decoder_stats()
        if stats is not None:
            out["decoder"] = stats
        if self._obd is not None:
            out["obd"] = self._obd.health()
        return out

    async def run(self, emit: Emit) -> None:
        """Read, decode and emit until cancelled. Never raises anything else."""
        reader = self.reader
        try:
            while True:
                self.state = "connecting"
                try:
                    bus = await reader.open()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._counters["open_failures"] += 1
                    self._fault("open_failed", f"cannot open {reader.where()}: {exc}")
                    await self._sleep_backoff()
                    continue
                self._counters["opens"] += 1
                if self._counters["opens"] > 1:
                    self._counters["reopens"] += 1
                self.state = "open"
                log.info("can.open", where=reader.where(), mode=self.config.mode)
                tasks = [self._consume(emit)]
                if self._obd is not None:
                    tasks.append(self._obd.poll(bus, reader.fail))
                try:
                    reason = await reader.serve(bus, tasks)
                finally:
                    reader.close(bus)
                self._fault("bus_lost", f"{reader.where()}: {reason}; reopening")
                await self._sleep_backoff()
        finally:
            self.state = "closed"

    # ------------------------------------------------------------------ internals
    async def _sleep_backoff(self) -> None:
        self.state = "backoff"
        await asyncio.sleep(self._backoff.next())

    def _fault(self, kind: str, message: str) -> None:
        self.last_error = message
        self._once(log, kind, "can." + kind, reason=message)

    def _check_speed(self) -> None:
        """Once: a bus that carries traffic but not the configured speed signal (another
        car's DBC, a wrong signal name), or its frames but no sample out of them, is a
        warning with the counts -- not a silent drive without speed."""
        if self._speed_checked or self._decoder is None:
            return
        frames, samples = self.reader.counters["frames"], self._counters["samples"]
        if self.reader.received >= 2048 and frames == 0:
            self._speed_checked = True
            self._fault("no_speed_frames",
                        f"{self.reader.received} frames read, none with the speed signal's "
                        f"ID ({self.config.speed_signal}: {self._ids()}); is can.dbc this "
                        "car's?")
        elif frames >= 256 and samples == 0:
            self._speed_checked = True
            self._fault("no_speed_samples",
                        f"{frames} frames of {self.config.speed_signal} "
                        f"({self._ids()}), no speed decoded from them "
                        f"{self._decoder_stats() or {}}")

    def _ids(self) -> str:
        return ", ".join(f"0x{i:X}" for i in sorted(self._wanted))

    def _decoder_stats(self) -> dict[str, Any] | None:
        stats = getattr(self._decoder, "stats", None)
        return stats.as_dict() if stats is not None and hasattr(stats, "as_dict") else None

    def _emit(self, emit: Emit, sample: CanSample) -> None:
        self._counters["samples"] += 1
        try:
            emit(sample)
        except Exception as exc:
            self._counters["emit_errors"] += 1
            self._fault("emit_failed", f"emit raised {exc!r}")

    async def _consume(self, emit: Emit) -> None:
        reader = self.reader
        wake, q = reader.wake, reader.queue
        decoder, obd = self._decoder, self._obd
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
                elif obd is not None:
                    for s in obd.on_frame(arb, data, ts, mono):
                        self._emit(emit, s)
                n += 1
                if n % DECODE_PER_SLICE == 0:
                    await asyncio.sleep(0)
            if not self._speed_checked and self._counters["samples"] == 0:
                self._check_speed()
