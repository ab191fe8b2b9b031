"""The outbox's one SQLite connection, its lock, and the transaction every write runs in."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from edge.errors import OutboxError
from edge.outbox.disk import DiskWatch, is_disk_full
from edge.outbox.schema import bump, merged


class Store:
    """Synchronous, over one connection guarded by ``lock`` (async code calls the
    outbox through ``asyncio.to_thread``). Other processes may open the same database
    at the same time: nothing is cached across transactions."""

    def __init__(self, db: sqlite3.Connection, disk: DiskWatch) -> None:
        self.db = db
        self.lock = threading.Lock()
        self.disk = disk
        # drops that could not be written yet (the disk was full): folded into the
        # next transaction that commits
        self.unsaved: dict[str, int] = {}

    def count_later(self, name: str, n: int = 1) -> None:
        """A counter for the next commit (this one could not be written)."""
        self.unsaved[name] = self.unsaved.get(name, 0) + n

    def bump(self, name: str, n: int) -> None:
        bump(self.db, name, n)

    def write(self, what: str, body: Callable[[], Any], *, sync: str = "NORMAL") -> Any:
        """Run ``body`` in one IMMEDIATE transaction (the caller holds the lock);
        raises ``OutboxError`` (its cause: the sqlite3 error)."""
        db = self.db
        try:
            db.execute(f"PRAGMA synchronous={sync}")
            db.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                unsaved, self.unsaved = self.unsaved, {}
                try:
                    for name, n in unsaved.items():
                        self.bump(name, n)
                    db.execute("COMMIT")
                except BaseException:
                    self.unsaved = merged(self.unsaved, unsaved)
                    raise
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                self.disk.hit_full(db)
            raise OutboxError(f"outbox {what} failed: {exc}") from exc
        return result

    def locked_write(self, what: str, body: Callable[[], Any], *,
                     sync: str = "NORMAL") -> Any:
        with self.lock:
            return self.write(what, body, sync=sync)

    def read(self, what: str, body: Callable[[], Any]) -> Any:
        """Run ``body`` in one read transaction (consistent totals), under the lock."""
        with self.lock:
            try:
                self.db.execute("BEGIN")
                try:
                    return body()
                finally:
                    self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {what} failed: {exc}") from exc

    def close(self) -> None:
        with self.lock:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.close()
