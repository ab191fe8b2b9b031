"""Zones + Roads + Daemon + Simulator as ``make components`` builds them, deployed on a real AWS
IoT Greengrass nucleus lite 2.6.0 (offline, ``posixUser vedge:vedge``), checked the way an
operator would: component states, the Daemon's status file (``edge status --file``), its
journal, its PID.

One scenario, in order (each step builds on the previous one):

1. Zones + Roads + Daemon + Simulator deploy; Daemon and Simulator RUNNING, Zones and
   Roads FINISHED.
2. The Daemon loads the Zones component's file and the Roads component's index (the
   Helsinki extract), reads the Simulator's ptys (GNSS and CAN), decides events and keeps
   them in its outbox while offline: one IPC connection, publishes retried with backoff,
   no unretrieved futures, no oversize IPC message. The bundled drive is in Munich: the
   index is looked up on every fix and matches no road.
3. A configuration merge is applied in place (same PID).
4. An invalid merge is rejected, the old configuration kept, the reason in ``edge status``.
5. A new Zones version is hot-reloaded (same PID).
6. The Simulator replays a drive generated along Helsinki roads of the index (10 km/h
   over their limits): the Daemon matches the roads and the posted limit applies.
7. A new Roads version (a smaller bbox of the extract) is hot-reloaded (same PID), and
   matching goes on with it.
8. A Daemon version whose run step fails ends BROKEN (the deployment FAILS), not FINISHED.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sim.serve import bench_config
from tests.greengrass.conftest import BUILD, ROOT, GgLite

# a first run builds gg-lite's rootfs (~1-2 min) inside the fixture's setup
pytestmark = pytest.mark.timeout(900)

DAEMON = "com.vehicleedge.Daemon"
ZONES = "com.vehicleedge.Zones"
SIM = "com.vehicleedge.Simulator"
ROADS = "com.vehicleedge.Roads"
GG_ROOT = "/var/lib/greengrass"  # nucleus lite's rootPath
WORK = f"{GG_ROOT}/work/{DAEMON}"
SERVE_DIR = Path("/run/vehicle-edge")
ROADS_DB = f"{GG_ROOT}/work/{ROADS}/roads.db"
HELSINKI_DRIVE = "/srv/vehicle-edge/drives/helsinki"  # in the container


def version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def bump(v: str, by: int) -> str:
    major, minor, patch = v.split("-")[0].split(".")
    return f"{major}.{minor}.{int(patch) + by}"


def recipe(name: str, v: str) -> dict[str, Any]:
    return dict(json.loads((BUILD / "recipes" / f"{name}-{v}.json").read_text()))


def add_variant(stage: Path, name: str, base: str, new: str,
                change: Callable[[dict[str, Any], Path], None]) -> None:
    """A new version of a built component: its recipe and artifacts, then ``change``."""
    r = json.loads(json.dumps(recipe(name, base)).replace(base, new))
    adir = stage / "artifacts" / name / new
    shutil.copytree(BUILD / "artifacts" / name / base, adir)
    change(r, adir)
    (stage / "recipes" / f"{name}-{new}.json").write_text(json.dumps(r, indent=2))


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0,
             every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build/greengrass (make components) plus the later versions the scenario deploys."""
    v = version()
    if not (BUILD / "recipes" / f"{DAEMON}-{v}.json").is_file():
        pytest.fail(f"no {DAEMON} {v} in {BUILD}: run make components (make greengrass does)")
    if not (BUILD / "recipes" / f"{ROADS}-{v}.json").is_file():
        pytest.fail(f"no {ROADS} {v} in {BUILD}: make components builds it from the Helsinki "
                    "extract (make testdata) or ROADS_EXTRACT=...")
    st = tmp_path_factory.mktemp("gg-stage")
    shutil.copytree(BUILD / "recipes", st / "recipes")
    (st / "artifacts").mkdir()
    for name in (DAEMON, ZONES, SIM, ROADS):
        shutil.copytree(BUILD / "artifacts" / name / v, st / "artifacts" / name / v)
    # a drive along roads of the index, and a smaller index around it for Roads v+1
    drive_box = helsinki_drive(BUILD / "artifacts" / ROADS / v / "roads.db", st / "helsinki")

    def smaller_index(r: dict[str, Any], adir: Path) -> None:
        from edge.roads.importer import import_extract

        (adir / "roads.db").unlink()
        extract = Path(json.loads((BUILD / "build-summary.json").read_text())["roads"]["extract"])
        w, s_, e, n = drive_box
        import_extract(extract, adir / "roads.db", bbox=(w - 0.003, s_ - 0.003, e + 0.003,
                                                         n + 0.003))

    def new_zones(r: dict[str, Any], adir: Path) -> None:
        fc = json.loads((adir / "zones.geojson").read_text())
        extra = copy.deepcopy(next(f for f in fc["features"]
                                   if f["properties"].get("kind") == "poi"))
        extra["properties"]["id"] = extra["properties"]["id"] + "-2"
        extra["properties"]["name"] = "A second POI, new in this version"
        fc["features"].append(extra)
        (adir / "zones.geojson").write_text(json.dumps(fc))

    def broken_run(r: dict[str, Any], adir: Path) -> None:
        # a release whose run step fails at once (an option this edge does not know)
        for m in r["Manifests"]:
            m["Lifecycle"]["run"]["Script"] += " --option-of-a-newer-release"

    add_variant(st, ZONES, v, bump(v, 1), new_zones)
    add_variant(st, ROADS, v, bump(v, 1), smaller_index)
    add_variant(st, DAEMON, v, bump(v, 2), broken_run)
    return st


