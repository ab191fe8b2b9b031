"""Disk space for the outbox: free space, pressure, the alerts' reserve, a full disk.

The outbox holds a reserve file beside the database (``reserve_bytes``) that is
released only to alerts and trip edges. Below ``min_free_bytes`` of free space the
outbox is under *pressure*: the WAL is checkpointed after every commit and the lower
lanes stop growing. A full disk is recognised by its error code (SQLite's
``SQLITE_FULL``, the OS's ``ENOSPC`` / ``EDQUOT``), never by the wording of a message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import structlog

from edge.logconf import Once

log = structlog.get_logger()

MB = 1024 * 1024
# disk pressure ends only once free space is back above min_free + this
PRESSURE_HYSTERESIS = 128 * 1024
# the WAL is truncated to this under disk pressure (journal_size_limit)
PRESSURE_WAL_BYTES = 64 * 1024
# less free space than this: the WAL is kept to ~256 KiB instead of ~1 MiB
SMALL_DISK_BYTES = 16 * MB
# how often (at most) a reserve that was released is taken back
RESERVE_RETRY_S = 5.0
# the reserve never takes the last bytes of a disk: the WAL needs room to work at all
RESERVE_SPARE = 128 * 1024
# WAL checkpoint interval (pages) and size limit (bytes) per level
WAL_LIMITS = {"pressure": (1, PRESSURE_WAL_BYTES), "small": (64, 256 * 1024),
              "roomy": (256, 1024 * 1024)}
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException | None) -> bool:
    """SQLITE_FULL (the disk or ``max_page_count``: SQLite's primary result code), or
    an OS error that says no space (ENOSPC, EDQUOT)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (int(code) & 0xFF) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def free_bytes(path: Path) -> int | None:
    """Free space (for an unprivileged writer) on the file system holding ``path``."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return int(st.f_bavail * st.f_frsize)


class Reserve:
    """A file of ``target`` bytes beside the database: space the outbox holds for alerts.

    ``release()`` gives it back to the file system (for an alert that hit a full disk);
    ``acquire()`` takes back what the file system can spare. Written with real blocks
    (``posix_fallocate``, else zeros), so it is space, not a sparse promise."""

    CHUNK = 64 * 1024

    def __init__(self, path: Path, target: int) -> None:
        self.path = path
        self.target = max(0, int(target))
        self.releases = 0

    @property
    def held(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def acquire(self, spare: int = 0) -> int:
        """Grow towards ``target``, leaving ``spare`` bytes free; returns bytes held."""
        held = self.held
        if held >= self.target:
            return held
        free = free_bytes(self.path.parent) or 0
        want = min(self.target, held + max(0, free - spare))
        want -= want % 4096
        if want <= held:
            return held
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "ab") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, want)
                except OSError:
                    f.seek(0, os.SEEK_END)
                    left = want - f.tell()
                    while left > 0:
                        n = min(self.CHUNK, left)
                        f.write(b"\0" * n)
                        left -= n
                    f.flush()
        except OSError:
            pass  # took what there was
        return self.held

    def release(self) -> int:
        """Give the space back; returns how many bytes were freed."""
        held = self.held
        if held:
            with contextlib.suppress(OSError):
                os.truncate(self.path, 0)
            self.releases += 1
        return held


class DiskWatch:
    """Free space, pressure (with the WAL limits that go with it) and the reserve of
    one outbox. Its methods that take the connection run under the outbox's lock."""

    def __init__(self, path: Path, *, min_free_bytes: int, reserve_bytes: int,
                 once: Once) -> None:
        self.path = path
        self.min_free_bytes = int(min_free_bytes)
        self.reserve = Reserve(path.with_name(path.name + ".reserve"), reserve_bytes)
        self.pressure = False
        self.free: int | None = None
        self.wal_bytes = 0
        self.full_events = 0
        self._wal_level = ""
        self._next_reserve = -1e18
        self._once = once

    def wal_limits(self, db: sqlite3.Connection, level: str) -> None:
        """How big the WAL may grow: with room to spare (``roomy``) it is checkpointed
        every ~1 MiB and truncated back to 1 MiB (fewer checkpoints, faster group
        commits); on a small disk (``small``: less than ``SMALL_DISK_BYTES`` free) every
        ~256 KiB, since the WAL is what fills a small disk first; under disk pressure
        after every commit (the next writer rewinds it and reuses its space), truncated
        to 64 KiB."""
        pages, limit = WAL_LIMITS[level]
        db.execute(f"PRAGMA wal_autocheckpoint={pages}")
        db.execute(f"PRAGMA journal_size_limit={limit}")
        self._wal_level = level

    def check(self, db: sqlite3.Connection) -> None:
        """Free space now, and whether the outbox is under disk pressure."""
        self.free = free_bytes(self.path.parent)
        try:
            self.wal_bytes = os.stat(f"{self.path}-wal").st_size
        except OSError:
            self.wal_bytes = 0
        if self.free is None:
            pressure = False
        else:
            # the WAL's space comes back at a checkpoint: it counts as free here
            room = self.free + max(0, self.wal_bytes - PRESSURE_WAL_BYTES)
            if self.pressure:  # hysteresis: the WAL's own breathing does not flap it
                pressure = room < self.min_free_bytes + PRESSURE_HYSTERESIS
            else:
                pressure = room < self.min_free_bytes
        level = "pressure" if pressure else "small" if (
            self.free is not None and self.free < SMALL_DISK_BYTES) else "roomy"
        if level != self._wal_level:
            with contextlib.suppress(sqlite3.Error):
                self.wal_limits(db, level)
        if pressure != self.pressure:
            self.pressure = pressure
            if pressure:
                self._once(log, "pressure", "outbox: disk space low, telemetry and health"
                           " stop growing", path=str(self.path), free_bytes=self.free,
                           min_free_bytes=self.min_free_bytes)
            else:
                log.info("outbox: disk space ok again", path=str(self.path),
                         free_bytes=self.free)

    def hit_full(self, db: sqlite3.Connection) -> None:
        """A write found the disk full: the WAL may hold most of the space; copy it back
        into the database file so the next writer rewinds it and reuses its space."""
        self.full_events += 1
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def release_reserve(self, db: sqlite3.Connection) -> None:
        """For alerts on a full disk: the reserve's space lets the WAL be copied back
        into the database file and truncated (the WAL holds many versions of the same
        pages: the database file grows by less than the WAL shrinks)."""
        log.warning("outbox: disk full, reserve released to alerts",
                    path=str(self.path), reserve_bytes=self.reserve.held)
        self.reserve.release()
        self._next_reserve = time.monotonic() + RESERVE_RETRY_S
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def retake_reserve(self, db: sqlite3.Connection) -> None:
        """Take back a released reserve once the file system has the space again (after
        the backlog drained and freed pages went back to it)."""
        r = self.reserve
        if not r.target or r.held >= r.target:
            return
        mono = time.monotonic()
        if mono < self._next_reserve:
            return
        self._next_reserve = mono + RESERVE_RETRY_S
        if self.pressure:
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA incremental_vacuum")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # whole, and only when the disk has room besides: not from under the alerts
        free = free_bytes(self.path.parent) or 0
        if free >= r.target - r.held + max(RESERVE_SPARE, self.min_free_bytes):
            r.acquire(spare=RESERVE_SPARE)

    def report(self) -> dict[str, Any]:
        """Free space (read now), pressure (as the last write decided it), the reserve."""
        r = self.reserve
        return disk_report(self.path, free=free_bytes(self.path.parent),
                           pressure=self.pressure, wal_bytes=self.wal_bytes,
                           min_free_bytes=self.min_free_bytes, reserve_target=r.target,
                           reserve_held=r.held, reserve_releases=r.releases,
                           full_events=self.full_events)


def disk_report(path: Path, *, free: int | None = None, pressure: bool | None = None,
                wal_bytes: int = 0, min_free_bytes: int = 0, reserve_target: int = 0,
                reserve_held: int = 0, reserve_releases: int = 0,
                full_events: int = 0) -> dict[str, Any]:
    if free is None:
        free = free_bytes(Path(path).parent)
    if pressure is None:
        pressure = free is not None and free < min_free_bytes
    return {
        "free_bytes": free,
        "wal_bytes": wal_bytes,
        "min_free_bytes": min_free_bytes,
        "pressure": pressure,
        "reserve_bytes": reserve_held,
        "reserve_target_bytes": reserve_target,
        "reserve_releases": reserve_releases,
        "full_events": full_events,
    }
