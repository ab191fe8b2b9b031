"""slcan end to end over a real pty: the fake adapter on one side, CanSource on the other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edge.config import CanConfig
from edge.model import SpeedSample
from edge.sources.can import CanSource
from sim.slcan import SlcanPtyAdapter
from tests.support.can import DBC, frame, until


def run_with_source(
    cfg: CanConfig,
    body: Callable[[CanSource, list[SpeedSample]], Awaitable[None]],
) -> CanSource:
    async def main() -> CanSource:
        src = CanSource(cfg)
        got: list[SpeedSample] = []
        task = asyncio.create_task(src.run(got.append))
        try:
            await body(src, got)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert src.state == "closed"
        return src

    return asyncio.run(asyncio.wait_for(main(), 30))


@pytest.fixture()
def adapter() -> SlcanPtyAdapter:
    ad = SlcanPtyAdapter()
    yield ad
    ad.close()


def config(tmp_path: Path, channel: str, **kw: object) -> CanConfig:
    dbc = tmp_path / "s.dbc"
    dbc.write_text(DBC)
    return CanConfig(interface="slcan", channel=channel, dbc=dbc, speed_signal="SPEED.SPEED",
                     slcan_open_delay_s=0.0, reopen_max_s=0.5, **kw)  # type: ignore[arg-type]


def test_speed_over_slcan_pty(tmp_path: Path, adapter: SlcanPtyAdapter) -> None:
    async def body(src: CanSource, got: list[SpeedSample]) -> None:
        assert await asyncio.to_thread(adapter.wait_open, 5)
        for kmh in (10.0, 20.0, 30.5):
            adapter.send(0x123, b"\x01\x02\x03")  # not ours: filtered
            assert adapter.send(0xB4, frame(kmh))
        await until(lambda: len(got) == 3)
        assert [s.speed_kmh for s in got] == [10.0, 20.0, 30.5]
        assert all(s.source == "can" and abs(s.time - time.time()) < 5 for s in got)
        h = src.health()
        assert h["state"] == "open" and h["frames"] == 3 and h["samples"] == 3

    run_with_source(config(tmp_path, adapter.path), body)
    # python-can's open sequence reached the "device": close, 500 kbit/s, open
    assert adapter.commands[:2] == ["C", "S6"] and "O" in adapter.commands
    assert adapter.bitrate_cmd == "S6"


def test_unplug_and_replug(tmp_path: Path, adapter: SlcanPtyAdapter) -> None:
    async def body(src: CanSource, got: list[SpeedSample]) -> None:
        assert await asyncio.to_thread(adapter.wait_open, 5)
        adapter.send(0xB4, frame(50.0))
        await until(lambda: len(got) == 1)
        adapter.unplug()
        await until(lambda: src.health()["state"] != "open")
        await asyncio.sleep(0.6)  # the source keeps trying while the adapter is gone
        assert src.health()["open_failures"] >= 1
        adapter.replug()
        assert await asyncio.to_thread(adapter.wait_open, 5)
        adapter.send(0xB4, frame(60.0))
        await until(lambda: len(got) == 2)
        h = src.health()
        assert h["state"] == "open" and h["reopens"] == 1
        assert got[-1].speed_kmh == 60.0

    run_with_source(config(tmp_path, adapter.path), body)


def test_malformed_slcan_line_does_not_kill_the_source(
    tmp_path: Path, adapter: SlcanPtyAdapter
) -> None:
    async def body(src: CanSource, got: list[SpeedSample]) -> None:
        assert await asyncio.to_thread(adapter.wait_open, 5)
        adapter.send_raw(b"tXYZ8001122\r")  # python-can raises ValueError on this
        adapter.send_raw(b"T1\r")  # truncated extended frame
        adapter.send(0xB4, frame(42.0))
        await until(lambda: len(got) == 1)
        h = src.health()
        assert h["malformed"] == 2 and h["state"] == "open" and h["reopens"] == 0
        assert got[0].speed_kmh == 42.0

    run_with_source(config(tmp_path, adapter.path), body)


def test_obd_over_slcan_with_fake_ecu(tmp_path: Path) -> None:
    ad = SlcanPtyAdapter()

    def ecu(arb: int, data: bytes, extended: bool) -> None:
        if arb == 0x7DF and data[1] == 0x01 and data[2] == 0x0D:
            ad.send(0x7E8, bytes([3, 0x41, 0x0D, 77, 0x55, 0x55, 0x55, 0x55]))

    ad.on_frame = ecu
    try:
        cfg = CanConfig(interface="slcan", channel=ad.path, mode="obd", obd_interval_s=0.1,
                        slcan_open_delay_s=0.0)

        async def body(src: CanSource, got: list[SpeedSample]) -> None:
            await until(lambda: len(got) >= 3)
            assert {(s.speed_kmh, s.source) for s in got} == {(77.0, "obd")}

        run_with_source(cfg, body)
        sent = [r for r in ad.received if r[0] == 0x7DF]
        assert sent and all(d[0] == 2 for _, d, _ in sent)  # one PID per request
    finally:
        ad.close()


def test_missing_adapter_is_retried_not_raised(tmp_path: Path) -> None:
    async def body(src: CanSource, got: list[SpeedSample]) -> None:
        await until(lambda: src.health()["open_failures"] >= 2)
        assert "cannot open" in (src.health()["last_error"] or "")

    run_with_source(config(tmp_path, str(tmp_path / "ttyACM9")), body)
