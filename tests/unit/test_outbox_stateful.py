"""A property-based (hypothesis stateful) test of the outbox with two connections to
one database: the daemon's (put, claim, settle, reopen) and a tool's (purge, stats,
reopen), interleaved at random, with a cap small enough that eviction happens.

After every step:
* the lane totals equal a fresh count, seen from both connections;
* alerts are never evicted while lower lanes hold rows;
* nothing is settled twice (``delivered`` counts each row once);
* nothing accepted is lost: every accepted row is in the outbox, or delivered,
  rejected, purged or evicted — and counted as such, exactly.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge.model import Envelope, Lane
from edge.outbox import Outbox

CAP = 12_000  # bytes of payload: a few dozen rows
LANES = st.sampled_from(list(Lane))


class TwoConnections(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name) / "o.db"
        self.daemon = Outbox(self.path, max_bytes=CAP)
        self.tool = Outbox(self.path, max_bytes=CAP, recover=False)
        self.n = 0
        self.accepted: dict[str, Lane] = {}  # every id the outbox took
        self.taken = 0  # rows inserted (a re-put of an id still present is not)
        self.claimed: list[int] = []
        self.delivered = 0  # rows that were still there when acked
        self.rejected = 0
        self.evicted_alert_before = 0

    def teardown(self) -> None:
        self.daemon.close()
        self.tool.close()
        self._dir.cleanup()

    # ------------------------------------------------------------------ helpers

    def _rows(self) -> dict[int, tuple[str, int]]:
        with sqlite3.connect(self.path) as db:
            return {s: (i, lane) for s, i, lane in db.execute(
                "SELECT seq, id, lane FROM messages")}

    def _counters(self) -> dict[str, int]:
        with sqlite3.connect(self.path) as db:
            return dict(db.execute("SELECT name, value FROM counters").fetchall())

    # ------------------------------------------------------------------ rules

    @rule(lanes=st.lists(LANES, min_size=1, max_size=8), size=st.integers(10, 900),
          via_tool=st.booleans(), again=st.booleans())
    def put(self, lanes: list[Lane], size: int, via_tool: bool, again: bool) -> None:
        envs = []
        for lane in lanes:
            self.n += 1
            envs.append(Envelope(id=f"m{self.n}", thing="car", type="t", ts=self.n,
                                 seq=self.n, topic="t", lane=lane, body={"p": "x" * size}))
        if again and self.accepted:  # a re-put of something already taken
            old = next(iter(self.accepted))
            envs.append(Envelope(id=old, thing="car", type="t", ts=0, seq=0, topic="t",
                                 lane=self.accepted[old], body={}))
        present = {i for i, _ in self._rows().values()}
        self.evicted_alert_before = self._counters().get("evicted_alert", 0)
        (self.tool if via_tool else self.daemon).put(envs)
        self.taken += len({e.id for e in envs} - present)
        for e in envs:
            self.accepted.setdefault(e.id, e.lane)
        # alerts evicted in this step only once no lower-lane row is left
        if self._counters().get("evicted_alert", 0) > self.evicted_alert_before:
            assert not any(lane != Lane.ALERT for _, lane in self._rows().values())

    @rule(n=st.integers(1, 20), urgent=st.booleans())
    def claim(self, n: int, urgent: bool) -> None:
        lanes = [Lane.ALERT, Lane.TRIP] if urgent else None
        self.claimed += [r.seq for r in self.daemon.claim(n, lanes=lanes)]

    @precondition(lambda self: bool(self.claimed))
    @rule(k=st.integers(0, 20), how=st.sampled_from(["ack", "reject", "release", "twice"]))
    def settle(self, k: int, how: str) -> None:
        seqs, self.claimed = self.claimed[:k], self.claimed[k:]
        present = len(set(seqs) & set(self._rows()))
        if how == "ack":
            self.daemon.ack(seqs)
            self.delivered += present
        elif how == "reject":
            self.daemon.reject(seqs)
            self.rejected += present
        elif how == "twice":
            self.daemon.ack(seqs)
            self.daemon.ack(seqs)  # a duplicate PUBACK: counted once
            self.delivered += present
        else:
            self.daemon.release(seqs)

    @rule(lanes=st.sets(LANES, min_size=1))
    def purge(self, lanes: set[Lane]) -> None:
        self.tool.purge(lanes)

    @rule()
    def reopen_daemon(self) -> None:
        self.daemon.close()
        self.daemon = Outbox(self.path, max_bytes=CAP)
        self.claimed = []  # in flight rows are ready again

    @rule()
    def reopen_tool(self) -> None:
        self.tool.close()
        self.tool = Outbox(self.path, max_bytes=CAP, recover=False)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def totals_equal_a_fresh_count(self) -> None:
        assert self.daemon.integrity_ok()
        a, b = self.daemon.stats(), self.tool.stats()
        assert a["lanes"] == b["lanes"] and a["pending"] == b["pending"]
        assert a["pending"] == len(self._rows())

    @invariant()
    def nothing_settled_twice_nothing_lost(self) -> None:
        c = self._counters()
        assert c.get("delivered", 0) == self.delivered
        assert c.get("rejected", 0) == self.rejected
        assert c.get("accepted", 0) == self.taken
        present = {i for i, _ in self._rows().values()}
        assert present <= set(self.accepted)
        gone = self.taken - len(present)
        counted = (c.get("delivered", 0) + c.get("rejected", 0) + c.get("purged", 0)
                   + sum(v for k, v in c.items() if k.startswith("evicted_")))
        assert gone == counted, (gone, c)


TwoConnections.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                            deadline=None, database=None)
test_outbox_with_two_connections = TwoConnections.TestCase
