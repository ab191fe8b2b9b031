"""Private files: what the daemon writes says where the car has been.

The outbox (and its ``-wal``, ``-shm`` and ``.reserve``), the status file and the
recordings of ``edge record`` are created ``0600`` in folders created ``0700``,
whatever the umask. At start an existing one that other users may read is tightened
(logged once per path) when it belongs to the daemon's user, and refused with
``PrivacyError`` naming the path when it does not (the daemon cannot make it private).

A folder may keep its group *search* bit (``g+x``): it lets the group named in
``[health] group`` open the status file by name, and reveals nothing else (every other
file in it is ``0600``). The same check (``exposure``) guards the TLS client key and
the outbox's encryption key.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import structlog

from edge.errors import EdgeError
from edge.logconf import Once

log = structlog.get_logger()

FILE_MODE = 0o600
DIR_MODE = 0o700
# bits nobody but the owner may have: on a file, and on a folder (g+x allowed, above)
FILE_CLOSED = 0o077
DIR_CLOSED = 0o067

_tightened = Once()  # each path logged once per process


class PrivacyError(EdgeError):
    """A file or folder readable by other users that is not the daemon's to tighten."""


def exposure(path: Path, closed: int = FILE_CLOSED, *, owner: bool = True) -> str | None:
    """Why ``path`` is not private: one of the ``closed`` mode bits is set, or (with
    ``owner``) it belongs to another user. None when it is private (or missing: the
    caller's open says so). One sentence naming the path and the fix."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    mode = stat.S_IMODE(st.st_mode)
    if owner and st.st_uid != os.geteuid():
        return f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    if mode & closed:
        who = "world-readable" if mode & 0o004 else "readable by other users"
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        return f"{path} is {who} (mode {mode:04o}); chmod {want:o} it"
    return None


def tighten(path: Path, closed: int = FILE_CLOSED) -> None:
    """Make an existing ``path`` private (drop the ``closed`` bits), logged once; raise
    ``PrivacyError`` naming it when it is another user's and open to others."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PrivacyError(f"cannot check {path}: {exc.strerror}") from exc
    mode = stat.S_IMODE(st.st_mode)
    if not mode & closed:
        return
    if st.st_uid != os.geteuid():
        raise PrivacyError(
            f"{path} is readable by other users (mode {mode:04o}) and belongs to uid"
            f" {st.st_uid}, not to this user (uid {os.geteuid()}): make it private"
            " (chown/chmod) or choose another path")
    if stat.S_ISLNK(st.st_mode):
        raise PrivacyError(f"{path} is a symbolic link: point the config at the file itself")
    # a folder open to others loses its group search bit too (``[health] group``
    # gives it back to the group it names)
    now = mode & ~(FILE_CLOSED if stat.S_ISDIR(st.st_mode) else closed)
    try:
        os.chmod(path, now)
    except OSError as exc:
        raise PrivacyError(f"cannot make {path} private: {exc.strerror}") from exc
    if _tightened.first(str(path)):
        log.warning("private file was readable by other users: tightened",
                    path=str(path), mode=f"{mode:04o}", now=f"{now:04o}")


def private_dir(path: Path) -> Path:
    """``path`` and its missing parents created ``0700``; an existing ``path`` (the
    folder itself, not its parents) tightened or refused like a file."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, DIR_MODE)
            os.chmod(d, DIR_MODE)  # a umask may have taken owner bits
    tighten(path, DIR_CLOSED)
    return path


def private_file(path: Path, *, mode: int = FILE_MODE, gid: int | None = None) -> None:
    """Create ``path`` empty with exactly ``mode`` if it is missing (SQLite then gives
    its ``-wal`` and ``-shm`` the same mode); tighten or refuse an existing one."""
    closed = 0o077 & ~mode
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        tighten(path, closed)
        if gid is not None:
            _chgrp(path, gid)
        return
    try:
        os.fchmod(fd, mode)
        if gid is not None:
            os.fchown(fd, -1, gid)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, *, mode: int = FILE_MODE,
                  gid: int | None = None, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` with exactly ``mode`` (and group ``gid``): through a
    temporary file and a rename, or (``exclusive``) only if ``path`` does not exist
    (``FileExistsError`` otherwise)."""
    path = Path(path)
    target = path if exclusive else path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_EXCL if exclusive else os.O_TRUNC)
    if not exclusive:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)  # a leftover may have another mode or owner
        flags |= os.O_EXCL
    fd = os.open(target, flags, mode)
    try:
        os.fchmod(fd, mode)
        if gid is not None:
            os.fchown(fd, -1, gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    os.close(fd)
    if not exclusive:
        os.replace(target, path)


def group_id(name: str) -> int:
    """The gid of group ``name`` (KeyError when there is none)."""
    import grp  # local: only a configured [health] group needs it

    return grp.getgrnam(name).gr_gid


def share_dir_with_group(path: Path, gid: int) -> None:
    """Let group ``gid`` reach files in ``path`` by name (``g+x``, no listing)."""
    st = path.stat()
    if st.st_gid != gid:
        _chgrp(path, gid)
    os.chmod(path, (stat.S_IMODE(st.st_mode) & ~DIR_CLOSED) | 0o010)


def _chgrp(path: Path, gid: int) -> None:
    try:
        os.chown(path, -1, gid)
    except OSError as exc:
        raise PrivacyError(f"cannot give {path} to group {gid}: {exc.strerror}"
                           " (the daemon's user must be a member)") from exc


def write_status(path: Path, data: bytes, *, group: str | None = None) -> None:
    """The status file: private, or readable by ``group`` too (0640, its folder g+x)."""
    gid = group_id(group) if group is not None else None
    private_dir(path.parent)
    if gid is not None:
        share_dir_with_group(path.parent, gid)
    write_private(path, data, mode=0o640 if gid is not None else FILE_MODE, gid=gid)


def check_status_path(path: Path, *, group: str | None = None) -> None:
    """At start: the status file's folder and an existing status file made private (or
    ``PrivacyError`` naming the one that is another user's)."""
    private_dir(path.parent)
    tighten(path, 0o037 if group is not None else FILE_CLOSED)
