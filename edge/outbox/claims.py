"""Draining the outbox: claims (rows in flight) and their settlement.

At-least-once: ``claim`` marks rows in flight (``State.INFLIGHT``), ``settle`` deletes
acked rows only after the uplink confirmed and returns released rows to ready, in their
old place. Settling acts only on rows still in flight and counts what it really
deleted, so a row is never settled twice (a purge or an eviction may have taken it
meanwhile).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from edge.errors import OutboxError
from edge.model import Lane
from edge.outbox.bounds import Bounds
from edge.outbox.schema import CLAIM_SQL, Row, State
from edge.outbox.sealing import Codec
from edge.outbox.store import Store


class Claims:
    def __init__(self, store: Store, codec: Codec, bounds: Bounds) -> None:
        self.store = store
        self.codec = codec
        self.bounds = bounds

    def claim(self, limit: int, *, lanes: Iterable[Lane] | None = None) -> list[Row]:
        """Mark up to ``limit`` ready rows in flight, best lane first, FIFO within.

        The inner SELECT walks the ``(state, lane, seq)`` index: its cost does not grow
        with the backlog (see ``tests/unit/test_outbox.py`` for the query plan).
        """
        lane_filter = ""
        params: list[Any] = [int(State.INFLIGHT), int(State.READY)]
        if lanes is not None:
            chosen = sorted(int(x) for x in lanes)
            if not chosen:
                return []
            lane_filter = f" AND lane IN ({','.join('?' * len(chosen))})"
            params += chosen
        params.append(limit)
        sql = CLAIM_SQL.format(lane_filter=lane_filter)
        db = self.store.db
        got = self.store.locked_write("claim", lambda: db.execute(sql, params).fetchall())
        rows, bad = self.codec.opened(got)
        if bad:  # never deleted, never offered again by this process: set aside
            self.store.locked_write("hold", lambda: db.executemany(
                f"UPDATE messages SET state = {State.HELD:d}"
                f" WHERE seq = ? AND state = {State.INFLIGHT:d}", [(s,) for s in bad]))
            held, counted = set(bad), self.bounds.held_bytes
            for s, _, ln, _, p, _ in got:
                if int(s) in held:
                    counted[Lane(ln)] = counted.get(Lane(ln), 0) + len(p)
        rows.sort(key=lambda r: (r.lane, r.seq))
        return rows

    def settle(self, *, acked: Sequence[int] = (), rejected: Sequence[int] = (),
               released: Sequence[int] = ()) -> None:
        """``ack``, ``reject`` and ``release`` of many rows in one transaction (one
        commit): the forwarder settles the outcomes of a burst of publishes at once.
        What is counted is what was really deleted: a row gone meanwhile (purged,
        evicted, acked before) is not counted again; only rows in flight are released."""
        if not (acked or rejected or released):
            return
        store = self.store

        def body() -> None:
            if acked:
                store.bump("delivered", self._delete(acked))
            if rejected:
                store.bump("rejected", self._delete(rejected))
            if released:
                store.db.executemany(
                    f"UPDATE messages SET state = {State.READY:d}"
                    f" WHERE seq = ? AND state = {State.INFLIGHT:d}", [(s,) for s in released])

        what = "delivered" if acked else "rejected" if rejected else "release"
        disk = store.disk
        with store.lock:
            store.write(what, body)
            if disk.pressure and (acked or rejected) and disk.reserve.target:
                disk.retake_reserve(store.db)

    def _delete(self, seqs: Sequence[int]) -> int:
        n = 0
        for i in range(0, len(seqs), 500):
            chunk = list(seqs[i : i + 500])
            marks = ",".join("?" * len(chunk))
            cur = self.store.db.execute(f"DELETE FROM messages WHERE seq IN ({marks})", chunk)
            n += cur.rowcount
        return n

    def recover_inflight(self) -> int:
        """Rows left in flight by a drain that could not settle them (a failed final
        write): ready again. Only for the outbox's single owner, between connections."""
        with self.store.lock:
            try:
                cur = self.store.db.execute(  # not HELD rows: no key here opens them
                    "UPDATE messages SET state = ? WHERE state = ?",
                    (int(State.READY), int(State.INFLIGHT)))
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox recover failed: {exc}") from exc
        return int(cur.rowcount)
