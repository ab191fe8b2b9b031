"""``python -m edge.pagecache DIR``: the shared libraries an install just wrote leave the
page cache (resident pages counted with mincore(2)); other files are left alone."""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.pagecache import main

ROOT = Path(__file__).resolve().parents[2]


def resident_pages(path: Path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages in all), by mincore(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        view = ctypes.c_char.from_buffer(mm)
        try:
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size),
                              vec)
        finally:
            del view
    assert rc == 0, os.strerror(ctypes.get_errno())
    return sum(b & 1 for b in vec), pages


def _filesystem(path: Path) -> str:
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mnt, fstype, *_ = line.split()
        if str(path).startswith(mnt) and len(mnt) > len(best):
            best, kind = mnt, fstype
    return kind


@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    if not sys.platform.startswith("linux"):
        pytest.skip("mincore and /proc/mounts: Linux")
    if _filesystem(tmp_path) in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is in memory: its pages are the file, nothing to drop")
    return tmp_path


def test_installed_shared_libraries_leave_the_page_cache(
    disk_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    lib = disk_dir / "venv" / "lib" / "python3.11" / "site-packages" / "numpy.libs"
    lib.mkdir(parents=True)
    so = lib / "libopenblas-1a2b.so.0.3"
    ext = lib.parent / "_core.cpython-311-x86_64-linux-gnu.so"
    text = lib.parent / "module.py"
    for p in (so, ext, text):
        p.write_bytes(os.urandom(1 << 20))  # just written: all in the page cache
        assert resident_pages(p)[0] == resident_pages(p)[1]
    (lib / "libopenblas.so").symlink_to(so.name)

    assert main([str(disk_dir / "venv")]) == 0

    assert resident_pages(so)[0] == 0
    assert resident_pages(ext)[0] == 0
    assert resident_pages(text)[0] == resident_pages(text)[1]  # not a library: left
    out = capsys.readouterr().out
    assert out == f"page cache: dropped 2 shared libraries (2 MB) under {disk_dir / 'venv'}\n"


def test_a_missing_folder_is_refused() -> None:
    r = subprocess.run([sys.executable, "-m", "edge.pagecache", "/nonexistent/venv"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert r.stderr == "page cache: /nonexistent/venv is not a directory\n"
