"""Storage faults at every step of every outbox write path, as SQLite itself is tested:
a patched connection makes the n-th statement fail with ENOSPC (SQLITE_FULL), EIO
(SQLITE_IOERR) or a read-only file system (SQLITE_READONLY), once or from then on.

After each fault: the call raised ``OutboxError`` (never a raw sqlite3 error) or
succeeded; a failed call changed nothing; a call that returned did what it says (a put
stored every alert of its batch, and each telemetry row is stored or counted as
dropped); the lane totals equal a fresh count; the same outbox works again once the
fault is gone, and so does a reopen."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.errors import OutboxError
from edge.model import Envelope, Lane
from edge.outbox import Outbox


def env(i: int, lane: Lane = Lane.TELEMETRY, size: int = 200) -> Envelope:
    kind = {Lane.ALERT: "overspeed", Lane.TRIP: "trip", Lane.TELEMETRY: "telemetry",
            Lane.HEALTH: "health"}[lane]
    return Envelope(id=f"new-{lane.name}-{i}", thing="car", type=kind, ts=i, seq=i,
                    topic=f"vehicles/car/{kind}", lane=lane, body={"pad": "x" * size})


def _error(kind: str) -> sqlite3.OperationalError:
    code, text = {"ENOSPC": (13, "database or disk is full"),
                  "EIO": (10, "disk I/O error"),
                  "EROFS": (8, "attempt to write a readonly database")}[kind]
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorcode = code
    return exc


class Faulty:
    """The outbox's connection, except that statement number ``fail_at`` (counted from
    1; ROLLBACK is never failed, as SQLite rolls back on its own) raises ``kind`` —
    that one only, or every statement from then on (``sticky``)."""

    def __init__(self, db: sqlite3.Connection, fail_at: int = 0, kind: str = "EIO",
                 sticky: bool = False) -> None:
        self._db = db
        self.fail_at = fail_at
        self.kind = kind
        self.sticky = sticky
        self.calls = 0
        self.fired = 0

    def _tick(self, sql: str) -> None:
        if sql.strip().upper() == "ROLLBACK":
            return
        self.calls += 1
        if self.fail_at and (self.calls == self.fail_at
                             or (self.sticky and self.calls > self.fail_at)):
            self.fired += 1
            raise _error(self.kind)

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._tick(sql)
        return self._db.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> Any:
        self._tick(sql)
        return self._db.executemany(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _content(path: Path) -> tuple[list[tuple[str, int]], dict[str, str]]:
    with sqlite3.connect(path) as db:
        rows = [(i, s) for i, s in db.execute("SELECT id, state FROM messages ORDER BY seq")]
        state = dict(db.execute("SELECT key, value FROM state"))
    return rows, state


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An outbox holding alerts, trips, telemetry and health, some in flight."""
    path = tmp_path_factory.mktemp("tpl") / "o.db"
    ob = Outbox(path, ttl_s={Lane.HEALTH: 10.0})
    ob.put([Envelope(id=f"old-{lane.name}-{i}", thing="car", type="t", ts=i, seq=i,
                     topic="t", lane=lane, body={"pad": "y" * 200})
            for lane in Lane for i in range(6)])
    ob.claim(4, lanes=[Lane.ALERT])
    ob.claim(4, lanes=[Lane.TELEMETRY])
    ob.close()
    return path


Op = Callable[[Outbox], Any]


def _inflight(ob: Outbox) -> list[int]:
    with sqlite3.connect(ob.path) as db:
        return [s for (s,) in db.execute("SELECT seq FROM messages WHERE state = 1")]


OPS: dict[str, Op] = {
    "put-telemetry": lambda ob: ob.put([env(i) for i in range(5)]),
    "put-alert": lambda ob: ob.put([env(1, Lane.ALERT)]),
    "put-mixed+state": lambda ob: ob.put(
        [env(1, Lane.ALERT), env(2), env(3, Lane.HEALTH), env(4, Lane.TRIP)],
        state={"rules": {"trip": 1}}),
    "claim": lambda ob: ob.claim(5),
    "ack": lambda ob: ob.ack(_inflight(ob)[:3]),
    "reject": lambda ob: ob.reject(_inflight(ob)[:2]),
    "release": lambda ob: ob.release(_inflight(ob)),
    "settle-mixed": lambda ob: ob.settle(acked=_inflight(ob)[:2], rejected=_inflight(ob)[2:3],
                                         released=_inflight(ob)[3:]),
    "purge-telemetry": lambda ob: ob.purge([Lane.TELEMETRY]),
    "expire": lambda ob: ob.expire(),
}


def _open(template: Path, d: Path, clock: Callable[[], float] | None = None) -> Outbox:
    d.mkdir()
    shutil.copy(template, d / "o.db")
    kw: dict[str, Any] = {"ttl_s": {Lane.HEALTH: 10.0}, "recover": False}
    if clock is not None:
        kw["clock"] = clock
    return Outbox(d / "o.db", **kw)


