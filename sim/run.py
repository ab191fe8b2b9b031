"""``edge sim``: the unmodified daemon fed by a replayed drive through device interfaces.

The config is rewritten (``dataclasses.replace``, nothing else) so that ``gnss.port`` is
the slave side of a pty carrying the drive's NMEA, and the CAN bus is either the fake
USB slcan adapter of ``sim.slcan`` (``can.interface = "slcan"``, ``can.channel`` its
pty), python-can's in-process virtual bus, or a socketcan vcan interface where the host
has one (``can_mode="socketcan"``). The replay and the daemon share one event
loop. When the replay ends (and ``loop`` is off) the daemon gets ``drain_s`` to finish
its work, then it is stopped as SIGTERM would stop it. SIGINT/SIGTERM stop both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

from edge.config import Config
from edge.errors import CanError
from sim.device_replay import BusCanSink, Replayer, VirtualCanSink
from sim.drive import check_clocks, load_drive
from sim.pty import PtySerial

log = structlog.get_logger()

CanMode = Literal["slcan", "virtual", "socketcan", "auto"]
# how far the replay may run ahead of what the daemon has read: a few lines / frames, so
# the drive's clock the daemon lives is the clock of what it reads, at any rate
NMEA_LEAD_BYTES = 512  # ~7 NMEA lines: under 0.2 s of a 10 Hz receiver's drive time
CAN_LEAD_FRAMES = 16


class Progress:
    """A one-line progress bar on a terminal; a line every 25 % otherwise."""

    def __init__(self, stream: TextIO, *, label: str, min_total_s: float = 5.0) -> None:
        self.stream = stream
        self.label = label
        self.min_total_s = min_total_s
        self.tty = stream.isatty()
        self._quarter = -1
        self._wall0 = time.monotonic()

    def __call__(self, done_s: float, total_s: float) -> None:
        if total_s < self.min_total_s:
            return
        frac = min(1.0, max(0.0, done_s / total_s)) if total_s > 0 else 1.0
        if self.tty:
            width = 30
            fill = int(frac * width)
            bar = "#" * fill + "-" * (width - fill)
            self.stream.write(f"\r{self.label} [{bar}] {frac * 100:5.1f}% "
                              f"{_mmss(done_s)}/{_mmss(total_s)}")
            if frac >= 1.0:
                self.stream.write("\n")
            self.stream.flush()
        else:
            q = int(frac * 4)
            if q > self._quarter:
                self._quarter = q
                self.stream.write(f"{self.label}: {q * 25}% of {_mmss(total_s)} "
                                  f"({time.monotonic() - self._wall0:.1f} s)\n")
                self.stream.flush()


def _mmss(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 60:02d}:{s % 60:02d}"


def _slcan_adapter() -> Any | None:
    try:
        from sim.slcan import SlcanPtyAdapter
    except ImportError:
        return None
    return SlcanPtyAdapter


def sim_config(config: Config, *, gnss_port: str | None, can_interface: str | None,
               can_channel: str | None) -> Config:
    """The config the daemon gets under simulation: only device paths change."""
    cfg = config
    if gnss_port is not None:
        cfg = dataclasses.replace(cfg, gnss=dataclasses.replace(cfg.gnss, port=gnss_port))
    if can_interface is not None and can_channel is not None:
        cfg = dataclasses.replace(cfg, can=dataclasses.replace(
            cfg.can, interface=can_interface, channel=can_channel))  # type: ignore[arg-type]
    return cfg


async def run_sim(
    drive: Path,
    config: Config,
    *,
    rate: float | None,
    loop: bool = False,
    can_mode: CanMode = "auto",
    can_channel: str | None = None,
    max_gap_s: float | None = None,
    drain_s: float = 2.0,
    open_timeout_s: float = 15.0,
    progress: TextIO | None = sys.stderr,
    on_daemon: Callable[[Any], None] | None = None,
) -> int:
    """Replay ``drive`` into ptys and run the daemon on them; return the exit status.

    ``can_mode``: ``"slcan"`` (the fake USB adapter on a pty), ``"virtual"`` (python-can's
    in-process bus), ``"socketcan"`` (a vcan interface the host already has) or ``"auto"``
    (slcan when ``sim.slcan`` is importable and no channel is named, else virtual).
    ``can_channel`` names the bus for virtual (default: a fresh random name) and
    socketcan (default ``vcan0``); the slcan adapter's channel is its pty, so a channel
    with ``"slcan"`` is a ``ValueError``. A socketcan interface that cannot be opened is
    a ``CanError`` saying how to create it.
    ``max_gap_s`` shortens idle gaps of the timeline (only matters with a ``rate``).
    """
    from edge.app import Daemon, run_until_signalled

    if max_gap_s is not None and max_gap_s < 0:
        raise ValueError("max_gap_s must be >= 0")
    if can_channel is not None and can_mode == "slcan":
        raise ValueError("the slcan adapter's channel is its pty: no can_channel with slcan")

    d = load_drive(drive)
    # as fast as possible: pure back-pressure; in time: a UART that overruns after 1 s
    # paced on the reader: the pty's buffer back-pressures the replay, whatever the rate
    # (the replay falls behind its clock rather than drop a byte the daemon would read)
    pty = PtySerial(write_timeout_s=None) if d.gnss is not None else None
    sink: Any = None
    can_iface: str | None = None
    bus_channel: str | None
    if d.can is not None and config.can.interface != "none":
        # auto with a named channel means a bus, not the adapter (whose channel is a pty)
        want_slcan = can_mode == "slcan" or (can_mode == "auto" and can_channel is None)
        adapter_cls = _slcan_adapter() if want_slcan else None
        if can_mode == "slcan" and adapter_cls is None:
            raise RuntimeError("sim.slcan.SlcanPtyAdapter is not available")
        if can_mode == "socketcan":
            bus_channel = can_channel or "vcan0"
            try:
                sink = BusCanSink(bus_channel, interface="socketcan")
            except Exception as exc:  # no such interface, no socketcan on this OS
                if pty is not None:
                    pty.close()
                raise CanError(
                    f"cannot open socketcan interface {bus_channel!r} ({exc}); create one "
                    f"with: sudo modprobe vcan && sudo ip link add {bus_channel} type vcan "
                    f"&& sudo ip link set up {bus_channel}") from exc
            can_iface = "socketcan"
        elif adapter_cls is not None:
            sink = adapter_cls()
            can_iface, bus_channel = "slcan", str(sink.path)
        else:
            bus_channel = can_channel or f"sim-{uuid.uuid4().hex[:8]}"
            sink = VirtualCanSink(bus_channel)
            can_iface = "virtual"
    else:
        bus_channel = None
    cfg = sim_config(config, gnss_port=pty.path if pty else None,
                     can_interface=can_iface, can_channel=bus_channel)
    bar = Progress(progress, label=f"sim {d.name}") if progress is not None else None
    replayer = Replayer(d, nmea=pty, can=sink, rate=rate, max_gap_s=max_gap_s, loop=loop,
                        progress=bar, wait_reader_s=open_timeout_s)
    if d.gnss is not None and d.can is not None:
        clocks = check_clocks(d)
        if not clocks.agree:
            log.warning("sim.clocks_disagree", drive=str(d.path), offset_s=clocks.offset_s,
                        reason=clocks.message(d))
    log.info("sim starting", drive=str(d.path), gnss=cfg.gnss.port, can=cfg.can.interface,
             channel=cfg.can.channel, rate=rate or "max")

    async def _replay_when_open() -> None:
        # a real adapter drops frames until the host opens the channel: wait for the
        # daemon to open it (python-can's slcan waits slcan_open_delay_s) before replaying
        if sink is not None:
            if not await replayer.wait_open(open_timeout_s):
                log.warning("sim: the daemon did not open the slcan adapter",
                            path=str(sink.path), waited_s=open_timeout_s)
        await replayer.run()

    async def main(stop: asyncio.Event) -> None:
        daemon = Daemon(cfg, clock=replayer.clock, can_clock=replayer.can_clock)

        def gnss_open() -> bool:
            return any(name == "gnss" and bool(src.health().get("connected"))
                       for name, src in daemon.sources())

        replayer.reader_ready = gnss_open

        def taken(kind: str) -> Callable[[], int]:
            attr = "bytes_read" if kind == "gnss" else "received"

            def read() -> int:
                for name, src in daemon.sources():
                    if name == kind:
                        return int(getattr(src, attr))
                return 0
            return read

        replayer.readers = {kind: taken(kind) for kind, present in
                            (("gnss", pty is not None), ("can", sink is not None)) if present}
        replayer.leads = {"gnss": NMEA_LEAD_BYTES, "can": CAN_LEAD_FRAMES}
        if on_daemon is not None:
            on_daemon(daemon)  # tests read its sources' counters after the run
        daemon_task = asyncio.create_task(daemon.run(stop), name="sim-daemon")
        replay_task = asyncio.create_task(_replay_when_open(), name="sim-replay")
        stop_wait = asyncio.create_task(stop.wait(), name="sim-stop-wait")
        try:
            done, _ = await asyncio.wait({daemon_task, replay_task, stop_wait},
                                         return_when=asyncio.FIRST_COMPLETED)
            if replay_task in done and not stop.is_set():
                replay_task.result()
                # let the daemon read what is in flight and publish it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(daemon_task), drain_s)
                stop.set()
            elif daemon_task in done:
                stop.set()
            else:
                stop.set()
            await daemon_task
        finally:
            for t in (replay_task, stop_wait):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay_task
            with contextlib.suppress(asyncio.CancelledError):
                await stop_wait
            if not daemon_task.done():
                daemon_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await daemon_task

    try:
        return await run_until_signalled(main)
    finally:
        s = replayer.stats
        log.info("sim done", nmea_lines=s.nmea_lines, can_frames=s.can_frames,
                 can_errors=s.can_errors, wall_s=round(s.wall_s, 2))
        if pty is not None:
            pty.close()
        close = getattr(sink, "close", None)
        if close is not None:
            close()
