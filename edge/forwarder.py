"""Drains the outbox into a connected uplink: alerts first, telemetry batched, quotas kept.

One ``Forwarder`` per daemon; ``run(uplink, wake)`` serves one connection and returns
only by raising ``UplinkError`` (connection lost) or being cancelled. The reconnect
loop belongs to the caller.

Scheduling, one *publish unit* at a time (a unit is one MQTT publish and the outbox
rows it carries):

* Up to ``window`` units await their PUBACK at once (pipelining: a 100 ms round trip
  to AWS would otherwise cap a drain at 10 publishes/s). One slot is kept for alerts.
* Before every telemetry batch the alert and trip lanes are claimed again, so a new
  alert never queues behind the backlog: it waits at most for the quota tokens of the
  batch already being sent (<= 128 KiB at 512 KiB/s: 0.25 s).
* Telemetry rows are claimed ``batch_max`` at a time and published as one
  ``telemetry_batch`` (<= 128 KiB before compression). With ``compression`` gzip or
  zstd and an uplink that carries MQTT 5 user properties, the batch is compressed and
  declared with the user property ``content-encoding``; otherwise it goes as JSON.
* ``IotQuota``: 100 publishes/s and 512 KiB/s (bytes on the wire) per connection.
* Outcomes: PUBACK < 0x80 -> ``ack`` (rows leave); ``PublishRejected`` -> ``reject``
  (dropped and counted, never retried); anything else -> ``release`` (back to ready,
  same place). Every claimed row is settled or released before ``run`` returns.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from edge.core.ratelimit import IotQuota
from edge.core.telemetry import batch_payload, split_batches
from edge.errors import OutboxError, PublishRejected, UplinkError
from edge.logconf import Once
from edge.model import Lane
from edge.outbox import Outbox, Row
from edge.uplinks.base import MAX_PAYLOAD, Uplink

log = structlog.get_logger()

URGENT = (Lane.ALERT, Lane.TRIP)
CONTENT_ENCODING = "content-encoding"


@dataclass(frozen=True, slots=True, kw_only=True)
class Unit:
    topic: str
    payload: bytes
    seqs: tuple[int, ...]
    lane: Lane
    user_properties: tuple[tuple[str, str], ...] = ()


def compress(data: bytes, method: str) -> bytes:
    if method == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if method == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor(level=3).compress(data))
    raise ValueError(f"unknown compression {method!r}")


def decompress(data: bytes, method: str) -> bytes:
    """The consumer's side (tests, tools): undo ``compress``."""
    if method == "gzip":
        return gzip.decompress(data)
    if method == "zstd":
        import zstandard

        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=16 * MAX_PAYLOAD)
        return bytes(out)
    if method in ("", "identity", "none"):
        return data
    raise ValueError(f"unknown content-encoding {method!r}")


async def _take(quota: IotQuota, nbytes: int) -> None:
    """Wait for the quota tokens of one publish (a token bucket: the wait is computed)."""
    delay = quota.delay(time.monotonic(), nbytes)
    for _ in range(1000):
        if delay <= 0:
            return
        await asyncio.sleep(delay)
        delay = quota.delay(time.monotonic(), nbytes)


def carries_user_properties(uplink: Any) -> bool:
    return bool(getattr(uplink, "user_properties", False))


