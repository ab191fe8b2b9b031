"""``Forwarder``: drains the outbox into a connected uplink through a window of publishes.

One per daemon; ``run(uplink, wake)`` serves one connection and returns only by raising
``UplinkError`` (the connection is lost) or being cancelled. The reconnect loop belongs
to the caller. ``health()`` reports the counters it owns.

One dispatcher loop walks the *stage*: units (``edge.forwarder.units``) made from rows
claimed in lane order (alerts, trip edges, telemetry, health) by the ``Lease``, in a
worker thread, ``2 * window`` at a time while fewer than ``window`` are staged. Each
unit is published by a task of its own; at most ``window`` publishes await their
PUBACK at once (pipelining: a 100 ms round trip to AWS would otherwise cap a drain at
10 publishes/s) and one slot of the window is kept for alerts and trip edges.

* Urgent first: claimed alerts and trip edges go to the front of the stage. Before a
  telemetry or health publish the urgent lanes are claimed again -- always under the
  IoT quota (an alert waits at most for the quota tokens of the batch already being
  sent, <= 128 KiB at 512 KiB/s: 0.25 s), and without a quota whenever ``wake`` is set
  (new rows were written) or ``URGENT_RECHECK_S`` has passed.
* ``IotQuota`` (when the uplink has ``iot_quota``): 100 publishes/s and 512 KiB/s.
* Outcomes: PUBACK < 0x80 -> ack (rows leave); ``PublishRejected`` -> reject (dropped
  and counted, never retried); ``PublishFailed`` (this publish failed on a working
  connection: nucleus lite offline) -> the unit goes back to the stage in its lane
  order, no publish starts for a capped, jittered backoff, then one at a time probes
  until one succeeds (the backoff resets; counted in ``publish_failures``, logged once,
  ``on_publish_error`` told; no reconnect); any other ``UplinkError`` -> the connection
  is given up. A row leaves the outbox only after its PUBACK.
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
from edge.errors import OutboxError, PublishFailed, PublishRejected, UplinkError
from edge.forwarder.lease import Lease
from edge.forwarder.units import Packer, Stage, Unit
from edge.logconf import Once
from edge.outbox import Outbox
from edge.uplinks.base import MAX_PAYLOAD, Uplink

log = structlog.get_logger()

# without a quota, staged telemetry gives way to new alerts at least this often
URGENT_RECHECK_S = 0.02
# nothing to send: the outbox is looked at again after this even without ``wake``
IDLE_S = 5.0
COUNTERS = ("published", "publish_batches", "rejected", "bytes_sent", "publish_failures",
            "outbox_errors")


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
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._retry = retry or Backoff(base_s=0.5, cap_s=60.0)
        self._on_publish_error = on_publish_error
        self._once = once or Once()
        self._quota = quota
        self.lease = Lease(outbox, once=self._once)
        # one connection's state (reset by run)
        self._packer = Packer(thing=thing, batch_max=self.batch_max)
        self._staged = Stage()  # claimed, not yet published
        self._flying: set[asyncio.Task[None]] = set()  # publishes awaiting their PUBACK
        self._bulk_flying = 0  # ... of them telemetry or health
        self._changed = asyncio.Event()  # a publish ended, units were staged, link lost
        self._failed: BaseException | None = None
        self._hold_until = 0.0  # after a PublishFailed, no publish before this (monotonic)
        self._dry = False  # the last claim found nothing: wait for ``wake``

    def health(self) -> dict[str, Any]:
        """The counters this forwarder owns and what it holds now."""
        return {"counters": dict(self.counters), "leased": len(self.lease),
                "staged": len(self._staged), "in_flight": len(self._flying),
                "publish_failing": self._retry.attempts > 0}

    # ------------------------------------------------------------------ the loop

    async def run(self, uplink: Uplink, wake: asyncio.Event) -> None:
        """Serve one connection until it is lost (raises ``UplinkError``)."""
        quota = IotQuota.aws() if self._quota and uplink.iot_quota else None
        compression = self.compression if uplink.user_properties else "none"
        if compression != self.compression:
            self._once(log, "no-compression", "uplink cannot declare content-encoding;"
                       " telemetry goes uncompressed", uplink=uplink.name)
        self._packer = Packer(thing=self.thing, batch_max=self.batch_max,
                              max_payload=min(MAX_PAYLOAD, uplink.max_payload),
                              compression=compression)
        self._staged, self._flying, self._bulk_flying = Stage(), set(), 0
        self._changed, self._failed, self._hold_until, self._dry = asyncio.Event(), None, 0.0, False
        self._retry.reset()
        self.lease.open()
        helpers = [asyncio.create_task(self.lease.settle_loop(
                       linger_s=self.settle_linger_s, max_rows=self.settle_max), name="settle"),
                   asyncio.create_task(self._watch(uplink.lost), name="watch-lost")]
        refill: asyncio.Task[None] | None = None
        try:
            checked: Unit | None = None  # the bulk unit the urgent lanes were checked for
            next_urgent = 0.0
            while True:
                self._changed.clear()
                self._raise_if_over(uplink, helpers)
                if refill is not None and refill.done():
                    refill.result()
                    refill = None
                if wake.is_set():
                    self._dry = False
                staged = self._staged
                if (refill is None and len(staged) < self.window and not self._dry
                        and not self.lease.settle_failing):
                    wake.clear()
                    refill = asyncio.create_task(self._refill(), name="claim")
                if not staged:
                    dry = refill is None and self._dry
                    await self._wait(0.1 if self.lease.settle_failing else IDLE_S,
                                     wake if dry else None)
                    self._dry = False if dry else self._dry
                    continue
                unit = staged[0]
                now = time.monotonic()
                full = len(self._flying) >= self.window
                bulk_full = full or (self.window > 1 and self._bulk_flying >= self.window - 1)
                if not unit.urgent and not full and (
                        (quota is not None and not bulk_full and unit is not checked)
                        or (quota is None and (wake.is_set() or now >= next_urgent))):
                    # under the quota just before a bulk publish, else now and then
                    checked, next_urgent, self._dry = unit, now + URGENT_RECHECK_S, False
                    wake.clear()
                    if await self._claim_urgent():
                        continue
                if self._retry.attempts:  # publishes fail: wait, then one at a time
                    if self._hold_until > now or self._flying:
                        await self._wait(max(0.0, self._hold_until - now) or IDLE_S)
                        continue
                elif full or (bulk_full and not unit.urgent):
                    await self._wait(IDLE_S if quota is not None or unit.urgent
                                     else max(0.0, next_urgent - now))
                    continue
                if quota is not None:
                    delay = quota.delay(now, len(unit.payload))
                    if delay > 0:
                        await self._wait(delay)
                        continue
                self._launch(uplink, staged.popleft())
        finally:
            tasks = [*helpers, *self._flying, *([refill] if refill is not None else [])]
            try:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await self.lease.close()

    def _raise_if_over(self, uplink: Uplink, helpers: list[asyncio.Task[None]]) -> None:
        if self._failed is not None:
            raise self._failed
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

    async def _claim_urgent(self) -> bool:
        """New alerts and trip edges to the front of the stage; whether there were any."""
        try:
            units = await asyncio.to_thread(self._packer.claim, self.lease, self.window,
                                            urgent_only=True)
        except OutboxError:
            return False
        self._staged.add(units)
        return bool(units)

    # ------------------------------------------------------------------ publishing

    def _launch(self, uplink: Uplink, unit: Unit) -> None:
        task = asyncio.create_task(self._send(uplink, unit), name="publish")
        self._flying.add(task)
        if not unit.urgent:
            self._bulk_flying += 1
        task.add_done_callback(lambda t: self._landed(t, unit))

    def _landed(self, task: asyncio.Task[None], unit: Unit) -> None:
        self._flying.discard(task)
        if not unit.urgent:
            self._bulk_flying -= 1
        self._changed.set()

    async def _send(self, uplink: Uplink, unit: Unit) -> None:
        try:
            await uplink.publish(unit.topic, unit.payload, qos=1,
                                 user_properties=unit.user_properties)
        except PublishRejected as exc:
            self.counters["rejected"] += len(unit.seqs)
            self._once(log, f"rejected:{unit.topic}", "publish rejected, dropped",
                       topic=unit.topic, rows=len(unit.seqs), reason=str(exc))
            self.lease.reject(unit.seqs)
        except PublishFailed as exc:
            self._publish_failed(unit, exc)
        except UplinkError as exc:
            self._failed = self._failed or exc  # its rows are released at the end of run
        except TimeoutError:
            self._failed = self._failed or UplinkError(f"no PUBACK for {unit.topic}")
        except Exception as exc:  # a defect: run() raises it
            self._failed = self._failed or exc
        else:
            self._published(unit)

    def _publish_failed(self, unit: Unit, exc: PublishFailed) -> None:
        """The connection works, this publish did not: the unit again after a backoff."""
        self.counters["publish_failures"] += 1
        now = time.monotonic()
        if self._hold_until <= now:  # one backoff step per failing round
            delay = self._retry.next()
            self._hold_until = now + delay
            self._once(log, "publish-failed", "publish failed, retrying with backoff",
                       topic=unit.topic, reason=str(exc), retry_in_s=round(delay, 2))
            if self._on_publish_error is not None:
                self._on_publish_error(str(exc))
        self._staged.put_back(unit)

    def _published(self, unit: Unit) -> None:
        if self._retry.attempts:
            self._retry.reset()
            self._once.clear("publish-failed")
            log.info("publish works again", topic=unit.topic)
            if self._on_publish_error is not None:
                self._on_publish_error(None)
        self.counters["published"] += len(unit.seqs)
        self.counters["publish_batches"] += 1
        self.counters["bytes_sent"] += len(unit.payload)
        self.lease.ack(unit.seqs)
