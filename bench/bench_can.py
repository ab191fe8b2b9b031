"""CAN replay throughput: log -> ID filter -> speed decode, vs python-can's bare read.

A generated candump -L log of ~200,000 frames at ~2,000 frames/s (a busy 500 kbit/s
powertrain bus), 20 IDs, the speed message (big-endian 16-bit, Toyota-style checksum)
one of them. Both sides are timed with ``time.process_time`` in the same run:

- ours: ``iter_log_speed`` end to end (read, filter, decode, checksum, SpeedSample);
- baseline: ``for msg in can.LogReader(path)`` with no decoding at all.

Live bus (``live_bus``): CanSource on python-can's virtual bus, in one process. A sender
thread pushes a fixed-rate mix (default 20,000 frames/s, ~2.5x a saturated 1 Mbit/s bus,
20 IDs: VEHICLE_SPEED 0x3E9 of ``sim/dbc/demo.dbc`` at 50 Hz, ENGINE_1, WHEEL_SPEEDS and
17 other IDs as background) while ``CanSource(interface="virtual", mode="dbc")`` reads
it on the daemon's event loop (asyncio's unless VEHICLE_EDGE_EVENT_LOOP=uvloop),
emitting into a counting callback. Timed with ``time.process_time`` from the first frame
sent until the source has read the last one; the sender's own cost is measured alone in
the same run (same bus, one listener whose queue nobody reads) and subtracted: what is
left is the source path (its reader thread, the hand-off to the loop, the ID filter, the
queue, the decoder, the emit).

Run: ``.venv/bin/python -m bench.bench_can`` (prints a table; ``run()`` returns rows).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

DEMO_DBC = Path(__file__).resolve().parents[1] / "sim" / "dbc" / "demo.dbc"
LIVE_SPEED_ID = 0x3E9  # VEHICLE_SPEED in demo.dbc: SPEED_KMH 0.01 km/h LE, SPEED_VALID bit 16
LIVE_SPEED_HZ = 50
LIVE_RATE = 20_000.0  # frames/s offered
LIVE_SECONDS = 5.0
LIVE_GOAL = 50_000  # frames per CPU-second through the source path

BENCH_DBC = """VERSION ""

BS_:

BU_: ECU

BO_ 180 SPEED: 8 ECU
 SG_ ENCODER : 39|8@0+ (1,0) [0|255] "" ECU
 SG_ SPEED : 47|16@0+ (0.01,0) [0|250] "km/h" ECU
 SG_ CHECKSUM : 63|8@0+ (1,0) [0|255] "" ECU
