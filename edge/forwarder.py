"""Drains the outbox into a connected uplink: alerts first, telemetry batched, quotas kept.

One ``Forwarder`` per daemon; ``run(uplink, wake)`` serves one connection and returns
only by raising ``UplinkError`` (connection lost) or being cancelled. The reconnect
loop belongs to the caller.

Scheduling, one *publish unit* at a time (a unit is one MQTT publish and the outbox
rows it carries):

* Up to ``window`` units await their PUBACK at once (pipelining: a 100 ms round trip
  to AWS would otherwise cap a drain at 10 publishes/s). One slot is kept for alerts.
* Rows are claimed many at a time (up to a window of units per worker-thread hop) and
  staged in memory, so the outbox is not visited once per publish.
* A new alert never queues behind the staged backlog: before a telemetry or health
  publish the alert and trip lanes are claimed again — always under the IoT quota (an
  alert waits at most for the quota tokens of the batch already being sent, <= 128 KiB
  at 512 KiB/s: 0.25 s), and without a quota whenever ``wake`` is set (new rows were
  written) or ``URGENT_RECHECK_S`` has passed.
* Telemetry rows are claimed ``batch_max`` per unit and published as one
  ``telemetry_batch`` of at most the uplink's ``max_payload`` bytes before compression
  (128 KiB; ~7 kB through nucleus lite's IPC): batches are split by bytes, not only by
  count. With ``compression`` gzip or zstd and an uplink that carries MQTT 5 user
  properties, the batch is compressed and declared with the user property
  ``content-encoding``; otherwise it goes as JSON.
* ``IotQuota``: 100 publishes/s and 512 KiB/s (bytes on the wire) per connection.
* Outcomes: PUBACK < 0x80 -> ``ack`` (rows leave); ``PublishRejected`` -> ``reject``
  (dropped and counted, never retried); ``PublishFailed`` (this publish failed on a
  working connection: nucleus lite offline) -> the unit goes back to the head of the
  stage, every worker holds off for a capped, jittered backoff, then one publish at a
  time probes until one succeeds (the backoff resets; counted in ``publish_failures``,
  logged once; no reconnect); any other ``UplinkError`` -> the connection is given up
  (rows back to ready, same place). A row leaves the outbox only after its PUBACK. Acks
  and rejects are queued and settled in batches by one task, one transaction per batch
  (flushed ``settle_linger_s`` after the first outcome, at once from ``settle_max``).
* Every claimed row is settled or released before ``run`` returns (also when it is
  cancelled): the queued outcomes and the releases go in one last transaction.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from edge.core.backoff import Backoff
from edge.core.ratelimit import IotQuota
from edge.core.telemetry import batch_payload, split_batches
from edge.errors import OutboxError, PublishFailed, PublishRejected, UplinkError
from edge.logconf import Once
from edge.model import Lane
from edge.outbox import Outbox, Row
from edge.uplinks.base import MAX_PAYLOAD, Uplink

log = structlog.get_logger()

URGENT = (Lane.ALERT, Lane.TRIP)
CONTENT_ENCODING = "content-encoding"
# without a quota, staged telemetry gives way to new alerts at least this often
URGENT_RECHECK_S = 0.02
# rows claimed per worker-thread hop: urgent lanes / telemetry
CLAIM_ROWS = 256
CLAIM_TELEMETRY_ROWS = 1024  # ~0.5 MB of payloads in memory; 10 hops/s cover the quota


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


class Forwarder:
    def __init__(
        self,
        outbox: Outbox,
        *,
        thing: str,
        batch_max: int = 60,
        compression: str = "none",
        window: int = 64,
        counters: dict[str, int] | None = None,
        once: Once | None = None,
        quota: bool = True,
        settle_linger_s: float = 0.005,
        settle_max: int = 512,
        retry: Backoff | None = None,
        on_publish_error: Callable[[str | None], None] | None = None,
    ) -> None:
        """``retry``: the backoff after a ``PublishFailed`` (default 0.5 s doubling to
        60 s); ``on_publish_error(reason)`` is told of a failing publish and, with
        ``None``, of the first success after it (health)."""
        self.outbox = outbox
        self.thing = thing
        self.batch_max = max(1, batch_max)
        self.compression = compression
        self.window = max(1, window)
        self.settle_linger_s = settle_linger_s
        self.settle_max = max(1, settle_max)
        self.counters = counters if counters is not None else {}
        self._retry = retry or Backoff(base_s=0.5, cap_s=60.0)
        self._on_publish_error = on_publish_error
        self._hold_until = 0.0  # after a PublishFailed, no publish before this (monotonic)
        self._probe = asyncio.Lock()  # while publishes fail, one at a time tries
        self._max_payload = MAX_PAYLOAD
        for k in ("published", "publish_batches", "rejected", "bytes_sent",
                  "publish_failures"):
            self.counters.setdefault(k, 0)
        self._once = once or Once()
        self._quota = quota
        # rows claimed and not yet settled; changed only together with the outbox call
        # that claims or settles them, under ``_book`` (worker threads and the final
        # settlement on the event loop agree on it)
        self._claimed: dict[int, None] = {}
        self._book = threading.RLock()
        # outcomes waiting for the settler (event-loop thread only)
        self._acks: list[int] = []
        self._rejects: list[int] = []
        self._outcome = asyncio.Event()
        self._need = asyncio.Event()  # a worker wants more staged units
        self._staged: deque[Unit] = deque()  # claimed, not yet published, in order
        self._parked: deque[asyncio.Future[None]] = deque()  # idle workers
        self._bulk_busy = 0  # workers publishing telemetry or health
        self._settling: tuple[list[int], list[int]] = ([], [])  # the batch being settled
        self._settle_failing = False
        self._failed: UplinkError | None = None

    # ------------------------------------------------------------------ picking units

    def _next_units(self, want: int, urgent_only: bool, compress_ok: bool) -> list[Unit]:
        """Claim the rows of up to ``want`` publishes, best lane first (a worker thread).

        Raises ``OutboxError`` only when nothing could be claimed."""
        units: list[Unit] = []
        with self._book:
            try:
                rows = self.outbox.claim(min(want, CLAIM_ROWS), lanes=URGENT)
                self._remember(rows)
                units += [_single(r) for r in rows]
                if urgent_only or len(units) >= want:
                    return units
                room = want - len(units)
                rows = self.outbox.claim(min(room * self.batch_max, CLAIM_TELEMETRY_ROWS),
                                         lanes=(Lane.TELEMETRY,))
                if rows:
                    self._remember(rows)
                    return units + self._telemetry_units(rows, compress_ok)
                rows = self.outbox.claim(room, lanes=(Lane.HEALTH,))
                self._remember(rows)
                return units + [_single(r) for r in rows]
            except OutboxError:
                if units:
                    return units  # what was claimed goes out; the rest waits
                raise

    def _remember(self, rows: Sequence[Row]) -> None:
        for r in rows:
            self._claimed[r.seq] = None

    def _telemetry_units(self, rows: list[Row], compress_ok: bool) -> list[Unit]:
        units = []
        groups = split_batches([r.payload for r in rows], max_records=self.batch_max,
                               max_bytes=self._max_payload)
        for g in groups:
            payload = batch_payload(self.thing, [rows[i].payload for i in g],
                                    [rows[i].id for i in g])
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
        """Serve one connection until it is lost (raises ``UplinkError``).

        ``window`` worker tasks publish the staged units in order, each awaiting its
        PUBACK; this task keeps the stage filled (claiming in a worker thread) and
        watches the connection."""
        lost: asyncio.Event | None = uplink.lost
        quota = IotQuota.aws() if self._quota and uplink.iot_quota else None
        compress_ok = self.compression != "none" and uplink.user_properties
        self._max_payload = min(MAX_PAYLOAD, uplink.max_payload)
        self._hold_until = 0.0
        if self.compression != "none" and not compress_ok:
            self._once(log, "no-compression", "uplink cannot declare content-encoding;"
                       " telemetry goes uncompressed", uplink=uplink.name)
        self._failed = None
        self._settle_failing = False
        self._staged = deque()
        self._parked = deque()
        self._bulk_busy = 0
        self._need = asyncio.Event()
        self._outcome = asyncio.Event()
        if self._acks or self._rejects:
            self._outcome.set()
        dispatch = asyncio.Lock() if quota is not None else None
        helpers = [asyncio.create_task(self._settler(), name="settle")]
        if lost is not None:
            helpers.append(asyncio.create_task(self._watch(lost), name="watch-lost"))
        helpers += [
            asyncio.create_task(self._worker(uplink, quota, dispatch, compress_ok),
                                name=f"publish-{i}")
            for i in range(self.window)
        ]
        low = self.window  # claim more when fewer units than this are staged
        next_urgent = 0.0
        try:
            while True:
                if self._failed is not None:
                    raise self._failed
                if lost is not None and lost.is_set():
                    raise UplinkError("connection lost")
                for h in helpers:
                    if h.done():
                        h.result()  # a helper only ends by raising
                staged = self._staged
                bulk_head = bool(staged) and staged[0].lane not in URGENT
                urgent_due = bulk_head and quota is None and (
                    wake.is_set() or time.monotonic() >= next_urgent)
                if len(staged) >= low and not urgent_due:
                    self._need.clear()
                    await self._wait(wake if bulk_head and quota is None else None,
                                     URGENT_RECHECK_S if bulk_head and quota is None else 5.0)
                    continue
                if self._settle_failing:
                    await asyncio.sleep(0.1)  # claim no more than can be settled
                    continue
                urgent_only = len(staged) >= low
                wake.clear()
                try:
                    got = await asyncio.to_thread(self._next_units, 2 * self.window,
                                                  urgent_only, compress_ok)
                except OutboxError as exc:
                    # a full or failing disk: the rows stay where they are
                    self.counters["outbox_errors"] = self.counters.get("outbox_errors", 0) + 1
                    self._once(log, "claim", "outbox claim failed, retrying", reason=str(exc))
                    await asyncio.sleep(1.0)
                    continue
                self._once.clear("claim")
                next_urgent = time.monotonic() + URGENT_RECHECK_S
                self._stage(got, front=urgent_only)
                if not got:  # nothing more to claim: until new rows or a worker asks
                    self._need.clear()
                    await self._wait(wake, 5.0)
        finally:
            try:
                for t in helpers:
                    t.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
            finally:
                self._settle_all()

    def _stage(self, units: list[Unit], *, front: bool) -> None:
        if front:
            self._staged.extendleft(reversed(units))
        else:
            self._staged.extend(units)
        for _ in range(min(len(units), len(self._parked))):
            fut = self._parked.popleft()
            if not fut.done():
                fut.set_result(None)

    async def _wait(self, wake: asyncio.Event | None, timeout: float) -> None:
        """Until a worker wants more units, the connection fails, ``wake`` is set
        (new rows), or ``timeout``."""
        waits = [asyncio.ensure_future(self._need.wait())]
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _watch(self, lost: asyncio.Event) -> None:
        await lost.wait()
        self._need.set()
        await asyncio.Event().wait()  # stays until run() ends

    async def _worker(self, uplink: Uplink, quota: IotQuota | None,
                      dispatch: asyncio.Lock | None, compress_ok: bool) -> None:
        """Publish staged units one after the other, each until its PUBACK."""
        staged = self._staged
        while True:
            unit = None
            if staged and self._failed is None:
                head = staged[0]
                if head.lane in URGENT or self._bulk_busy < self.window - 1 or self.window == 1:
                    unit = staged.popleft()
            if unit is None:
                fut = asyncio.get_running_loop().create_future()
                self._parked.append(fut)
                self._need.set()
                await fut
                continue
            if len(staged) < self.window:
                self._need.set()
            hold = self._hold_until - time.monotonic()
            if hold > 0:  # publishes are failing: wait out the backoff, then retry
                staged.appendleft(unit)
                await asyncio.sleep(hold)
                continue
            if self._retry.attempts:  # still failing: one publish probes, the rest wait
                if self._probe.locked():
                    staged.appendleft(unit)
                    async with self._probe:
                        pass
                    continue
                async with self._probe:
                    await self._send(uplink, unit)
                continue
            bulk = unit.lane not in URGENT
            if bulk:
                self._bulk_busy += 1
            try:
                if dispatch is not None and quota is not None:
                    async with dispatch:
                        if bulk:
                            unit = await self._urgent_first(unit, compress_ok)
                        await _take(quota, len(unit.payload))
                        if unit.lane in URGENT and bulk:
                            bulk = False
                            self._bulk_busy -= 1
                await self._send(uplink, unit)
            finally:
                if bulk:
                    self._bulk_busy -= 1  # this worker takes the next unit itself

    async def _urgent_first(self, unit: Unit, compress_ok: bool) -> Unit:
        """Under the quota: before a telemetry or health publish, a new alert or trip
        edge goes first (``unit`` goes back to the head of the stage)."""
        try:
            got = await asyncio.to_thread(self._next_units, self.window, True, compress_ok)
        except OutboxError:
            return unit
        if not got:
            return unit
        self._staged.appendleft(unit)
        self._stage(got[1:], front=True)
        return got[0]

    async def _send(self, uplink: Uplink, unit: Unit) -> None:
        try:
            await uplink.publish(unit.topic, unit.payload, qos=1,
                                 user_properties=unit.user_properties)
        except PublishRejected as exc:
            self.counters["rejected"] += len(unit.seqs)
            self._once(log, f"rejected:{unit.topic}", "publish rejected, dropped",
                       topic=unit.topic, rows=len(unit.seqs), reason=str(exc))
            self._rejects.extend(unit.seqs)
            self._outcome.set()
            return
        except PublishFailed as exc:
            # the connection works, this publish did not: same unit again after a backoff
            self.counters["publish_failures"] += 1
            if self._hold_until <= time.monotonic():  # one backoff step per failing round
                delay = self._retry.next()
                self._hold_until = time.monotonic() + delay
                self._once(log, "publish-failed", "publish failed, retrying with backoff",
                           topic=unit.topic, reason=str(exc), retry_in_s=round(delay, 2))
                if self._on_publish_error is not None:
                    self._on_publish_error(str(exc))
            self._staged.appendleft(unit)
            self._need.set()
            return
        except UplinkError as exc:
            if self._failed is None:
                self._failed = exc
            return  # released at the end of run()
        except TimeoutError:
            if self._failed is None:
                self._failed = UplinkError(f"no PUBACK for {unit.topic}")
            return
        if self._retry.attempts:
            self._retry.reset()
            self._once.clear("publish-failed")
            log.info("publish works again", topic=unit.topic)
            if self._on_publish_error is not None:
                self._on_publish_error(None)
        self.counters["published"] += len(unit.seqs)
        self.counters["publish_batches"] += 1
        self.counters["bytes_sent"] += len(unit.payload)
        self._acks.extend(unit.seqs)
        self._outcome.set()

    # ------------------------------------------------------------------ settling

    async def _settler(self) -> None:
        """Settle queued outcomes, many per transaction, until cancelled."""
        while True:
            await self._outcome.wait()
            if self.settle_linger_s > 0 and len(self._acks) + len(self._rejects) < self.settle_max:
                await asyncio.sleep(self.settle_linger_s)
            self._outcome.clear()
            acks, self._acks = self._acks, []
            rejects, self._rejects = self._rejects, []
            if not acks and not rejects:
                continue
            # kept until done: a cancelled hop may never have run (settled at the end)
            self._settling = (acks, rejects)
            try:
                await asyncio.to_thread(self._settle, acks, rejects)
            except OutboxError as exc:
                self._settling = ([], [])
                # acks stay queued: retried, and settled or released before run() returns
                self._acks[:0] = acks
                self._rejects[:0] = rejects
                self._settle_failing = True
                self._once(log, "settle", "outbox could not settle delivered rows, retrying",
                           reason=str(exc), rows=len(acks) + len(rejects))
                await asyncio.sleep(1.0)
                self._outcome.set()
                continue
            self._settling = ([], [])
            if self._settle_failing:
                self._settle_failing = False
                self._once.clear("settle")

    def _settle(self, acks: Sequence[int], rejects: Sequence[int],
                releases: Sequence[int] = ()) -> None:
        """One transaction for a batch of outcomes (only rows this forwarder holds)."""
        with self._book:
            held = self._claimed
            acks = [s for s in acks if s in held]
            rejects = [s for s in rejects if s in held]
            releases = [s for s in releases if s in held]
            self.outbox.settle(acked=acks, rejected=rejects, released=releases)
            for seqs in (acks, rejects, releases):
                for s in seqs:
                    held.pop(s, None)

    def _settle_all(self) -> None:
        """The end of ``run``: queued outcomes settled, every other claimed row released,
        in one transaction. Runs on the event loop (it must not be cancelled half-way);
        it waits for a worker thread still claiming or settling."""
        with self._book:
            acks = [*self._settling[0], *self._acks]
            rejects = [*self._settling[1], *self._rejects]
            self._acks, self._rejects, self._settling = [], [], ([], [])
            settled = set(acks) | set(rejects)
            releases = [s for s in self._claimed if s not in settled]
            if not (acks or rejects or releases):
                return
            try:
                self._settle(acks, rejects, releases)
            except OutboxError as exc:
                # rows stay in flight on disk: the next open makes them ready again
                self._once(log, "release", "outbox could not settle or release rows",
                           reason=str(exc), rows=len(self._claimed))


def _single(r: Row) -> Unit:
    return Unit(topic=r.topic, payload=r.payload, seqs=(r.seq,), lane=r.lane)
