"""CAN replay throughput: log -> ID filter -> speed decode, vs python-can's bare read.

A generated candump -L log of ~200,000 frames at ~2,000 frames/s (a busy 500 kbit/s
powertrain bus), 20 IDs, the speed message (big-endian 16-bit, Toyota-style checksum)
one of them. Both sides are timed with ``time.process_time`` in the same run:

- ours: ``iter_log_speed`` end to end (read, filter, decode, checksum, SpeedSample);
- baseline: ``for msg in can.LogReader(path)`` with no decoding at all.

Run: ``.venv/bin/python -m bench.bench_can`` (prints a table; ``run()`` returns rows).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

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


def run() -> list[dict[str, Any]]:
    import can

    from edge.core.canlog import LogStats, iter_log_speed
    from edge.core.canspeed import DbcSpeedDecoder

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "bus.log"
        dbc = Path(tmp) / "bench.dbc"
        dbc.write_text(BENCH_DBC)
        n_speed = write_log(log)
        decoder = DbcSpeedDecoder(dbc, "SPEED.SPEED", checksum="toyota")

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
        if samples != n_speed or stats.frames != FRAMES or n_base != FRAMES:
            raise RuntimeError(
                f"bench mismatch: {samples} samples of {n_speed}, {stats.frames} frames"
            )

    ours_fps = FRAMES / best_ours
    base_fps = FRAMES / best_base
    ours_us = best_ours / FRAMES * 1e6
    base_us = best_base / FRAMES * 1e6
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


if __name__ == "__main__":
    for row in run():
        print(row)