"""

FRAMES = 200_000
RATE = 2_000.0
N_IDS = 20
SPEED_ID = 0x0B4


def write_log(path: Path, frames: int = FRAMES, seed: int = 1) -> int:
    """A candump -L log; returns how many frames carry the speed ID."""
    from edge.core.canspeed import toyota_checksum

    rnd = random.Random(seed)
    ids = [SPEED_ID, *rnd.sample([i for i in range(0x020, 0x7F0) if i != SPEED_ID], N_IDS - 1)]
    t = 1_700_000_000.0
    n_speed = 0
    lines = []
    for i in range(frames):
        t += rnd.expovariate(RATE)
        can_id = ids[i % N_IDS]
        if can_id == SPEED_ID:
            raw = int(6000 + 3000 * ((i // 1000) % 5))
            data = bytearray(8)
            data[5:7] = raw.to_bytes(2, "big")
            data[7] = toyota_checksum(SPEED_ID, bytes(data))
            payload = bytes(data)
            n_speed += 1
        else:
            payload = rnd.randbytes(8)
        lines.append(f"({t:.6f}) can0 {can_id:03X}#{payload.hex().upper()}\n")
    path.write_text("".join(lines))
    return n_speed


def run(quick: bool = False) -> list[dict[str, Any]]:
    return replay_rows(frames=20_000 if quick else FRAMES) + live_rows(
        seconds=1.0 if quick else LIVE_SECONDS)


def replay_rows(frames: int = FRAMES) -> list[dict[str, Any]]:
    import can

    from edge.sources.canlog import LogStats, iter_log_speed
    from edge.sources.dbc import speed_decoder

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "bus.log"
        dbc = Path(tmp) / "bench.dbc"
        dbc.write_text(BENCH_DBC)
        n_speed = write_log(log, frames)
        decoder = speed_decoder(dbc, "SPEED.SPEED", checksum="toyota")

        best_ours = best_base = float("inf")
        samples = 0
        for _ in range(3):
            stats = LogStats()
            t0 = time.process_time()
            samples = sum(1 for _ in iter_log_speed(log, decoder, stats))
            best_ours = min(best_ours, time.process_time() - t0)
            t0 = time.process_time()
            n_base = sum(1 for _ in can.LogReader(log))
            best_base = min(best_base, time.process_time() - t0)
        if samples != n_speed or stats.frames != frames or n_base != frames:
            raise RuntimeError(
                f"bench mismatch: {samples} samples of {n_speed}, {stats.frames} frames"
            )

    ours_fps = frames / best_ours
    base_fps = frames / best_base
    ours_us = best_ours / frames * 1e6
    base_us = best_base / frames * 1e6
    ratio = ours_us / base_us
    return [
        {
            "metric": "can_replay_frames_per_cpu_s",
            "value": round(ours_fps),
            "unit": "frames/s",
            "baseline": round(base_fps),
            "ratio": round(ours_fps / base_fps, 2),
            "goal": ">= 50000",
            "ok": ours_fps >= 50_000,
        },
        {
            "metric": "can_replay_cpu_us_per_frame",
            "value": round(ours_us, 3),
            "unit": "us/frame",
            "baseline": round(base_us, 3),
            "ratio": round(ratio, 3),
            "goal": "<= 0.5x python-can LogReader",
            "ok": ratio <= 0.5,
        },
    ]



# --------------------------------------------------------------------------- live bus
def live_traffic(rate: float = LIVE_RATE, seed: int = 2) -> tuple[list[Any], int]:
    """One second of bus traffic as python-can messages; returns (messages, speed frames).

    The speed frame comes every ``rate / 50`` frames (50 Hz), its speed ramping 0-120
    km/h with SPEED_VALID set and a rolling counter; the other 19 IDs take turns with
    random payloads."""
    import can

    rnd = random.Random(seed)
    background = [0x1A0, 0x4B0] + rnd.sample(
        [i for i in range(0x080, 0x7F0) if i not in (0x1A0, 0x4B0, LIVE_SPEED_ID)], 17)
    n = int(rate)
    every = max(1, n // LIVE_SPEED_HZ)
    msgs: list[Any] = []
    n_speed = 0
    for i in range(n):
        if i % every == every // 2:
            raw = int(n_speed * 240) % 12_001  # 0.01 km/h per bit
            data = bytearray(8)
            data[0:2] = raw.to_bytes(2, "little")
            data[2] = 0x01  # SPEED_VALID
            data[7] = n_speed & 0x0F
            msgs.append(can.Message(arbitration_id=LIVE_SPEED_ID, data=bytes(data),
                                    is_extended_id=False))
            n_speed += 1
        else:
            msgs.append(can.Message(arbitration_id=background[i % len(background)],
                                    data=rnd.randbytes(8), is_extended_id=False))
    return msgs, n_speed


def _sender_alone(msgs: list[Any], frames: int) -> float:
    """CPU seconds per frame of ``bus.send`` on a virtual channel with one listener (the
    deepcopy and queue put the sender pays in the live run), nobody else running."""
    from can.interfaces import virtual

    channel = f"bench-alone-{uuid.uuid4().hex[:8]}"
    tx = virtual.VirtualBus(channel=channel, receive_own_messages=False)
    rx = virtual.VirtualBus(channel=channel, receive_own_messages=False)
    try:
        cpu = 0.0
        sent = 0
        n = len(msgs)
        chunk = 10_000
        while sent < frames:
            t0 = time.process_time()
            for i in range(sent, min(frames, sent + chunk)):
                tx.send(msgs[i % n])
            cpu += time.process_time() - t0
            sent = min(frames, sent + chunk)
            rx.queue.queue.clear()  # nobody reads: keep memory flat (not timed)
        return cpu / frames
    finally:
        tx.shutdown()
        rx.shutdown()


def _pace(tx: Any, msgs: list[Any], total: int, rate: float, out: dict[str, Any]) -> None:
    """Send ``total`` frames at ``rate`` frames/s (as fast as it can when behind)."""
    n = len(msgs)
    sent = 0
    start = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        if due <= sent:
            time.sleep(0.0005)
            continue
        for i in range(sent, due):
            tx.send(msgs[i % n])
        sent = due
    out["sent"] = sent
    out["wall_s"] = time.perf_counter() - start


async def _live(msgs: list[Any], seconds: float,
                rate: float) -> dict[str, Any]:
    from can.interfaces import virtual

    from edge.config import CanConfig
    from edge.sources.can import CanSource

    channel = f"bench-live-{uuid.uuid4().hex[:8]}"
    cfg = CanConfig(interface="virtual", channel=channel, mode="dbc", dbc=DEMO_DBC,
                    speed_signal="VEHICLE_SPEED.SPEED_KMH")
    source = CanSource(cfg)
    samples = 0

    def emit(_sample: Any) -> None:
        nonlocal samples
        samples += 1

    tx = virtual.VirtualBus(channel=channel, receive_own_messages=False)
    task = asyncio.create_task(source.run(emit), name="bench-can-source")
    try:
        deadline = time.monotonic() + 10.0
        while source.state != "open" or len(virtual.channels.get(channel, [])) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"CanSource did not open the virtual bus: {source.health()}")
            await asyncio.sleep(0.01)
        rx_queue = next(q for q in virtual.channels[channel] if q is not tx.queue)
        total = int(seconds * rate)
        n = len(msgs)
        expected_speed = sum(1 for i in range(total) if msgs[i % n].arbitration_id
                             == LIVE_SPEED_ID)
        out: dict[str, Any] = {}
        sender = threading.Thread(target=_pace, args=(tx, msgs, total, rate, out),
                                  name="bench-can-sender", daemon=True)
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        sender.start()
        max_backlog = 0
        while sender.is_alive():
            max_backlog = max(max_backlog, rx_queue.qsize())
            await asyncio.sleep(0.05)
        sender.join()
        # the source has read everything once the bus queue is empty and every speed
        # frame sent is a sample or a counted drop
        deadline = time.monotonic() + 30.0
        def c() -> dict[str, int]:
            return source.counters

        while (rx_queue.qsize() or c()["samples"] + c()["dropped"] < expected_speed) and \
                time.monotonic() < deadline:
            max_backlog = max(max_backlog, rx_queue.qsize())
            await asyncio.sleep(0.001)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        return {"sent": out["sent"], "send_wall_s": out["wall_s"], "cpu_s": cpu,
                "wall_s": wall, "samples": samples, "expected_speed": expected_speed,
                "health": source.health(), "max_backlog": max_backlog,
                "left": rx_queue.qsize()}
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        tx.shutdown()


def live_bus(seconds: float = LIVE_SECONDS, rate: float = LIVE_RATE) -> dict[str, Any]:
    """Run the live-bus measurement; the raw numbers (see the module docstring)."""
    msgs, _ = live_traffic(rate)
    sender_cpu_per_frame = _sender_alone(msgs, min(int(seconds * rate), 100_000))
    from edge.daemon.loop import run_loop
    from edge.process import event_loop_name

    res: dict[str, Any] = run_loop(_live(msgs, seconds, rate))  # the daemon's loop
    res["loop"] = event_loop_name()
    res["sender_cpu_per_frame"] = sender_cpu_per_frame
    res["source_cpu_s"] = res["cpu_s"] - res["sent"] * sender_cpu_per_frame
    return res


def live_rows(seconds: float = LIVE_SECONDS, rate: float = LIVE_RATE) -> list[dict[str, Any]]:
    r = live_bus(seconds, rate)
    h = r["health"]
    if r["left"] or r["samples"] + h["dropped"] != r["expected_speed"]:
        raise RuntimeError(
            f"live bench: {r['left']} frames unread, {r['samples']} samples + "
            f"{h['dropped']} drops of {r['expected_speed']} speed frames")
    source_fps = r["sent"] / max(r["source_cpu_s"], 1e-9)
    sender_fps = 1.0 / r["sender_cpu_per_frame"]
    return [
        {
            "metric": "can_live_bus_frames_per_cpu_s",
            "value": round(source_fps),
            "unit": f"frames/s ({r['loop']}, {rate:,.0f}/s offered)",
            "baseline": round(sender_fps),  # the virtual bus sender alone
            "ratio": round(source_fps / sender_fps, 2),
            "goal": f">= {LIVE_GOAL}",
            "ok": source_fps >= LIVE_GOAL,
        },
        {
            "metric": "can_live_bus_queue_drops",
            "value": h["dropped"],
            "unit": "frames",
            "baseline": r["expected_speed"],  # speed frames sent
            "ratio": round(h["dropped"] / max(1, r["expected_speed"]), 4),
            "goal": "== 0",
            "ok": h["dropped"] == 0,
        },
        {
            "metric": "can_live_bus_read_wall_s",
            "value": round(r["wall_s"], 2),
            "unit": "s",
            "baseline": round(r["sent"] / rate, 2),  # the offered traffic's duration
            "ratio": round(r["wall_s"] / (r["sent"] / rate), 2),
            "goal": "<= 1.5x offered (keeps up)",
            "ok": r["wall_s"] <= 1.5 * r["sent"] / rate,
        },
    ]


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