def _calls(template: Path, d: Path, op: Op) -> int:
    ob = _open(template, d, clock=lambda: 1e10)
    counting = Faulty(ob._db)
    ob._db = counting  # type: ignore[assignment]
    op(ob)
    ob._db = counting._db
    ob.close()
    return counting.calls


@pytest.mark.parametrize("kind", ["ENOSPC", "EIO", "EROFS"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_a_fault_at_every_step_leaves_the_outbox_consistent(
        template: Path, tmp_path: Path, name: str, kind: str) -> None:
    op = OPS[name]
    # the fault-free outcome, for comparison
    clean = _open(template, tmp_path / "clean", clock=lambda: 1e10)
    op(clean)
    clean.close()
    expected = _content(tmp_path / "clean" / "o.db")
    n = _calls(template, tmp_path / "count", op)
    assert n > 2
    for sticky in (False, True):
        for k in range(1, n + 1):
            d = tmp_path / f"{sticky}-{k}"
            ob = _open(template, d, clock=lambda: 1e10)
            before = _content(d / "o.db")
            faulty = Faulty(ob._db, k, kind, sticky)
            ob._db = faulty  # type: ignore[assignment]
            try:
                result: Any = op(ob)
                raised = False
            except OutboxError:
                raised = True
            finally:
                ob._db = faulty._db
            after = _content(d / "o.db")
            where = f"{name} {kind} at statement {k}/{n} sticky={sticky}"
            assert ob.integrity_ok(), where
            if raised:
                assert after == before, where  # all or nothing
            elif name.startswith("put"):
                ids = {i for i, _ in after[0]}
                assert all(i in ids for i, _ in before[0] if i.startswith("old-ALERT")), where
                assert {i for i in ids if "ALERT" in i or "TRIP" in i} >= {
                    i for i, _ in expected[0] if "ALERT" in i or "TRIP" in i}, where
                dropped = ob.stats()["counters"]
                stored_new = {i for i in ids if i.startswith("new-")}
                missing = {i for i, _ in expected[0] if i.startswith("new-")} - stored_new
                assert len(missing) <= sum(v for c, v in dropped.items()
                                           if c.startswith("dropped_full_")), where
                assert not any("ALERT" in i or "TRIP" in i for i in missing), where
                assert after[1] == expected[1], where  # the state went in with them
            elif faulty.fired and name != "expire":
                # a fault in a statement whose failure is harmless (a checkpoint)
                assert after == expected, where
            else:
                assert after == expected, (where, result)
            # the fault is gone: the same outbox works, and so does a reopen
            ob.put([env(99, Lane.ALERT)])
            got = ob.claim(100, lanes=[Lane.ALERT])
            ob.ack([r.seq for r in got])
            assert ob.integrity_ok(), where
            ob.close()
            again = Outbox(d / "o.db")
            assert again.integrity_ok(), where
            again.close()


def test_an_open_that_fails_midway_leaves_a_database_that_opens(tmp_path: Path) -> None:
    """A fault while a database from before versioning is migrated: the migration is
    one transaction, so the next open finds the old schema and migrates it."""
    from tests.unit.test_outbox_multi import _v0_database

    path = tmp_path / "o.db"
    _v0_database(path)
    real = sqlite3.connect

    calls = {"n": 0}

    def flaky(*a: Any, **kw: Any) -> Any:
        db = real(*a, **kw)
        calls["n"] += 1
        return Faulty(db, 9, "EIO") if calls["n"] == 1 else db

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sqlite3, "connect", flaky)
        with pytest.raises(OutboxError, match="cannot open"):
            Outbox(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    ob = Outbox(path)
    assert ob.migrated_from == 0 and ob.integrity_ok()
    assert ob.stats()["pending"] == 11
    ob.close()


def test_a_full_disk_is_told_by_its_error_code_not_its_wording(tmp_path: Path) -> None:
    import errno

    from edge.outbox import is_disk_full

    db = sqlite3.connect(tmp_path / "small.db")
    db.execute("CREATE TABLE t (b BLOB)")
    db.execute("PRAGMA max_page_count = 8")  # SQLITE_FULL, as a full disk reports it
    with pytest.raises(sqlite3.OperationalError) as full:
        for _ in range(100):
            db.execute("INSERT INTO t VALUES (?)", (b"x" * 4096,))
    db.close()
    assert is_disk_full(full.value)
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # the wording alone says nothing: an I/O error that mentions "full" is not one
    io = sqlite3.OperationalError("disk I/O error: buffer full")
    io.sqlite_errorcode = 10  # SQLITE_IOERR
    assert not is_disk_full(io)
    assert not is_disk_full(sqlite3.OperationalError("database or disk is full"))  # no code
    assert not is_disk_full(OSError(errno.EIO, "full of errors"))


def test_row_states_are_named_and_keep_their_numbers_on_disk(tmp_path: Path) -> None:
    from edge.outbox import State

    # the numbers are in every existing database: they never change
    assert (State.READY, State.INFLIGHT, State.HELD) == (0, 1, 2)
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(1), env(2)])
    ob.claim(1)
    ob.close()
    assert [s for _, s in _content(tmp_path / "o.db")[0]] == [State.INFLIGHT, State.READY]