def helsinki_drive(index: Path, dest: Path) -> tuple[float, float, float, float]:
    """A bench drive (``edge sim`` layout, the city drive's config and DBC) along >= 2.5 km
    of roads of ``index``, 10 km/h over each road's limit, starting now (GNSS time must
    not go back behind the city drive's). Returns the route's bbox (W, S, E, N)."""
    from edge.roads.index import RoadIndex
    from sim.generate import generate, write_drive
    from sim.roads import Graph, follow, profile

    idx = RoadIndex(index)
    graph = Graph(idx)
    ids = sorted(graph.segs)
    rng = random.Random(17)
    route = None
    for seed in range(1, 200):
        route = follow(graph, rng.choice(ids), 4000, seed=seed)
        if route.length_m >= 2500:
            break
    assert route is not None and route.length_m >= 2500

    def limit_of(piece: Any) -> float:
        w = idx.way(piece.way)
        kmh = w.fwd_kmh if piece.forward else w.bwd_kmh
        return 50.0 if kmh is None else kmh

    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=5)
    p = profile(route, limit_of, seed=17, factor=1.0, offset_kmh=10.0, start=start,
                hdop=1.0, noise_m=1.5)
    # the bench Daemon reads its speed from CAN (few background frames: a quick copy)
    p = dataclasses.replace(p, with_can=True, background_fps=100.0)
    dest.mkdir(parents=True)
    write_drive(dest, generate(p))
    city = ROOT / "sim" / "drives" / "city"
    shutil.copy2(ROOT / "sim" / "dbc" / "demo.dbc", dest / "demo.dbc")
    (dest / "config.toml").write_text((city / "config.toml").read_text().replace(
        'dbc = "../../dbc/demo.dbc"', 'dbc = "demo.dbc"'))
    idx.close()
    lons = [c[0] for c in route.coords]
    lats = [c[1] for c in route.coords]
    return min(lons), min(lats), max(lons), max(lats)


def status(gg: GgLite) -> dict[str, Any]:
    """What ``edge status --file`` shows an operator on the gateway (as the component user)."""
    out = gg.sh(f"cd {WORK} && ./venv-{version()}/bin/edge status --file {WORK}/health.json",
                user="vedge", check=False)
    return dict(json.loads(out[out.index("{"):]))