class Forwarder:
    def __init__(
        self,
        outbox: Outbox,
        *,
        thing: str,
        batch_max: int = 60,
        compression: str = "none",
        window: int = 16,
        counters: dict[str, int] | None = None,
        once: Once | None = None,
        quota: bool = True,
    ) -> None:
        self.outbox = outbox
        self.thing = thing
        self.batch_max = batch_max
        self.compression = compression
        self.window = max(1, window)
        self.counters = counters if counters is not None else {}
        for k in ("published", "publish_batches", "rejected", "bytes_sent"):
            self.counters.setdefault(k, 0)
        self._once = once or Once()
        self._quota = quota
        self._claimed: dict[int, None] = {}  # rows claimed and not yet settled
        self._failed: UplinkError | None = None

    # ------------------------------------------------------------------ picking units

    def _next_units(self, free: int, bulk_ok: bool, compress_ok: bool) -> list[Unit]:
        """Claim the rows of the next publishes (runs in a worker thread)."""
        rows = self.outbox.claim(free, lanes=URGENT)
        if rows:
            self._remember(rows)
            return [Unit(topic=r.topic, payload=r.payload, seqs=(r.seq,), lane=r.lane)
                    for r in rows]
        if not bulk_ok:
            return []
        rows = self.outbox.claim(self.batch_max, lanes=(Lane.TELEMETRY,))
        if rows:
            self._remember(rows)
            return self._telemetry_units(rows, compress_ok)
        rows = self.outbox.claim(max(1, free - 1), lanes=(Lane.HEALTH,))
        self._remember(rows)
        return [Unit(topic=r.topic, payload=r.payload, seqs=(r.seq,), lane=r.lane)
                for r in rows]

    def _remember(self, rows: Sequence[Row]) -> None:
        for r in rows:
            self._claimed[r.seq] = None

    def _telemetry_units(self, rows: list[Row], compress_ok: bool) -> list[Unit]:
        units = []
        groups = split_batches([r.payload for r in rows], max_records=self.batch_max,
                               max_bytes=MAX_PAYLOAD)
        for g in groups:
            payload = batch_payload(self.thing, [rows[i].payload for i in g])
            props: tuple[tuple[str, str], ...] = ()
            if compress_ok and self.compression != "none":
                payload = compress(payload, self.compression)
                props = ((CONTENT_ENCODING, self.compression),)
            units.append(Unit(topic=rows[g[0]].topic, payload=payload,
                              seqs=tuple(rows[i].seq for i in g), lane=Lane.TELEMETRY,
                              user_properties=props))
        return units

    # ------------------------------------------------------------------ the loop

    async def run(self, uplink: Uplink, wake: asyncio.Event) -> None:
        """Serve one connection until it is lost (raises ``UplinkError``)."""
        lost: asyncio.Event | None = getattr(uplink, "lost", None)
        quota = IotQuota.aws() if self._quota and uplink.name != "file" else None
        compress_ok = self.compression != "none" and carries_user_properties(uplink)
        if self.compression != "none" and not compress_ok:
            self._once(log, "no-compression", "uplink cannot declare content-encoding;"
                       " telemetry goes uncompressed", uplink=uplink.name)
        tasks: set[asyncio.Task[None]] = set()
        self._failed = None
        try:
            while True:
                if self._failed is not None:
                    raise self._failed
                if lost is not None and lost.is_set():
                    raise UplinkError("connection lost")
                free = self.window - len(tasks)
                units: list[Unit] = []
                if free > 0:
                    wake.clear()
                    bulk_ok = len(tasks) < self.window - 1 or self.window == 1
                    try:
                        units = await asyncio.to_thread(self._next_units, free, bulk_ok,
                                                        compress_ok)
                    except OutboxError as exc:
                        # a full or failing disk: the rows stay where they are
                        self.counters["outbox_errors"] = self.counters.get("outbox_errors", 0) + 1
                        self._once(log, "claim", "outbox claim failed, retrying",
                                   reason=str(exc))
                        await asyncio.sleep(1.0)
                        continue
                    self._once.clear("claim")
                if not units:
                    await self._idle(wake, lost, tasks)
                    continue
                for unit in units:
                    if quota is not None:
                        await _take(quota, len(unit.payload))
                    t = asyncio.create_task(self._send(uplink, unit),
                                            name=f"publish-{unit.seqs[0]}")
                    tasks.add(t)
                    t.add_done_callback(tasks.discard)
        finally:
            for t in list(tasks):
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._release_unsettled()

    async def _idle(self, wake: asyncio.Event, lost: asyncio.Event | None,
                    tasks: set[asyncio.Task[None]]) -> None:
        helpers = [asyncio.ensure_future(wake.wait())]
        if lost is not None:
            helpers.append(asyncio.ensure_future(lost.wait()))
        try:
            await asyncio.wait([*helpers, *tasks], timeout=5.0,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for h in helpers:
                h.cancel()

    async def _send(self, uplink: Uplink, unit: Unit) -> None:
        outcome = "release"
        try:
            await uplink.publish(unit.topic, unit.payload, qos=1,
                                 user_properties=unit.user_properties)
            outcome = "ack"
        except PublishRejected as exc:
            outcome = "reject"
            self.counters["rejected"] += len(unit.seqs)
            self._once(log, f"rejected:{unit.topic}", "publish rejected, dropped",
                       topic=unit.topic, rows=len(unit.seqs), reason=str(exc))
        except UplinkError as exc:
            if self._failed is None:
                self._failed = exc
        except TimeoutError:
            if self._failed is None:
                self._failed = UplinkError(f"no PUBACK for {unit.topic}")
        if outcome == "ack":
            self.counters["published"] += len(unit.seqs)
            self.counters["publish_batches"] += 1
            self.counters["bytes_sent"] += len(unit.payload)
        if outcome == "release":
            return  # released together at the end of run()
        try:
            await asyncio.to_thread(self._settle, unit.seqs, outcome)
        except OutboxError as exc:
            self._once(log, "settle", "outbox could not settle delivered rows;"
                       " they will be sent again", reason=str(exc))

    def _settle(self, seqs: Sequence[int], outcome: str) -> None:
        if outcome == "ack":
            self.outbox.ack(seqs)
        else:
            self.outbox.reject(seqs)
        for s in seqs:
            self._claimed.pop(s, None)

    def _release_unsettled(self) -> None:
        seqs = list(self._claimed)
        if not seqs:
            return
        try:
            self.outbox.release(seqs)
        except OutboxError as exc:
            # they are in flight on disk: the next open makes them ready again
            self._once(log, "release", "outbox could not release rows", reason=str(exc))
            return
        for s in seqs:
            self._claimed.pop(s, None)
