#!/usr/bin/env python3
"""Fetch gpsd's regression logs (``test/daemon/*.log`` and their ``*.log.chk`` answer keys,
BSD-2-Clause) into the cache.

They come from Debian's source package ``gpsd`` (the upstream tarball of the version in
Debian 12 "bookworm"), downloaded from the Debian mirror configured for apt on this
machine, checked against a pinned sha256, and extracted to
``${VEHICLE_EDGE_CACHE:-~/.cache/vehicle-edge}/gpsd-3.22/daemon/``. Never committed.

Usage: ``python scripts/fetch_gpsd_logs.py [--mirror URL] [--force]``. Idempotent: a
second run with the logs in place does nothing. Exit 0 on success, 1 on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "3.22"
FILENAME = f"gpsd_{VERSION}.orig.tar.xz"
POOL_PATH = f"pool/main/g/gpsd/{FILENAME}"
# From the Checksums-Sha256 of gpsd_3.22-4.1+deb12u1.dsc (Debian 12).
SHA256 = "68d2a04e237a02ce42158ceda462a24afe11eeaa2b13482e94ac7ef66693f3a0"
SIZE = 3347364
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MEMBER = re.compile(r"^[^/]+/test/daemon/([^/]+\.(?:log|log\.chk))$")


def cache_dir() -> Path:
    root = os.environ.get("VEHICLE_EDGE_CACHE") or str(Path.home() / ".cache" / "vehicle-edge")
    return Path(root) / f"gpsd-{VERSION}" / "daemon"


def apt_mirrors() -> list[str]:
    """Debian archive URIs from apt's sources (deb822 ``.sources`` and one-line form)."""
    found: list[str] = []
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(d.iterdir())
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            uris: list[str] = []
            if line.startswith("URIs:"):
                uris = line.split()[1:]
            elif line.startswith("deb ") or line.startswith("deb-src "):
                parts = [p for p in line.split()[1:] if not p.startswith("[")]
                uris = parts[:1]
            for uri in uris:
                uri = uri.rstrip("/")
                # the main archive, not -security / -backports / third-party repos
                if uri.endswith("/debian") and uri not in found:
                    found.append(uri)
    return found


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:
        data: bytes = resp.read(SIZE + 1)
    return data


def fetch(mirrors: list[str], dest: Path) -> int:
    errors: list[str] = []
    for mirror in mirrors:
        url = f"{mirror}/{POOL_PATH}"
        try:
            data = download(url)
        except OSError as exc:
            errors.append(f"{url}: {exc}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256:
            errors.append(f"{url}: sha256 {digest} != pinned {SHA256}")
            continue
        dest.mkdir(parents=True, exist_ok=True)
        count = 0
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as tar:
            for member in tar.getmembers():
                m = MEMBER.match(member.name)
                if not m or not member.isfile():
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                (dest / m.group(1)).write_bytes(fh.read())
                count += 1
        (dest / ".sha256").write_text(SHA256 + "\n")
        print(f"gpsd logs: {count} files from {url} into {dest}")
        return 0
    for e in errors:
        print(f"gpsd logs: {e}", file=sys.stderr)
    print("gpsd logs: download failed", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", help="Debian archive base URL (default: apt's configured one)")
    ap.add_argument("--force", action="store_true", help="download even if present")
    args = ap.parse_args(argv)
    dest = cache_dir()
    marker = dest / ".sha256"
    complete = any(dest.glob("*.log.chk"))  # answer keys came with a later version of this script
    if (not args.force and complete and marker.is_file()
            and marker.read_text().strip() == SHA256):
        print(f"gpsd logs: already in {dest}")
        return 0
    mirrors = [args.mirror.rstrip("/")] if args.mirror else apt_mirrors() or [DEFAULT_MIRROR]
    return fetch(mirrors, dest)


if __name__ == "__main__":
    raise SystemExit(main())
