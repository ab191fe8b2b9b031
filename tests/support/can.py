"""Shared by the CAN source tests: a one-signal DBC (big-endian speed) and helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DBC = """VERSION ""

BS_:

BU_: ECU

BO_ 180 SPEED: 8 ECU
 SG_ SPEED : 47|16@0+ (0.01,0) [0|250] "km/h" ECU
"""


def frame(kmh: float) -> bytes:
    """An 8-byte SPEED frame carrying ``kmh`` per DBC."""
    data = bytearray(8)
    data[5:7] = round(kmh * 100).to_bytes(2, "big")
    return bytes(data)


async def until(cond: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
