"""OBD-II polling for the CAN source: send the requests ``edge.core.obd.ObdPoller``
decides on, and turn the answers into samples (``edge.core.obd.to_sample``): speed, and
engine speed and coolant temperature as ``SignalSample``s for telemetry -- the same
mapping log replay uses, so a recorded OBD session replays into the same telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from edge.config import CanConfig
from edge.core.obd import REQUEST_ID, ObdPoller, to_sample
from edge.model import SignalSample, SpeedSample

# the kernel filter for the answers (0x7E8-0x7EF)
RESPONSE_FILTER = [{"can_id": 0x7E8, "can_mask": 0x7F8, "extended": False}]


class ObdSession:
    """What the source does in OBD mode: ``poll(bus, fail)`` sends requests until the
    bus fails; ``on_frame`` turns an answer into samples and lets the next request go."""

    def __init__(self, config: CanConfig) -> None:
        self.config = config
        self.poller = ObdPoller(
            interval_s=config.obd_interval_s,
            timeout_s=config.obd_timeout_s,
            max_pids=config.obd_max_pids,
            backoff_max_s=config.reopen_max_s,
        )
        self.send_errors = 0
        self._kick: asyncio.Event | None = None

    @property
    def frame_ids(self) -> frozenset[int]:
        return self.poller.frame_ids

    @property
    def extended(self) -> bool:
        return self.poller.extended

    def health(self) -> dict[str, Any]:
        return {**self.poller.stats.as_dict(), **self.poller.telemetry()}

    def on_frame(self, arbitration_id: int, data: bytes, time: float, mono: float
                 ) -> list[SpeedSample | SignalSample]:
        poller = self.poller
        busy = bool(poller.outstanding)
        values = poller.on_frame(arbitration_id, data, mono)
        if busy and not poller.outstanding and self._kick is not None:
            self._kick.set()  # answered: the next request may go now
        return [s for s in (to_sample(v, time, mono) for v in values) if s is not None]

    async def poll(self, bus: Any, fail: Callable[[str], None]) -> None:
        """Send the poller's requests on ``bus`` until cancelled or a send fails."""
        import can

        poller = self.poller
        kick = self._kick = asyncio.Event()
        while True:
            frame = poller.poll(time.monotonic())
            if frame is not None:
                msg = can.Message(arbitration_id=REQUEST_ID, data=frame, is_extended_id=False)
                try:
                    bus.send(msg, timeout=0.05)
                except Exception as exc:
                    self.send_errors += 1
                    fail(f"send failed: {exc}")
                    return
            wait = poller.next_wakeup(time.monotonic())
            kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    kick.wait(), min(max(wait, 0.005), self.config.obd_interval_s)
                )
