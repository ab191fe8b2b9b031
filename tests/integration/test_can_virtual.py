"""CanSource on python-can's in-process virtual bus: DBC speed, OBD with a fake ECU."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import can
import pytest

from edge.config import CanConfig
from edge.core.engine import Engine
from edge.errors import ConfigError
from edge.model import SignalSample, SpeedSample
from edge.sources.can import CanSource
from tests.support.can import DBC, frame, until


def channel() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def dbc_config(tmp_path: Path, ch: str, **kw: object) -> CanConfig:
    dbc = tmp_path / "s.dbc"
    dbc.write_text(DBC)
    return CanConfig(interface="virtual", channel=ch, dbc=dbc, speed_signal="SPEED.SPEED",
                     reopen_max_s=0.5, **kw)  # type: ignore[arg-type]


RPM = "Vehicle.Powertrain.CombustionEngine.Speed"
ECT = "Vehicle.Powertrain.CombustionEngine.ECT"


def speeds(got: list[Any]) -> list[SpeedSample]:
    return [s for s in got if isinstance(s, SpeedSample)]


def signals(got: list[Any]) -> dict[str, float]:
    """The last value of each signal emitted."""
    return {s.name: s.value for s in got if isinstance(s, SignalSample)}


def run(
    cfg: CanConfig, body: Callable[[CanSource, list[Any], can.BusABC], Awaitable[None]],
    keep: list[Any] | None = None,
) -> None:
    async def main() -> None:
        car = can.Bus(interface="virtual", channel=cfg.channel, receive_own_messages=False)
        src = CanSource(cfg)
        got: list[Any] = [] if keep is None else keep
        task = asyncio.create_task(src.run(got.append))
        try:
            await until(lambda: src.state == "open")
            await body(src, got, car)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            car.shutdown()
        assert src.state == "closed"

    asyncio.run(asyncio.wait_for(main(), 30))


def test_dbc_speed_on_virtual_bus_with_error_frames(tmp_path: Path) -> None:
    async def body(src: CanSource, got: list[SpeedSample], car: can.BusABC) -> None:
        for i in range(50):
            car.send(can.Message(arbitration_id=0x100 + i % 5, data=bytes(8),
                                 is_extended_id=False))
            if i % 10 == 0:
                car.send(can.Message(arbitration_id=0xB4, data=frame(i), is_extended_id=False))
        car.send(can.Message(is_error_frame=True, arbitration_id=0x80, data=bytes(8)))
        car.send(can.Message(arbitration_id=0xB4, data=frame(99.0), is_extended_id=False))
        await until(lambda: len(got) == 6)
        assert [s.speed_kmh for s in got] == [0, 10, 20, 30, 40, 99.0]
        h = src.health()
        # only the speed ID passed the filter; the error frame was counted, not fatal
        assert h["frames"] == 6 and h["error_frames"] == 1 and h["state"] == "open"
        assert h["decoder"]["decoded"] == 6

    run(dbc_config(tmp_path, channel()), body)


def test_bus_off_reopens(tmp_path: Path) -> None:
    async def body(src: CanSource, got: list[SpeedSample], car: can.BusABC) -> None:
        car.send(can.Message(is_error_frame=True, arbitration_id=0x40, data=bytes(8)))
        await until(lambda: src.health()["reopens"] >= 1 and src.state == "open")
        car.send(can.Message(arbitration_id=0xB4, data=frame(33.0), is_extended_id=False))
        await until(lambda: len(got) == 1)
        assert src.health()["bus_off"] == 1

    run(dbc_config(tmp_path, channel()), body)


def test_queue_is_bounded_and_drops_oldest(tmp_path: Path) -> None:
    src = CanSource(dbc_config(tmp_path, channel(), queue_max=5))
    for i in range(8):
        src.reader.push(can.Message(arbitration_id=0xB4, data=frame(i), timestamp=float(i),
                                    is_extended_id=False), 0.0)
    h = src.health()
    assert h["queue"] == 5 and h["dropped"] == 3 and h["drop_policy"] == "drop-oldest"
    assert [f[2] for f in src.reader.queue] == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_emit_that_raises_is_counted(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = dbc_config(tmp_path, channel())
        car = can.Bus(interface="virtual", channel=cfg.channel)
        src = CanSource(cfg)

        def bad_emit(s: SpeedSample) -> None:
            raise RuntimeError("consumer bug")

        task = asyncio.create_task(src.run(bad_emit))
        await until(lambda: src.state == "open")
        car.send(can.Message(arbitration_id=0xB4, data=frame(5.0), is_extended_id=False))
        await until(lambda: src.health()["emit_errors"] == 1)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        car.shutdown()

    asyncio.run(asyncio.wait_for(main(), 30))


class FakeEcu:
    """Answers OBD requests on the virtual bus like an engine ECU (0x7E8); with
    ``rpm_step``, each RPM answer is that much higher than the last."""

    def __init__(self, bus: can.BusABC, *, speed: int = 88, silent: bool = False,
                 refuse: set[int] | None = None, rpm_step: int = 0) -> None:
        self.bus = bus
        self.speed = speed
        self.silent = silent
        self.refuse = refuse or set()
        self.rpm_raw = 0x1AF8
        self.rpm_step = rpm_step
        self.requests: list[bytes] = []

    async def run(self) -> None:
        while True:
            msg = await asyncio.to_thread(self.bus.recv, 0.05)
            if msg is None or msg.arbitration_id != 0x7DF:
                continue
            data = bytes(msg.data)
            self.requests.append(data)
            if self.silent:
                continue
            pid = data[2]
            if pid in self.refuse or data[0] > 2:
                reply = bytes([3, 0x7F, 0x01, 0x12, 0x55, 0x55, 0x55, 0x55])
            elif pid == 0x0D:
                reply = bytes([3, 0x41, 0x0D, self.speed, 0x55, 0x55, 0x55, 0x55])
            elif pid == 0x0C:
                reply = bytes([4, 0x41, 0x0C, *self.rpm_raw.to_bytes(2, "big"), 0x55, 0x55,
                               0x55])
                self.rpm_raw += self.rpm_step
            else:
                reply = bytes([3, 0x41, pid, 0x5A, 0x55, 0x55, 0x55, 0x55])
            self.bus.send(can.Message(arbitration_id=0x7E8, data=reply, is_extended_id=False))


def obd_config(ch: str, **kw: object) -> CanConfig:
    return CanConfig(interface="virtual", channel=ch, mode="obd", obd_interval_s=0.1,
                     obd_timeout_s=0.1, reopen_max_s=1.0, **kw)  # type: ignore[arg-type]


def test_obd_polling_with_fake_ecu() -> None:
    ecu_holder: list[FakeEcu] = []

    async def body(src: CanSource, got: list[SpeedSample], car: can.BusABC) -> None:
        ecu = FakeEcu(car)
        ecu_holder.append(ecu)
        t = asyncio.create_task(ecu.run())
        try:
            await until(lambda: len(speeds(got)) >= 3 and "rpm" in src.health()["obd"]
                        and ECT in signals(got))
        finally:
            t.cancel()
        assert {(s.speed_kmh, s.source) for s in speeds(got)} == {(88.0, "obd")}
        obd = src.health()["obd"]
        assert obd["rpm"] == pytest.approx(0x1AF8 / 4)
        # engine speed and coolant are emitted as signals under their VSS names, stamped
        # like the speed (bus time and monotonic receive time)
        assert signals(got)[RPM] == pytest.approx(0x1AF8 / 4)
        assert signals(got)[ECT] == 0x5A - 40
        assert all(isinstance(s, SpeedSample | SignalSample) and s.mono > 0 for s in got)
        assert all(r[0] == 2 and r[:3] in (b"\x02\x01\x0d", b"\x02\x01\x0c", b"\x02\x01\x05")
                   for r in ecu.requests)

    run(obd_config(channel()), body)


def test_a_recorded_obd_session_replays_into_what_the_live_source_emitted(
        tmp_path: Path) -> None:
    # The live source on a virtual bus polls a fake ECU whose engine speed climbs; `edge
    # record` captures the same bus. Decoding the recording gives the samples the source
    # emitted (same names, values and bus times), and `edge replay` of the recording has
    # the engine speed and coolant in its telemetry, as the live daemon's telemetry has.
    from edge.config import config_from_dict
    from edge.replay import replay_events
    from edge.sources.canlog import iter_log_obd
    from sim.record import Recorder

    ch = channel()
    drive = tmp_path / "drive"
    rec = Recorder(drive, serial=None, can_interface="virtual", can_channel=ch)
    rec.start()

    async def body(src: CanSource, got: list[SpeedSample], car: can.BusABC) -> None:
        ecu = FakeEcu(car, speed=64, rpm_step=40)
        t = asyncio.create_task(ecu.run())
        try:
            await until(lambda: sum(1 for s in got if getattr(s, "name", "") == RPM) >= 4
                        and ECT in signals(got), within=15)
        finally:
            t.cancel()
        await asyncio.sleep(0.3)  # the recorder's thread writes what is on the bus

    live: list[Any] = []
    try:
        run(obd_config(ch), body, keep=live)
    finally:
        rec.stop()
    replayed = list(iter_log_obd(drive / "can.log"))

    def key(s: object) -> tuple[str, float]:
        if isinstance(s, SignalSample):
            return s.name, s.value
        assert isinstance(s, SpeedSample)
        return "Vehicle.Speed", s.speed_kmh

    assert [key(s) for s in live] == [key(s) for s in replayed]
    # candump -L keeps microseconds
    assert [s.time for s in live] == pytest.approx([s.time for s in replayed], abs=2e-6)
    assert len({s.value for s in live if isinstance(s, SignalSample) and s.name == RPM}) >= 4

    cfg = config_from_dict({"thing": "car", "can": {"interface": "virtual", "mode": "obd"},
                            "telemetry": {"interval_s": 0.2}})
    records = [dict(e.body) for e in replay_events(drive, cfg) if e.type == "telemetry"]
    # the live daemon hands each emitted sample to its engine as it comes
    engine = Engine(cfg)
    live_records = []
    for s in live:
        out = engine.on_signal(s) if isinstance(s, SignalSample) else engine.on_speed(s)
        live_records += [dict(e.body) for e in out if e.type == "telemetry"]
    assert records == live_records
    assert len({r[RPM] for r in records if RPM in r}) >= 2
    assert records[-1][ECT] == 0x5A - 40 and records[-1]["Vehicle.Speed"] == 64.0


def test_obd_silent_ecu_times_out_and_backs_off() -> None:
    async def body(src: CanSource, got: list[SpeedSample], car: can.BusABC) -> None:
        ecu = FakeEcu(car, silent=True)
        t = asyncio.create_task(ecu.run())
        try:
            await asyncio.sleep(2.0)
        finally:
            t.cancel()
        assert got == []
        obd = src.health()["obd"]
        assert obd["timeouts"] >= 3
        # backoff: far fewer requests than one per 0.1 s interval over 2 s
        assert 3 <= len(ecu.requests) <= 10
        assert src.health()["state"] == "open"

    run(obd_config(channel()), body)


def test_obd_negative_response_and_multi_pid_fallback() -> None:
    async def body(src: CanSource, got: list[SpeedSample], car: can.BusABC) -> None:
        ecu = FakeEcu(car, refuse={0x05})  # also refuses any multi-PID request
        t = asyncio.create_task(ecu.run())
        try:
            await until(lambda: len(speeds(got)) >= 3)
        finally:
            t.cancel()
        obd = src.health()["obd"]
        assert obd["max_pids"] == 1 and obd["negative"] >= 1
        assert ecu.requests[0][0] > 2  # first asked for several PIDs at once
        assert all(r[0] == 2 for r in ecu.requests[1:])

    run(obd_config(channel(), obd_max_pids=6), body)


def test_config_errors_surface_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        CanSource(CanConfig(interface="virtual", dbc=tmp_path / "x.dbc",
                            speed_signal="A.B"))
    assert e.value.field == "can.dbc"
    with pytest.raises(ConfigError) as e:
        CanSource(CanConfig(interface="slcan", bitrate=123456, mode="obd"))
    assert e.value.field == "can.bitrate"


def test_a_bus_without_the_speed_signal_is_a_warning_with_counts(tmp_path: Path) -> None:
    # a drive with no speed while the config names a speed signal: said once, counted
    from structlog.testing import capture_logs

    async def body(src: CanSource, got: list[SpeedSample], car: can.BusABC) -> None:
        for i in range(2100):  # another car's traffic: no 0xB4 at all
            car.send(can.Message(arbitration_id=0x100 + i % 7, data=bytes(8),
                                 is_extended_id=False))
        await until(lambda: src.received >= 2048)
        await until(lambda: src.last_error is not None)
        assert got == []
        assert "none with the speed signal's ID (SPEED.SPEED: 0xB4)" in str(src.last_error)
        assert "2048 frames read" in str(src.last_error)

    with capture_logs() as logs:
        run(dbc_config(tmp_path, channel()), body)
    assert [e["event"] for e in logs].count("can.no_speed_frames") == 1


def test_frames_of_the_speed_id_that_never_decode_are_a_warning(tmp_path: Path) -> None:
    async def body(src: CanSource, got: list[SpeedSample], car: can.BusABC) -> None:
        for _ in range(300):  # the right ID, the wrong length: nothing decodes
            car.send(can.Message(arbitration_id=0xB4, data=bytes(2), is_extended_id=False))
        await until(lambda: src.counters["frames"] >= 256 and src.last_error is not None)
        assert got == []
        assert "no speed decoded" in str(src.last_error)
        assert "'wrong_length'" in str(src.last_error)

    run(dbc_config(tmp_path, channel()), body)
