"""``Forwarder``: drains the outbox into a connected uplink through a window of publishes.

One per daemon; ``run(uplink, wake)`` serves one connection and returns only by raising
``UplinkError`` (the connection is lost) or being cancelled. The reconnect loop belongs
to the caller. ``health()`` reports the counters it owns.

One dispatcher loop walks the *stage*: units (``edge.forwarder.units``) made from rows
claimed in lane order (alerts, trip edges, telemetry, health) by the ``Lease``, in a
worker thread, ``2 * window`` at a time while fewer than ``window`` are staged. One
gate (``_gate``) decides whether the head of the stage may go out now; a publish task
holds one slot of the window and, when its PUBACK is in, takes the next unit the gate
lets go. At most ``window`` publishes await their PUBACK at once (pipelining: a 100 ms
round trip to AWS would otherwise cap a drain at 10 publishes/s) and one slot is kept
for alerts and trip edges.

* Urgent first: claimed alerts and trip edges go to the front of the stage. Before a
  telemetry or health publish the urgent lanes are claimed again -- always under the
  IoT quota (an alert waits at most for the quota tokens of the batch already being
  sent, <= 128 KiB at 512 KiB/s: 0.25 s), and without a quota whenever ``wake`` is set
  (new rows were written) or ``URGENT_RECHECK_S`` has passed.
* ``IotQuota`` (when the uplink has ``iot_quota``): 100 publishes/s and 512 KiB/s; the
  wait for its tokens is computed.
* Outcomes (``edge.forwarder.outcomes``): a row leaves the outbox only after its
  PUBACK; a rejected publish is dropped and counted; a ``PublishFailed`` holds every
  publish for a backoff, then one at a time probes until one succeeds (no reconnect).
* Every claimed row is settled or released before ``run`` returns (also when it is
  cancelled), in a worker thread: no SQLite write on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from edge.core.backoff import Backoff
from edge.core.ratelimit import IotQuota
from edge.errors import OutboxError, UplinkError
from edge.forwarder.lease import Lease
from edge.forwarder.outcomes import Outcomes
from edge.forwarder.units import Packer, Stage, Unit
from edge.logconf import Once
from edge.outbox import Outbox
from edge.uplinks.base import MAX_PAYLOAD, Uplink

log = structlog.get_logger()

# without a quota, staged telemetry gives way to new alerts at least this often
URGENT_RECHECK_S = 0.02
# nothing to send: the outbox is looked at again after this even without ``wake``
IDLE_S = 5.0


class Forwarder:
    def __init__(
        self,
        outbox: Outbox,
        *,
        thing: str,
        batch_max: int = 60,
        compression: str = "none",
        window: int = 64,
        once: Once | None = None,
        quota: bool = True,
        settle_linger_s: float = 0.005,
        settle_max: int = 512,
        retry: Backoff | None = None,
        on_publish_error: Callable[[str | None], None] | None = None,
    ) -> None:
        """``retry``: the backoff after a ``PublishFailed`` (default 0.5 s doubling to
        60 s); ``on_publish_error(reason)`` is told of a failing publish and, with
        ``None``, of the first success after it."""
        self.outbox = outbox
        self.thing = thing
        self.batch_max = max(1, batch_max)
        self.compression = compression
        self.window = max(1, window)
        self.settle_linger_s = settle_linger_s
        self.settle_max = max(1, settle_max)
        self._once = once or Once()
        self._quota = quota
        self.lease = Lease(outbox, once=self._once)
        self._out = Outcomes(self.lease, retry=retry or Backoff(base_s=0.5, cap_s=60.0),
                             once=self._once, on_publish_error=on_publish_error)
        self.counters = self._out.counters
        # one connection's state (reset by run)
        self._packer = Packer(thing=thing, batch_max=self.batch_max)
        self._staged = Stage()  # claimed, not yet published
        self._flying: set[asyncio.Task[None]] = set()  # publishes awaiting their PUBACK
        self._bulk_flying = 0  # ... of them telemetry or health
        self._changed = asyncio.Event()  # a publish ended, units were staged, link lost
        self._dry = False  # the last claim found nothing: wait for ``wake``
        self._bucket: IotQuota | None = None  # the IoT quota, when the uplink has one
        self._wake = asyncio.Event()  # new rows were written (run's argument)
        self._checked: Unit | None = None  # the bulk unit the urgent lanes were checked for
        self._next_urgent = 0.0  # without a quota: look for new alerts again from then

    def health(self) -> dict[str, Any]:
        """The counters this forwarder owns and what it holds now."""
        return {"counters": dict(self.counters), "leased": len(self.lease),
                "staged": len(self._staged), "in_flight": len(self._flying),
                "publish_failing": self._out.retry.attempts > 0}

    # ------------------------------------------------------------------ the loop

    async def run(self, uplink: Uplink, wake: asyncio.Event) -> None:
        """Serve one connection until it is lost (raises ``UplinkError``)."""
        self._bucket = IotQuota.aws() if self._quota and uplink.iot_quota else None
        compression = self.compression if uplink.user_properties else "none"
        if compression != self.compression:
            self._once(log, "no-compression", "uplink cannot declare content-encoding;"
                       " telemetry goes uncompressed", uplink=uplink.name)
        self._packer = Packer(thing=self.thing, batch_max=self.batch_max,
                              max_payload=min(MAX_PAYLOAD, uplink.max_payload),
                              compression=compression)
        self._staged, self._flying, self._bulk_flying = Stage(), set(), 0
        self._changed, self._dry = asyncio.Event(), False
        self._wake, self._checked, self._next_urgent = wake, None, 0.0
        self._out.reset()
        self.lease.open()
        helpers = [asyncio.create_task(self.lease.settle_loop(
                       linger_s=self.settle_linger_s, max_rows=self.settle_max), name="settle"),
                   asyncio.create_task(self._watch(uplink.lost), name="watch-lost")]
        refill: asyncio.Task[None] | None = None
        try:
            while True:
                self._changed.clear()
                self._raise_if_over(uplink, helpers)
                if refill is not None and refill.done():
                    refill.result()
                    refill = None
                if wake.is_set():
                    self._dry = False
                if (refill is None and len(self._staged) < self.window and not self._dry
                        and not self.lease.settle_failing):
                    wake.clear()
                    refill = asyncio.create_task(self._refill(), name="claim")
                now = time.monotonic()
                verdict, unit, timeout = self._gate(now, own_slot=False)
                if unit is not None:
                    self._launch(uplink, unit)
                elif verdict == "urgent":  # new alerts and trip edges to the front
                    self._checked = self._staged[0]
                    self._next_urgent, self._dry = now + URGENT_RECHECK_S, False
                    wake.clear()
                    await self._claim_urgent()
                elif verdict == "empty":
                    dry = refill is None and self._dry
                    await self._wait(0.1 if self.lease.settle_failing else IDLE_S,
                                     wake if dry else None)
                    if dry:  # woken by new rows, or looking again after IDLE_S
                        self._dry = False
                else:
                    await self._wait(timeout)
        finally:
            tasks = [*helpers, *self._flying, *([refill] if refill is not None else [])]
            try:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await self.lease.close()

    def _gate(self, now: float, *, own_slot: bool) -> tuple[str, Unit | None, float]:
        """May the head of the stage go out now? ``("go", unit, 0)`` (popped), else why
        not: ``"empty"``, ``"urgent"`` (look for new alerts first) or ``"wait"`` (for a
        slot, the backoff or the quota: at most ``timeout``). ``own_slot``: asked by a
        publish task that holds a slot of the window already."""
        if not self._staged or self._out.failed is not None:
            return "empty", None, 0.0
        unit = self._staged[0]
        quota = self._bucket
        flying = len(self._flying) - own_slot
        full = flying >= self.window
        bulk_full = full or (self.window > 1 and self._bulk_flying >= self.window - 1)
        if not unit.urgent and not full and (
                (quota is not None and not bulk_full and unit is not self._checked)
                or (quota is None and (self._wake.is_set() or now >= self._next_urgent))):
            # under the quota just before a bulk publish, else now and then
            return "urgent", None, 0.0
        hold = self._out.hold_until - now
        if self._out.retry.attempts:  # publishes fail: wait, then one at a time
            if hold > 0 or flying:
                return "wait", None, max(0.0, hold) or IDLE_S
        elif full or (bulk_full and not unit.urgent):
            return "wait", None, (IDLE_S if quota is not None or unit.urgent
                                  else max(0.0, self._next_urgent - now))
        if quota is not None:
            delay = quota.delay(now, len(unit.payload))
            if delay > 0:
                return "wait", None, delay
        return "go", self._staged.popleft(), 0.0

    def _raise_if_over(self, uplink: Uplink, helpers: list[asyncio.Task[None]]) -> None:
        if self._out.failed is not None:
            raise self._out.failed
        if uplink.lost.is_set():
            raise UplinkError("connection lost")
        for h in helpers:
            if h.done():
                h.result()  # the settler only ends by raising

    async def _wait(self, timeout: float, wake: asyncio.Event | None = None) -> None:
        """Until something changed (a publish ended, units were staged, the link was
        lost), ``wake`` is set (new rows) or ``timeout``."""
        if wake is None:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            except TimeoutError:
                pass
            return
        waits = [asyncio.ensure_future(self._changed.wait()), asyncio.ensure_future(wake.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _watch(self, lost: asyncio.Event) -> None:
        await lost.wait()
        self._changed.set()

    # ------------------------------------------------------------------ claiming

    async def _refill(self) -> None:
        try:
            units = await asyncio.to_thread(self._packer.claim, self.lease, 2 * self.window)
        except OutboxError as exc:
            # a full or failing disk: the rows stay where they are
            self.counters["outbox_errors"] += 1
            self._once(log, "claim", "outbox claim failed, retrying", reason=str(exc))
            await asyncio.sleep(1.0)
            self._changed.set()
            return
        self._once.clear("claim")
        self._dry = not units
        self._staged.add(units)
        self._changed.set()

    async def _claim_urgent(self) -> None:
        """New alerts and trip edges to the front of the stage."""
        try:
            units = await asyncio.to_thread(self._packer.claim, self.lease, self.window,
                                            urgent_only=True)
        except OutboxError:
            return
        self._staged.add(units)

    # ------------------------------------------------------------------ publishing

    def _launch(self, uplink: Uplink, unit: Unit) -> None:
        self._take_slot(unit)
        task = asyncio.create_task(self._publish(uplink, unit), name="publish")
        self._flying.add(task)
        task.add_done_callback(self._landed)

    def _take_slot(self, unit: Unit) -> None:
        if not unit.urgent:
            self._bulk_flying += 1

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._flying.discard(task)
        self._changed.set()

    async def _publish(self, uplink: Uplink, unit: Unit) -> None:
        """Publish ``unit``, then -- holding the same slot of the window -- every next
        unit the gate lets go at once; anything else is the dispatcher's to decide."""
        next_unit: Unit | None = unit
        while next_unit is not None:
            unit = next_unit
            try:
                await self._out.send(uplink, unit, self._staged)
            finally:
                if not unit.urgent:
                    self._bulk_flying -= 1
            next_unit = self._gate(time.monotonic(), own_slot=True)[1]
            if next_unit is not None:
                self._take_slot(next_unit)
                if len(self._staged) < self.window:
                    self._changed.set()  # the dispatcher claims more
