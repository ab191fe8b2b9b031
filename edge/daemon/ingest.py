"""The ingest: the bounded in-memory queue from the engine to the SQLite outbox.

The writer takes a batch OFF the queue before it is written and puts it back at the
front when the write fails; so a full queue, which drops its least important message
(telemetry first, alerts last), never drops one that a running write is storing, and a
message counts as accepted only when the outbox holds it. A disk too full for the
telemetry and health rows of a batch (after the outbox evicted what it could) stores its
alerts and trip edges anyway; the lower rows go back on the queue and are offered again
after a short backoff, while alerts keep being committed at once.

The rules' state (``Engine.snapshot``) rides with the envelopes it follows and is
committed in the same transaction as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import structlog

from edge.config import Config
from edge.core.backoff import Backoff
from edge.errors import OutboxError
from edge.logconf import Once
from edge.model import Envelope, Lane
from edge.outbox import EVICT_ORDER, Outbox, disk_report, free_bytes

log = structlog.get_logger()

QUEUE_MAX = 10_000  # envelopes waiting for the outbox writer
BATCH_MAX = 500  # envelopes per group commit
STATE_EVERY_S = 10.0  # rule state saved at least this often while messages flow
MB = 1024 * 1024
EVENT_FIELDS = ("phase", "transition", "fence", "poi", "speed_kmh", "limit_kmh",
                "distance_m", "reason", "clock")


class RuleStates:
    """Rule-state snapshots (numbered), each riding with the envelope it follows, so it
    is committed in the same transaction as the events it follows."""

    def __init__(self) -> None:
        self.by_env: dict[int, tuple[int, dict[str, Any]]] = {}  # by id() of the envelope
        self._taken_at = -1e18
        self._n = 0
        self.written = 0  # the newest snapshot committed

    def take(self, envelopes: list[Envelope], snapshot: Callable[[], dict[str, Any]]) -> None:
        """After an alert or trip edge, and at least every STATE_EVERY_S: the rules'
        state after ``envelopes`` rides with the last of them."""
        mono = time.monotonic()
        if mono - self._taken_at >= STATE_EVERY_S or any(e.lane <= Lane.TRIP
                                                         for e in envelopes):
            self._n += 1
            self.by_env[id(envelopes[-1])] = (self._n, snapshot())
            self._taken_at = mono

    def of(self, batch: list[Envelope]) -> tuple[int, dict[str, Any] | None]:
        """The newest snapshot taken with an envelope of ``batch`` — unless a newer one
        went already (telemetry held back by a full disk commits after newer alerts)."""
        best: tuple[int, dict[str, Any]] | None = None
        for env in batch:
            got = self.by_env.get(id(env))
            if got is not None and (best is None or got[0] > best[0]):
                best = got
        if best is None or best[0] <= self.written:
            return self.written, None
        return best[0], {"rules": best[1]}

    def forget(self, env: Envelope) -> None:
        self.by_env.pop(id(env), None)


class Ingest:
    """Queue, writer and outbox lifetime. ``config()`` is the daemon's current config."""

    def __init__(self, config: Callable[[], Config], *, once: Once | None = None) -> None:
        self._config = config
        self._once = once or Once()
        self.outbox: Outbox | None = None
        self.queue: deque[Envelope] = deque()
        self.inflight: list[Envelope] = []  # the batch the writer is storing now
        self.snapshot: Callable[[], dict[str, Any]] | None = None  # the engine's, once built
        self.states = RuleStates()
        self.counters: dict[str, int] = {"accepted": 0, "queue_dropped": 0,
                                         "outbox_errors": 0}
        self.mode = "disk"  # or "memory-fallback"
        self.error: str | None = None  # why the outbox could not be opened
        self.opened = asyncio.Event()  # the outbox is open (the uplink may drain)
        self.new_rows = asyncio.Event()  # rows committed: the uplink may look
        self._queued = asyncio.Event()
        self._idle = asyncio.Event()

    @property
    def pending(self) -> int:
        """Messages not stored yet: queued or being written."""
        return len(self.queue) + len(self.inflight)

    # ------------------------------------------------------------------ in

    def enqueue(self, envelopes: list[Envelope]) -> None:
        if not envelopes:
            return
        if self.snapshot is not None:
            self.states.take(envelopes, self.snapshot)
        events = self._config().log.events
        for env in envelopes:
            self.queue.append(env)
            if env.lane <= Lane.TRIP and events:
                body = {k: v for k, v in env.body.items() if k in EVENT_FIELDS}
                log.info(env.type, ts=env.ts, id=env.id, **body)
            if env.type == "diagnostic" and env.body.get("phase") == "start":
                # once per episode of disagreement (the end is logged as an event)
                log.warning("speed sources disagree", ts=env.ts,
                            **{k: env.body.get(k) for k in (
                                "can_kmh", "gnss_kmh", "diff_kmh", "policy", "using")})
        self._bound()
        self._queued.set()

    def _bound(self) -> None:
        while len(self.queue) > QUEUE_MAX and self._drop_one():
            pass

    def _drop_one(self) -> bool:
        """Queue full (the disk is stalled): drop the oldest least-important queued
        message (telemetry, then health, then trips, alerts last); counted per lane.
        The batch being written is not in the queue: it is never dropped."""
        for lane in EVICT_ORDER:
            for i, env in enumerate(self.queue):
                if env.lane == lane:
                    del self.queue[i]
                    self.states.forget(env)
                    name = lane.name.lower()
                    self.counters["queue_dropped"] += 1
                    key = f"queue_dropped_{name}"
                    self.counters[key] = self.counters.get(key, 0) + 1
                    self._once(log, f"queue-full:{name}", "queue full, dropping", lane=name)
                    return True
        return False

    # ------------------------------------------------------------------ outbox

    def _space_low(self) -> bool:
        cfg = self._config().outbox
        free = free_bytes(cfg.path.parent)
        return free is not None and free < max(cfg.min_free_mb, cfg.reserve_mb) * MB

    async def open(self, *, starting: bool = False) -> bool:
        """Open the outbox. At start-up on a disk too full to even create it, the daemon
        runs on: messages wait in memory (alerts last to go) and the open is retried by
        the writer; any other failure to open at start-up is fatal (``OutboxError``)."""
        cfg = self._config().outbox
        try:
            self.outbox = await asyncio.to_thread(Outbox.from_config, cfg)
        except OutboxError as exc:
            if not await asyncio.to_thread(self._space_low):
                if starting:
                    raise
                self._once(log, "outbox-open", "outbox cannot be opened, holding in memory",
                           reason=str(exc))
                return False
            self.mode = "memory-fallback"
            self.error = str(exc)
            self._once(log, "outbox-open", "outbox: disk too full to open, holding messages"
                       " in memory and retrying", path=str(cfg.path), reason=str(exc))
            return False
        self.error = None
        self.mode = "disk"
        self.opened.set()
        return True

    def close(self) -> None:
        """At exit (in a thread): what the writer could not commit in time gets a last,
        synchronous attempt; then the outbox closes."""
        left = self.inflight + list(self.queue)
        if self.outbox is None and left:
            with contextlib.suppress(OutboxError):
                self.outbox = Outbox.from_config(self._config().outbox)
        if left:
            try:
                if self.outbox is None:
                    raise OutboxError(self.error or "outbox not open")
                self.outbox.put(left)
                self.counters["accepted"] += len(left) - self.outbox.batch_dropped
                self.queue.clear()
                self.inflight = []
            except OutboxError as exc:
                lanes = Counter(env.lane.name.lower() for env in left)
                log.error("outbox: messages lost at shutdown", count=len(left),
                          lanes=dict(lanes), reason=str(exc))
        if self.outbox is not None:
            self.outbox.close()

    async def saved_rules(self) -> dict[str, Any] | None:
        """The rules' state committed before a restart (None: none, or unreadable)."""
        if self.outbox is None:
            return None
        try:
            saved = (await asyncio.to_thread(self.outbox.load_state)).get("rules")
        except OutboxError:
            return None
        return saved if isinstance(saved, dict) else None

    def ready_rows(self) -> int:
        """Rows stored and ready for the uplink (in a thread)."""
        return 0 if self.outbox is None else int(self.outbox.stats()["pending"])

    async def flush(self) -> None:
        """Until everything queued is committed (the caller bounds the wait)."""
        self._idle.clear()
        self._queued.set()
        while self.pending:
            await self._idle.wait()
            self._idle.clear()
            self._queued.set()

    # ------------------------------------------------------------------ writer

    def _take(self, held: bool) -> list[Envelope]:
        """The next batch, off the queue: the oldest messages, or (lower lanes held by
        a full disk) only the alerts and trip edges."""
        if not held:
            n = min(BATCH_MAX, len(self.queue))
            return [self.queue.popleft() for _ in range(n)]
        batch = [e for e in self.queue if e.lane <= Lane.TRIP][:BATCH_MAX]
        if batch:
            taken = {id(e) for e in batch}
            self.queue = deque(e for e in self.queue if id(e) not in taken)
        return batch

    def _put_back(self, envelopes: list[Envelope]) -> None:
        """Back at the front of the queue, in their order (a failed or partial write)."""
        self.queue.extendleft(reversed(envelopes))
        self._bound()

    async def run_writer(self) -> None:
        """Group commits from the queue until cancelled."""
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        lower_backoff = Backoff(base_s=0.2, cap_s=2.0)
        lower_after = 0.0  # lower-lane rows held back by a full disk wait until then
        while True:
            if not self.queue:
                self._idle.set()
                await self._queued.wait()
                self._queued.clear()
                continue
            if self.outbox is None and not await self.open():
                self.counters["outbox_errors"] += 1
                await asyncio.sleep(backoff.next())
                continue
            assert self.outbox is not None
            held = time.monotonic() < lower_after
            batch = self.inflight = self._take(held)
            if not batch:  # held, and no alert queued: wait for one or the backoff
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, lower_after - time.monotonic())):
                        await self._queued.wait()
                self._queued.clear()
                continue
            snap_n, state = self.states.of(batch)
            try:
                await asyncio.to_thread(self.outbox.put, batch, state, hold_lower=True)
            except OutboxError as exc:
                # disk full or failing: keep the messages in memory (bounded by
                # QUEUE_MAX, least important dropped first), retry with backoff
                self.inflight = []
                self._put_back(batch)
                self.counters["outbox_errors"] += 1
                self.mode = "memory-fallback"
                self._once(log, "outbox-write", "outbox write failed, holding in memory",
                           reason=str(exc), queued=len(self.queue))
                await asyncio.sleep(backoff.next())
                continue
            except BaseException:
                self.inflight = []
                self._put_back(batch)  # cancelled: close() gives it a last attempt
                raise
            self.inflight = []
            backoff.reset()
            self.states.written = snap_n
            left = self.outbox.batch_left
            kept = {id(e) for e in left}
            for env in batch:
                if id(env) not in kept:
                    self.states.forget(env)
            if left:
                self._put_back(left)
                lower_after = time.monotonic() + lower_backoff.next()
                if self.mode != "memory-fallback":
                    self.mode = "memory-fallback"
                    self._once(log, "outbox-write", "disk full: telemetry and health held"
                               " in memory, alerts still committed", queued=len(self.queue))
            elif not held:
                lower_backoff.reset()
                lower_after = 0.0
                if self.mode != "disk":
                    log.info("outbox writable again", queued=len(self.queue))
                    self._once.clear("outbox-write")
                self.mode = "disk"
            # rows a full disk had no room for are counted by the outbox
            # (dropped_full_<lane>) or held here, never counted as accepted
            self.counters["accepted"] += len(batch) - len(left) - self.outbox.batch_dropped
            self.new_rows.set()

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"queue": self.pending, "outbox_mode": self.mode}
        if self.outbox is not None:
            with contextlib.suppress(OutboxError):
                out["outbox"] = self.outbox.stats()
            out["disk"] = self.outbox.disk()
        else:
            ocfg = self._config().outbox
            out["outbox"] = {"path": str(ocfg.path), "error": self.error}
            out["disk"] = disk_report(ocfg.path, min_free_bytes=int(ocfg.min_free_mb * MB),
                                      reserve_target=int(ocfg.reserve_mb * MB))
        return out
