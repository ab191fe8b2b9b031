"""NMEA throughput: ``iter_fixes`` (framing + pynmea2 + merge + validity) vs bare
``pynmea2.parse`` over the same lines in the same run, and the live path through
``GnssSource`` reading a pty.

``run()`` returns rows ``{metric, value, unit, baseline, ratio, goal, ok}``. The goals:
the whole pipeline (framing, parsing, merging, validity) costs at most 2.5x bare
pynmea2's parse per sentence (measured ~2x; only the sentence types it uses reach
pynmea2), and the live source handles at least 20x what a 10 Hz multi-constellation
receiver sends (~150 sentences/s).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import tty
from typing import Any

import pynmea2

from edge.config import GnssConfig
from edge.core.nmea import iter_fixes
from edge.model import Fix

EPOCHS = 3000
RECEIVER_RATE = 150.0  # sentences/s of a 10 Hz GN receiver with GSV


def _nmea(body: str) -> bytes:
    x = 0
    for ch in body.encode():
        x ^= ch
    return f"${body}*{x:02X}\r\n".encode()


def _dm(v: float, width: int) -> str:
    d = int(abs(v))
    return f"{d:0{width}d}{(abs(v) - d) * 60:07.4f}"


def capture(epochs: int = EPOCHS) -> list[bytes]:
    """A u-blox M8-like 1 Hz drive: RMC VTG GGA GSA GSA GSV x4 GLL per epoch."""
    lines: list[bytes] = []
    for i in range(epochs):
        lat = 52.5163 + i * 10 / 111_320
        lon = 13.3777 + i * 10 / (111_320 * math.cos(math.radians(52.5)))
        s = 12 * 3600 + i
        t = f"{s // 3600 % 24:02d}{s % 3600 // 60:02d}{s % 60:02d}.00"
        la, lo = _dm(lat, 2), _dm(lon, 3)
        lines += [
            _nmea(f"GNRMC,{t},A,{la},N,{lo},E,19.438,45.00,170524,,,A,V"),
            _nmea("GNVTG,45.00,T,,M,19.438,N,36.000,K,A"),
            _nmea(f"GNGGA,{t},{la},N,{lo},E,1,12,0.80,35.2,M,39.6,M,,"),
            _nmea("GNGSA,A,3,05,13,15,18,24,,,,,,,,1.45,0.80,1.21,1"),
            _nmea("GNGSA,A,3,65,71,72,,,,,,,,,,1.45,0.80,1.21,2"),
            _nmea("GPGSV,2,1,08,05,45,120,40,13,30,200,38,15,60,080,44,18,10,300,30"),
            _nmea("GPGSV,2,2,08,24,45,120,40,26,30,200,38,29,60,080,44,31,10,300,30"),
            _nmea("GLGSV,1,1,03,65,45,120,40,71,30,200,38,72,60,080,44"),
            _nmea("GAGSV,1,1,02,02,45,120,40,11,30,200,38"),
            _nmea(f"GNGLL,{la},N,{lo},E,{t},A,A"),
        ]
    return lines


def _bare(lines: list[bytes]) -> float:
    t0 = time.perf_counter()
    for line in lines:
        try:
            pynmea2.parse(line.decode("ascii").strip(), check=True)
        except pynmea2.ParseError:
            pass
    return time.perf_counter() - t0


def _pipeline(lines: list[bytes]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_fixes(lines))
    return time.perf_counter() - t0, n


async def _live(data: bytes, epochs: int) -> float:
    from edge.sources.gnss import GnssSource

    master, slave = os.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    os.close(slave)
    got: list[Fix] = []
    src = GnssSource(GnssConfig(port=name))
    task = asyncio.create_task(src.run(got.append))
    try:
        while not src.health()["connected"]:
            await asyncio.sleep(0.005)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        # write from a thread: a pty buffer holds only a few KB
        writer = loop.run_in_executor(None, _write_all, master, data)
        while len(got) < epochs - 1:
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        await writer
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        os.close(master)
    return elapsed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view[:4096])
        view = view[n:]


def run() -> list[dict[str, Any]]:
    lines = capture()
    n = len(lines)
    bares: list[float] = []
    pipes: list[tuple[float, int]] = []
    for _ in range(5):  # interleaved, best of 5: the machine is shared and noisy
        bares.append(_bare(lines))
        pipes.append(_pipeline(lines))
    bare = min(bares)
    pipe, fixes = min(pipes)
    bare_rate, pipe_rate = n / bare, n / pipe
    live_epochs = 600
    live_lines = lines[: live_epochs * 10]
    live = asyncio.run(_live(b"".join(live_lines), live_epochs))
    live_rate = len(live_lines) / live
    rows: list[dict[str, Any]] = [
        {"metric": "nmea.bare_pynmea2_parse", "value": round(bare_rate), "unit": "sentences/s",
         "baseline": None, "ratio": None, "goal": None, "ok": True},
        {"metric": "nmea.iter_fixes", "value": round(pipe_rate), "unit": "sentences/s",
         "baseline": round(bare_rate), "ratio": round(pipe_rate / bare_rate, 2),
         "goal": ">= 0.4x bare pynmea2.parse", "ok": pipe_rate >= 0.4 * bare_rate},
        {"metric": "nmea.iter_fixes_fixes", "value": round(fixes / pipe), "unit": "fixes/s",
         "baseline": None, "ratio": None, "goal": None, "ok": fixes == len(lines) // 10},
        {"metric": "nmea.gnss_source_pty", "value": round(live_rate), "unit": "sentences/s",
         "baseline": RECEIVER_RATE, "ratio": round(live_rate / RECEIVER_RATE, 1),
         "goal": ">= 20x a 10 Hz receiver", "ok": live_rate >= 20 * RECEIVER_RATE},
    ]
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
