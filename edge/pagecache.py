"""Drop freshly installed shared libraries from the page cache:
``python -m edge.pagecache DIR [DIR ...]``.

pip writes a venv's files through the page cache, and a recent kernel (large folios for
ext4 and others, Linux 6.16 and later) keeps what was just written in large folios; a
process that then maps a library (numpy's, GEOS, cryptography's) maps whole folios, far
more than the pages it touches. The bench's encrypted daemon started right after an
install measured 70.5 MB of RSS, and 64.7 MB once the same files had been evicted (as
after a reboot: read back by readahead, small folios). A gateway runs the daemon right
after a deployment installs it, with no reboot in between, so the install steps
(``make venv``, the Greengrass component's ``install-venv.sh``) run this on the venv:
every shared library under DIR is written back (``fdatasync``) and dropped
(``POSIX_FADV_DONTNEED``); the daemon then reads them in as after a boot. Pages a
running process maps stay (the kernel keeps them): harmless, and nothing is lost.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path


def shared_libraries(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` named like a shared library (``*.so``, ``*.so.N``)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.endswith(".so") or ".so." in name:
                path = Path(dirpath, name)
                if path.is_file() and not path.is_symlink():
                    yield path


def drop(path: Path) -> None:
    """Write ``path`` back and drop its pages from the page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)  # dirty pages are not dropped: write them first
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_tree(root: Path) -> tuple[int, int]:
    """Drop every shared library under ``root``: (files, bytes)."""
    files = size = 0
    for path in shared_libraries(root):
        drop(path)
        files += 1
        size += path.stat().st_size
    return files, size


def main(argv: Sequence[str] | None = None) -> int:
    roots = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not roots:
        print("usage: python -m edge.pagecache DIR [DIR ...]", file=sys.stderr)
        return 2
    if not hasattr(os, "posix_fadvise"):
        print("page cache: posix_fadvise is not available here; nothing dropped")
        return 0
    for root in roots:
        if not root.is_dir():
            print(f"page cache: {root} is not a directory", file=sys.stderr)
            return 2
        files, size = drop_tree(root)
        print(f"page cache: dropped {files} shared libraries ({size / 2**20:.0f} MB) under"
              f" {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
