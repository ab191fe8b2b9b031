"""The rows one forwarder holds: claimed from the outbox, not yet settled.

Claims and settlements are SQLite writes: they run in worker threads
(``asyncio.to_thread``), never on the event loop. The held set changes only together
with the outbox call that claims or settles its rows, under one lock, so a settlement
acts only on rows this lease still holds (a row is never settled twice).

Outcomes (PUBACKed -> ``ack``, refused for good -> ``reject``) are queued on the event
loop and settled in batches by ``settle_loop``, one transaction per batch (flushed
``linger_s`` after the first outcome, at once from ``max_rows``). ``close`` settles
what is queued and releases every other held row in one last transaction.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Sequence

import structlog

from edge.errors import OutboxError
from edge.logconf import Once
from edge.model import Lane
from edge.outbox import Outbox, Row

log = structlog.get_logger()


class Lease:
    def __init__(self, outbox: Outbox, *, once: Once | None = None) -> None:
        self.outbox = outbox
        self._lock = threading.RLock()  # _settle_rest holds it around settle
        self._held: set[int] = set()  # under _lock
        # outcomes waiting to be settled (event loop only)
        self._acks: list[int] = []
        self._rejects: list[int] = []
        self._settling: tuple[list[int], list[int]] = ([], [])  # the batch in a thread
        self._outcome = asyncio.Event()
        self._once = once or Once()
        self.settle_failing = False  # the last settlement failed (a full disk)
        self._closed = False  # no claims after ``close`` (a hop that was still queued)

    def __len__(self) -> int:
        return len(self._held)

    # ------------------------------------------------------------------ worker threads

    def claim(self, limit: int, lanes: Iterable[Lane]) -> list[Row]:
        """Up to ``limit`` ready rows of ``lanes`` in flight, held here (lane order)."""
        with self._lock:
            if self._closed:
                return []
            rows = self.outbox.claim(limit, lanes=lanes)
            self._held.update(r.seq for r in rows)
        return rows

    def settle(self, acks: Sequence[int], rejects: Sequence[int],
               releases: Sequence[int] = ()) -> None:
        """One transaction for a batch of outcomes (only rows this lease holds)."""
        with self._lock:
            held = self._held
            acks = [s for s in acks if s in held]
            rejects = [s for s in rejects if s in held]
            releases = [s for s in releases if s in held]
            self.outbox.settle(acked=acks, rejected=rejects, released=releases)
            held.difference_update(acks, rejects, releases)

    def _settle_rest(self, acks: Sequence[int], rejects: Sequence[int]) -> None:
        with self._lock:
            self._closed = True
            settled = {*acks, *rejects}
            rest = [s for s in self._held if s not in settled]
            if not (acks or rejects or rest):
                return
            try:
                self.settle(acks, rejects, rest)
            except OutboxError as exc:
                # rows stay in flight on disk: the owner's next open (or
                # recover_inflight between connections) makes them ready again
                self._once(log, "release", "outbox could not settle or release rows",
                           reason=str(exc), rows=len(self._held))
                self._held.clear()

    # ------------------------------------------------------------------ event loop

    def ack(self, seqs: Sequence[int]) -> None:
        self._acks.extend(seqs)
        self._outcome.set()

    def reject(self, seqs: Sequence[int]) -> None:
        self._rejects.extend(seqs)
        self._outcome.set()

    def open(self) -> None:
        """Claims are taken again (a new connection)."""
        with self._lock:
            self._closed = False

    async def settle_loop(self, *, linger_s: float, max_rows: int) -> None:
        """Settle queued outcomes, many per transaction, until cancelled."""
        self._outcome = asyncio.Event()
        if self._acks or self._rejects:
            self._outcome.set()
        while True:
            await self._outcome.wait()
            if linger_s > 0 and len(self._acks) + len(self._rejects) < max_rows:
                await asyncio.sleep(linger_s)
            self._outcome.clear()
            acks, self._acks = self._acks, []
            rejects, self._rejects = self._rejects, []
            if not acks and not rejects:
                continue
            # kept until done: a cancelled hop may never have run (``close`` settles it)
            self._settling = (acks, rejects)
            try:
                await asyncio.to_thread(self.settle, acks, rejects)
            except OutboxError as exc:
                self._settling = ([], [])
                # queued again: retried, and settled or released by ``close``
                self._acks[:0] = acks
                self._rejects[:0] = rejects
                self.settle_failing = True
                self._once(log, "settle", "outbox could not settle delivered rows, retrying",
                           reason=str(exc), rows=len(acks) + len(rejects))
                await asyncio.sleep(1.0)
                self._outcome.set()
                continue
            self._settling = ([], [])
            if self.settle_failing:
                self.settle_failing = False
                self._once.clear("settle")

    async def close(self) -> None:
        """Every queued outcome settled, every other held row released: one
        transaction in a worker thread, which finishes even if this is cancelled."""
        acks = [*self._settling[0], *self._acks]
        rejects = [*self._settling[1], *self._rejects]
        self._acks, self._rejects, self._settling = [], [], ([], [])
        self.settle_failing = False
        done = asyncio.ensure_future(asyncio.to_thread(self._settle_rest, acks, rejects))
        await asyncio.shield(done)
