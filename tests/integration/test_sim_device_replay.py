"""Replaying a drive through real device interfaces: a pty and python-can's virtual bus."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import can
import pytest

from sim.device_replay import Replayer, VirtualCanSink
from sim.drive import iter_timeline, load_drive, parse_candump
from sim.pty import PtySerial

DRIVES = Path(__file__).resolve().parents[2] / "sim" / "drives"


async def _read_slave(path: str, stop: asyncio.Event, out: bytearray) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
                out.extend(chunk)
                continue
            except BlockingIOError:
                if stop.is_set():
                    return
            readable.clear()
            try:
                await asyncio.wait_for(readable.wait(), 0.05)
            except TimeoutError:
                pass
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _expected_nmea(drive_name: str) -> bytes:
    raw = (DRIVES / drive_name / "gnss.nmea").read_bytes()
    return b"".join(x + b"\r\n" for x in raw.split(b"\r\n") if x and not x.startswith(b"#"))


def test_max_rate_replay_delivers_the_exact_nmea_bytes_through_a_pty() -> None:
    drive = load_drive(DRIVES / "faults")  # garbage, bad checksums: byte-exact all the same

    async def go() -> tuple[bytes, Replayer]:
        got = bytearray()
        done = asyncio.Event()
        with PtySerial() as pty:
            reader = asyncio.create_task(_read_slave(pty.path, done, got))
            await asyncio.sleep(0)
            r = Replayer(drive, nmea=pty, rate=None)
            await r.run()
            done.set()
            await reader
            assert pty.dropped_bytes == 0
        return bytes(got), r

    got, r = asyncio.run(go())
    assert got == _expected_nmea("faults")
    assert r.stats.nmea_lines == got.count(b"\r\n")


def test_can_frames_arrive_on_the_virtual_bus_with_errors_and_unplug() -> None:
    drive = load_drive(DRIVES / "faults")
    channel = f"t-{uuid.uuid4().hex[:8]}"
    expected = [parse_candump(b) for _, k, b in iter_timeline(drive) if k == "can"]
    unplug = drive.unplugs[0]
    expected_sent = [f for f in expected
                     if f is not None and not unplug.at <= f.ts < unplug.at + unplug.duration_s]
    rx = can.Bus(interface="virtual", channel=channel)
    sink = VirtualCanSink(channel)
    try:
        r = Replayer(drive, can=sink, rate=None)
        asyncio.run(r.run())
        got = []
        while (msg := rx.recv(timeout=0)) is not None:
            got.append(msg)
    finally:
        sink.close()
        rx.shutdown()
    assert r.stats.unplugs == 1
    assert len(got) == len(expected_sent)
    assert [m.is_error_frame for m in got].count(True) == 8
    first_data = next(f for f in expected_sent if f is not None and not f.error)
    m0 = next(m for m in got if not m.is_error_frame)
    assert (m0.arbitration_id, bytes(m0.data)) == (first_data.arbitration_id, first_data.data)


def test_rate_paces_the_replay_and_long_gaps_are_shortened(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    # 4 frames: 0.0, 0.5, 1.0 s, then a 100 s gap
    (d / "can.log").write_text("(1000.000000) can0 001#01\n(1000.500000) can0 001#02\n"
                               "(1001.000000) can0 001#03\n(1101.000000) can0 001#04\n")
    channel = f"t-{uuid.uuid4().hex[:8]}"
    rx = can.Bus(interface="virtual", channel=channel)
    sink = VirtualCanSink(channel)
    try:
        r = Replayer(load_drive(d), can=sink, rate=4.0, max_gap_s=1.0)
        t0 = time.monotonic()
        asyncio.run(r.run())
        wall = time.monotonic() - t0
        n = 0
        while rx.recv(timeout=0) is not None:
            n += 1
    finally:
        sink.close()
        rx.shutdown()
    assert n == 4
    # 1 s + the gap cut to 1 s = 2 s of timeline, at 4x: 0.5 s of wall time
    assert 0.45 <= wall < 1.5


def test_loop_replays_again() -> None:
    drive = load_drive(DRIVES / "faults")

    async def go() -> int:
        got = bytearray()
        done = asyncio.Event()
        with PtySerial() as pty:
            reader = asyncio.create_task(_read_slave(pty.path, done, got))
            r = Replayer(drive, nmea=pty, rate=None, loop=True)
            task = asyncio.create_task(r.run())
            expected = len(_expected_nmea("faults"))
            while len(got) < expected * 2 + 10:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            done.set()
            await reader
            return r.stats.loops

    assert asyncio.run(go()) >= 2


def _has_vcan() -> bool:
    return Path("/sys/class/net/vcan0").exists()


@pytest.mark.skipif(not _has_vcan(), reason="no vcan0 on this host (ip link add vcan0 type vcan)")
def test_can_frames_arrive_on_a_vcan_interface(tmp_path: Path) -> None:
    from sim.device_replay import BusCanSink

    d = tmp_path / "d"
    d.mkdir()
    (d / "can.log").write_text("(1000.000000) can0 3E9#8713\n(1000.010000) can0 3E9#8813\n")
    rx = can.Bus(interface="socketcan", channel="vcan0")
    sink = BusCanSink("vcan0", interface="socketcan")
    try:
        asyncio.run(Replayer(load_drive(d), can=sink, rate=None).run())
        got = [rx.recv(timeout=1.0) for _ in range(2)]
    finally:
        sink.close()
        rx.shutdown()
    assert [bytes(m.data) for m in got if m is not None] == [b"\x87\x13", b"\x88\x13"]