def test_zones_roads_daemon_simulator_on_nucleus_lite(gg: GgLite, stage: Path) -> None:
    v = version()
    recipes, artifacts = stage / "recipes", stage / "artifacts"

    # 1. deploy: the Daemon pointed at the Simulator's ptys (what the Simulator writes to
    #    /run/vehicle-edge/bench.json), health every second; the drive at 5x
    bench = bench_config(ROOT / "sim" / "drives" / "city", SERVE_DIR, can=True, copy_dbc=False)
    merge = {**bench, "health": {"interval_s": 1.0}}
    d = gg.deploy(recipes, artifacts, "--add", f"{ZONES}={v}", "--add", f"{ROADS}={v}",
                  "--add", f"{DAEMON}={v}", "--add", f"{SIM}={v}",
                  "--update", f"{DAEMON}=" + json.dumps({"MERGE": merge}),
                  "--update", f"{SIM}=" + json.dumps({"MERGE": {"rate": 5.0}}))
    print(f"\ndeploy Zones + Roads + Daemon + Simulator: {d.seconds:.1f} s")
    assert d.rc == 0 and "SUCCEEDED" in d.out, d.out
    assert gg.state() == {ZONES: (v, "FINISHED"), ROADS: (v, "FINISHED"),
                          DAEMON: (v, "RUNNING"), SIM: (v, "RUNNING")}
    served = gg.json_file(str(SERVE_DIR / "bench.json"))
    assert served == bench  # the Daemon's configuration points where the Simulator serves

    # 2. zones loaded, both ptys read, events decided and kept while offline
    def ready() -> dict[str, Any] | None:
        s = status(gg)
        lanes = s.get("outbox", {}).get("lanes", {})
        alerts = lanes.get("alert", {})
        if (s.get("gnss", {}).get("fixes", 0) > 0 and s.get("can", {}).get("samples", 0) > 0
                and alerts.get("ready", 0) + alerts.get("inflight", 0) > 0):
            return s
        return None

    s = wait_for("the Daemon to read the ptys and keep an alert", ready, timeout=90)
    assert s["state"] == "running"
    # started over as python -OO on asyncio's loop, its bytecode compiled by the install
    # step into the cache the recipe gives it (edge.process)
    assert s["process"] == {"optimize": 2, "event_loop": "asyncio"}
    cached = gg.sh(f"find {GG_ROOT}/work/{DAEMON}/cache/vehicle-edge/bytecode"
                   " -name 'engine.cpython-311.opt-2.pyc'")
    assert "/edge/core/engine.cpython-311.opt-2.pyc" in cached, cached
    zones = s["rules"]["zones"]
    assert zones["source"] == f"{GG_ROOT}/work/{ZONES}/zones.geojson" and zones["error"] is None
    assert zones["fence"] >= 1 and zones["poi"] >= 1
    # the Roads component's index, found through the root path; the city drive is in
    # Munich, so every fix is looked up in it and none matches a road
    full = json.loads((BUILD / "build-summary.json").read_text())["roads"]["import"]
    s = wait_for("the road index to be loaded",
                 lambda: (st := status(gg))["rules"]["overspeed"]["roads"].get("segments")
                 and st, timeout=30)
    roads = s["rules"]["overspeed"]["roads"]
    assert roads["index"] == ROADS_DB and roads["error"] is None, roads
    assert roads["segments"] == full["segments"] and roads["reloads"] == 0
    assert roads["lookups"] > 0 and roads["unmatched"] > 0 and roads["matched"] == 0
    assert not s["rules"]["overspeed"]["limit_source"].startswith("road:")
    assert s["gnss"]["port"] == str(SERVE_DIR / "gnss") and s["gnss"]["valid_fixes"] > 0
    assert s["can"]["interface"] == "slcan" and s["can"]["decoder"]["decoded"] > 0
    assert s["speed"]["source"] == "can"
    assert s["counters"]["accepted"] > 0 and s["counters"]["published"] == 0  # offline
    assert s["uplink"]["state"] == "publish failing"
    assert "ServiceError" in (s["uplink"]["last_error"] or "")
    time.sleep(5)  # offline for a while: still one IPC connection, failures backed off
    s = status(gg)
    assert s["counters"]["connects"] == 1, s["counters"]
    assert s["counters"]["uplink_errors"] == 0
    assert s["outbox"]["pending"] > 0
    log = gg.logs(DAEMON)
    for bad in ("Future exception was never retrieved", "StreamClosedError", "Traceback"):
        assert bad not in log, bad
    nucleus = gg.sh("journalctl --no-pager -q | grep -c 'does not fit in configured IPC buffer'"
                    " || true")
    assert nucleus.strip().splitlines()[-1] == "0", "an IPC message over lite's 10,000 B"
    pid = gg.main_pid(DAEMON)

    # 3. a configuration merge is applied in place: same process (the value as a string,
    #    the way lite stores a YAML deployment's scalars)
    applied = s["greengrass"]["updates_applied"]
    d = gg.run("deploy", "--update",
               f"{DAEMON}=" + json.dumps({"MERGE": {"telemetry": {"interval_s": "2"}}}),
               check=False)
    print(f"deploy --update (config merge): {d.seconds:.1f} s")
    assert d.rc == 0 and "SUCCEEDED" in d.out, d.out
    wait_for("the merge to be applied",
             lambda: status(gg)["greengrass"]["updates_applied"] > applied, timeout=30)
    assert gg.main_pid(DAEMON) == pid

    # 4. an invalid merge (lite does not validate): rejected in place, shown in edge status
    d = gg.run("deploy", "--update", f"{DAEMON}=" + json.dumps({"MERGE": {"gnss": {"baud": -1}}}),
               check=False)
    assert d.rc == 0, d.out
    s = wait_for("the invalid merge to be rejected",
                 lambda: (st := status(gg))["greengrass"]["updates_rejected"] > 0 and st,
                 timeout=30)
    assert "gnss.baud" in s["greengrass"]["last_rejected_reason"], s["greengrass"]
    assert s["state"] == "running" and s["gnss"]["connected"]
    assert gg.main_pid(DAEMON) == pid
    d = gg.run("deploy", "--update", f"{DAEMON}=" + json.dumps({"MERGE": {"gnss": {"baud": 9600}}}),
               check=False)  # repaired: a restart would otherwise read the invalid value
    assert d.rc == 0, d.out

    # 5. a new Zones version: installed, FINISHED, hot-reloaded by the running Daemon
    reloads = status(gg)["rules"]["zones"]["reloads"]
    pois = status(gg)["rules"]["zones"]["poi"]
    # lite re-ran Zones' run step for each of those deployments: an unchanged file is
    # left alone, so the Daemon never reloaded it
    assert reloads == 0
    z2 = bump(v, 1)
    d = gg.deploy(recipes, artifacts, "--add", f"{ZONES}={z2}")
    print(f"deploy Zones {z2}: {d.seconds:.1f} s")
    assert d.rc == 0 and "SUCCEEDED" in d.out, d.out
    assert gg.state()[ZONES] == (z2, "FINISHED")
    s = wait_for("the new zones to be loaded",
                 lambda: (st := status(gg))["rules"]["zones"]["reloads"] > reloads and st,
                 timeout=30)
    assert s["rules"]["zones"]["poi"] == pois + 1 and s["rules"]["zones"]["error"] is None
    assert s["rules"]["zones"]["reloads"] == 1
    assert gg.main_pid(DAEMON) == pid

    # 6. a drive along Helsinki roads (what the Simulator replays is a config merge and a
    #    restart of its unit): the Daemon matches them and their posted limits apply
    gg.put(stage / "helsinki", HELSINKI_DRIVE)
    d = gg.run("deploy", "--update", f"{SIM}=" + json.dumps({"MERGE": {"drive": HELSINKI_DRIVE,
                                                                 "rate": 3.0}}),
               check=False)
    assert d.rc == 0 and "SUCCEEDED" in d.out, d.out
    gg.sh(f"systemctl restart ggl.{SIM}.service")
    t0 = time.monotonic()

    def on_road() -> dict[str, Any] | None:
        st = status(gg)
        over = st["rules"]["overspeed"]
        if over["roads"]["matched"] > 0 and over["limit_source"].startswith("road:osm:way/"):
            return st
        return None

    s = wait_for("the Daemon to match a Helsinki road", on_road, timeout=90)
    print(f"first road match after the Simulator's restart: {time.monotonic() - t0:.1f} s")
    roads = s["rules"]["overspeed"]["roads"]
    assert roads["matched_way"] is not None and roads["index"] == ROADS_DB
    assert s["rules"]["overspeed"]["limit_kmh"] is not None
    assert gg.json_file(str(SERVE_DIR / "bench.json")) == bench  # same ptys, same DBC
    over = wait_for("an overspeed on a posted limit",
                    lambda: (st := status(gg))["rules"]["overspeed"]["active"] and st,
                    timeout=60)["rules"]["overspeed"]
    assert over["limit_source"].startswith("road:"), over
    assert gg.main_pid(DAEMON) == pid

    # 7. a new Roads version (a smaller bbox around the drive): FINISHED, hot-reloaded by
    #    the running Daemon, which goes on matching with it
    assert status(gg)["rules"]["overspeed"]["roads"]["reloads"] == 0  # re-runs left it alone
    r2 = bump(v, 1)
    d = gg.deploy(recipes, artifacts, "--add", f"{ROADS}={r2}")
    print(f"deploy Roads {r2}: {d.seconds:.1f} s")
    assert d.rc == 0 and "SUCCEEDED" in d.out, d.out
    assert gg.state()[ROADS] == (r2, "FINISHED")
    s = wait_for("the new road index to be loaded",
                 lambda: (st := status(gg))["rules"]["overspeed"]["roads"]["reloads"] > 0
                 and st, timeout=30)
    roads = s["rules"]["overspeed"]["roads"]
    assert roads["reloads"] == 1 and roads["error"] is None
    assert 0 < roads["segments"] < full["segments"], roads
    wait_for("a match in the new index",
             lambda: status(gg)["rules"]["overspeed"]["roads"]["matched"] > 0, timeout=30)
    assert gg.main_pid(DAEMON) == pid
    assert "published" in gg.logs(ROADS)

    # 8. a Daemon release whose run step fails: BROKEN and the deployment FAILS
    broken = bump(v, 2)
    d = gg.deploy(recipes, artifacts, "--add", f"{DAEMON}={broken}")
    print(f"deploy a failing Daemon {broken}: {d.seconds:.1f} s")
    assert d.rc == 1 and "FAILED" in d.out, d.out
    assert gg.state()[DAEMON] == (broken, "BROKEN")
    assert "--option-of-a-newer-release" in gg.logs(DAEMON, "200")
