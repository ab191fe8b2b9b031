"""Zones + Daemon + Simulator as ``make components`` builds them, deployed on a real AWS
IoT Greengrass nucleus lite 2.6.0 (offline, ``posixUser vedge:vedge``), checked the way an
operator would: component states, the Daemon's status file (``edge status --file``), its
journal, its PID.

One scenario, in order (each step builds on the previous one):

1. Zones + Daemon + Simulator deploy; Daemon and Simulator RUNNING, Zones FINISHED.
2. The Daemon loads the Zones component's file, reads the Simulator's ptys (GNSS and
   CAN), decides events and keeps them in its outbox while offline: one IPC connection,
   publishes retried with backoff, no unretrieved futures, no oversize IPC message.
3. A configuration merge is applied in place (same PID).
4. An invalid merge is rejected, the old configuration kept, the reason in ``edge status``.
5. A new Zones version is hot-reloaded (same PID).
6. A Daemon version whose run step fails ends BROKEN (the deployment FAILS), not FINISHED.
"""

from __future__ import annotations

import copy
import json
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
GG_ROOT = "/var/lib/greengrass"  # nucleus lite's rootPath
WORK = f"{GG_ROOT}/work/{DAEMON}"
SERVE_DIR = Path("/run/vehicle-edge")


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
    st = tmp_path_factory.mktemp("gg-stage")
    shutil.copytree(BUILD / "recipes", st / "recipes")
    (st / "artifacts").mkdir()
    for name in (DAEMON, ZONES, SIM):
        shutil.copytree(BUILD / "artifacts" / name / v, st / "artifacts" / name / v)

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
    add_variant(st, DAEMON, v, bump(v, 2), broken_run)
    return st


def status(gg: GgLite) -> dict[str, Any]:
    """What ``edge status --file`` shows an operator on the gateway (as the component user)."""
    out = gg.sh(f"cd {WORK} && ./venv-{version()}/bin/edge status --file {WORK}/health.json",
                user="vedge", check=False)
    return dict(json.loads(out[out.index("{"):]))


def test_zones_daemon_simulator_on_nucleus_lite(gg: GgLite, stage: Path) -> None:
    v = version()
    recipes, artifacts = stage / "recipes", stage / "artifacts"

    # 1. deploy: the Daemon pointed at the Simulator's ptys (what the Simulator writes to
    #    /run/vehicle-edge/bench.json), health every second; the drive at 5x
    bench = bench_config(ROOT / "sim" / "drives" / "city", SERVE_DIR, can=True, copy_dbc=False)
    merge = {**bench, "health": {"interval_s": 1.0}}
    d = gg.deploy(recipes, artifacts, "--add", f"{ZONES}={v}", "--add", f"{DAEMON}={v}",
                  "--add", f"{SIM}={v}",
                  "--update", f"{DAEMON}=" + json.dumps({"MERGE": merge}),
                  "--update", f"{SIM}=" + json.dumps({"MERGE": {"rate": 5.0}}))
    print(f"\ndeploy Zones + Daemon + Simulator: {d.seconds:.1f} s")
    assert d.rc == 0 and "SUCCEEDED" in d.out, d.out
    assert gg.state() == {ZONES: (v, "FINISHED"), DAEMON: (v, "RUNNING"), SIM: (v, "RUNNING")}
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
    zones = s["rules"]["zones"]
    assert zones["source"] == f"{GG_ROOT}/work/{ZONES}/zones.geojson" and zones["error"] is None
    assert zones["fence"] >= 1 and zones["poi"] >= 1
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

    # 6. a Daemon release whose run step fails: BROKEN and the deployment FAILS
    broken = bump(v, 2)
    d = gg.deploy(recipes, artifacts, "--add", f"{DAEMON}={broken}")
    print(f"deploy a failing Daemon {broken}: {d.seconds:.1f} s")
    assert d.rc == 1 and "FAILED" in d.out, d.out
    assert gg.state()[DAEMON] == (broken, "BROKEN")
    assert "--option-of-a-newer-release" in gg.logs(DAEMON, "200")
