"""Rendered Greengrass recipes: schema, least privilege, lifecycle keys as nucleus lite
wants them (phases lowercase, step keys capitalised), lite's size limits, platforms.

The GDK CLI's recipe schema (gdk/static/recipe_schema.json) is not on PyPI (the PyPI
package named ``gdk`` is an unrelated project), so this validates the fields we rely on
with our own JSON Schema, written here, in the GDK's convention: keys compared lowercased.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.config import Config
from edge.greengrass.config import config_from_component

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "scripts" / "build_components.py"
GDK_PROJECTS = ROOT / "components" / "greengrass"  # one GDK project per component
INSTALL_VENV = GDK_PROJECTS / "artifacts" / "install-venv.sh"
COMPONENTS = ("com.vehicleedge.Daemon", "com.vehicleedge.Zones", "com.vehicleedge.Simulator",
              "com.vehicleedge.Roads")
ROADS = "com.vehicleedge.Roads"
# a tiny OSM extract (XML; pyosmium reads it like a .pbf): two ways of a Helsinki street
TINY_OSM = """<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6" generator="vehicle-edge tests">
  <node id="1" version="1" lat="60.1700" lon="24.9400"/>
  <node id="2" version="1" lat="60.1710" lon="24.9400"/>
  <node id="3" version="1" lat="60.1710" lon="24.9420"/>
  <way id="10" version="1"><nd ref="1"/><nd ref="2"/>
    <tag k="highway" v="residential"/><tag k="maxspeed" v="30"/><tag k="name" v="Testikatu"/></way>
  <way id="11" version="1"><nd ref="2"/><nd ref="3"/><tag k="highway" v="primary"/></way>
</osm>
"""


def tiny_extract(d: Path) -> Path:
    p = d / "testikatu.osm"
    p.write_text(TINY_OSM)
    return p
VERSION = "1.2.3"
BUCKET = "fleet-artifacts"
# Greengrass' Platform "architecture" values for aarch64, armv7l, x86_64
GG_ARCHES = {"aarch64", "arm", "amd64"}
LIFECYCLE_STEPS = {"setenv", "bootstrap", "install", "startup", "run", "shutdown", "recover"}

_STEP = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {
                "script": {"type": "string"},
                "timeout": {"type": ["integer", "string"]},
                "requiresprivilege": {"type": ["boolean", "string"]},
                "setenv": {"type": "object"},
            },
            "required": ["script"],
            "additionalProperties": False,
        },
    ]
}
PERMISSION = {"type": "string", "pattern": "^(none|owner|all)$"}
RECIPE_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["recipeformatversion", "componentname", "componentversion", "manifests"],
    "additionalProperties": False,
    "properties": {
        "recipeformatversion": {"enum": ["2020-01-25"]},
        "componentname": {"type": "string", "pattern": r"^[a-zA-Z0-9\-_.]+$", "maxLength": 128},
        "componentversion": {
            "type": "string",
            "maxLength": 64,
            "pattern": r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.\-]+)?$",
        },
        "componentdescription": {"type": "string"},
        "componentpublisher": {"type": "string"},
        "componenttype": {"type": "string", "pattern": r"^aws\.greengrass\.generic$"},
        "componentconfiguration": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"defaultconfiguration": {"type": "object"}},
        },
        "componentdependencies": {
            "type": "object",
            "patternProperties": {
                r"^[a-zA-Z0-9\-_.]+$": {
                    "type": "object",
                    "required": ["versionrequirement"],
                    "properties": {
                        "versionrequirement": {"type": "string"},
                        "dependencytype": {"type": "string", "pattern": "^(soft|hard)$"},
                    },
                }
            },
            "additionalProperties": False,
        },
        "manifests": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["platform", "lifecycle"],
                "properties": {
                    "name": {"type": "string"},
                    "platform": {
                        "type": "object",
                        "required": ["os", "runtime"],
                        "additionalProperties": {"type": "string"},
                    },
                    "lifecycle": {
                        "type": "object",
                        "propertyNames": {"enum": sorted(LIFECYCLE_STEPS)},
                        "additionalProperties": _STEP,
                    },
                    "artifacts": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["uri"],
                            "additionalProperties": False,
                            "properties": {
                                "uri": {"type": "string", "pattern": r"^(s3|greengrass)://.+"},
                                "unarchive": {"type": "string", "pattern": "^(zip|none)$"},
                                "permission": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {"read": PERMISSION, "execute": PERMISSION},
                                },
                                "digest": {"type": "string"},
                                "algorithm": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def lower_keys(value: Any, *, under_config: bool = False) -> Any:
    """Lowercase keys (and enum-ish values) the way the GDK compares them, except inside
    DefaultConfiguration, which is the component's own data."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            lk = k if under_config else k.lower()
            out[lk] = lower_keys(v, under_config=under_config or lk == "defaultconfiguration")
        return out
    if isinstance(value, list):
        return [lower_keys(v, under_config=under_config) for v in value]
    if isinstance(value, str) and not under_config and value.upper() in {
        "SOFT", "HARD", "ZIP", "NONE", "OWNER", "ALL"
    }:
        return value.lower()
    return value


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gg")
    extract = tiny_extract(tmp_path_factory.mktemp("osm"))
    r = subprocess.run(
        [sys.executable, str(BUILD), "--skip-wheelhouse", "--out", str(out),
         "--version", VERSION, "--bucket", BUCKET, "--roads-extract", str(extract),
         "--roads-region", "testikatu", "--roads-country", "FI"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    recipes = {}
    for name in COMPONENTS:
        path = out / "recipes" / f"{name}-{VERSION}.json"
        assert path.is_file(), f"{path} not rendered"
        recipes[name] = json.loads(path.read_text())
    recipes["_out"] = {"dir": str(out)}
    return recipes


@pytest.mark.parametrize("name", COMPONENTS)
def test_recipe_valid_against_schema(rendered: dict[str, Any], name: str) -> None:
    jsonschema.validate(lower_keys(rendered[name]), RECIPE_SCHEMA)


@pytest.mark.parametrize("name", COMPONENTS)
def test_version_and_bucket_rendered(rendered: dict[str, Any], name: str) -> None:
    recipe = rendered[name]
    assert recipe["ComponentName"] == name and recipe["ComponentVersion"] == VERSION
    text = json.dumps(recipe)
    for placeholder in ("{COMPONENT_", "{{ARTIFACT_BUCKET}}", "{ARCH}", "{GG_ARCH}"):
        assert placeholder not in text
    for m in recipe["Manifests"]:
        for a in m.get("Artifacts", []):
            assert a["Uri"].startswith(f"s3://{BUCKET}/{name}/{VERSION}/")


# the step keys nucleus lite reads (case-sensitive; nucleus classic takes any case)
LITE_STEP_KEYS = {"Script", "Timeout", "RequiresPrivilege", "Setenv"}
LITE_PHASES = {"install", "run", "startup", "bootstrap"}


@pytest.mark.parametrize("name", COMPONENTS)
def test_lifecycle_keys_as_nucleus_lite_reads_them(rendered: dict[str, Any], name: str) -> None:
    """Phase names lowercase, step keys capitalised: ``script:`` fails a lite deployment
    at once ("Script is not in the map"); a component with only an install step never
    reaches a final state on lite (the deployment waits 300 s, then fails)."""
    recipe = rendered[name]
    for m in recipe["Manifests"]:
        assert m["Platform"]["os"] == "linux"
        assert m["Platform"]["runtime"] == "*"  # both nucleus classic and lite
        phases = m["Lifecycle"]
        assert set(phases) <= LITE_PHASES, phases
        assert {"run", "startup"} & set(phases), f"{name}: no step that reaches a final state"
        for phase, step in phases.items():
            assert isinstance(step, dict) and set(step) <= LITE_STEP_KEYS, (phase, step)
            assert "Script" in step, (phase, step)
            for value in step.get("Setenv", {}).values():
                assert isinstance(value, str)  # lite: Setenv values must be strings


def test_platforms_per_architecture(rendered: dict[str, Any]) -> None:
    for name in ("com.vehicleedge.Daemon", "com.vehicleedge.Simulator"):  # the wheelhouse
        arches = {m["Platform"]["architecture"] for m in rendered[name]["Manifests"]}
        assert arches == GG_ARCHES, name
    # data only: one manifest for every architecture
    assert len(rendered["com.vehicleedge.Zones"]["Manifests"]) == 1
    assert len(rendered[ROADS]["Manifests"]) == 1


@pytest.mark.parametrize("name", COMPONENTS)
def test_no_cross_component_interpolation(rendered: dict[str, Any], name: str) -> None:
    """Nucleus lite does not substitute ``{OtherComponent:ns:key}``: the step silently
    never runs and the component is FINISHED. Only its own namespaces are used."""
    import re

    text = json.dumps(rendered[name])
    for ns in re.findall(r"\{([A-Za-z0-9_.\-]+):[a-zA-Z]+(?::[^}]*)?\}", text):
        assert ns in {"artifacts", "work", "configuration", "iot", "kernel"}, ns


def test_only_the_simulator_step_starts_as_root(rendered: dict[str, Any]) -> None:
    for name in COMPONENTS:
        for m in rendered[name]["Manifests"]:
            for phase, step in m["Lifecycle"].items():
                if step.get("RequiresPrivilege"):
                    assert (name, phase) == ("com.vehicleedge.Simulator", "run")
                    # it only creates /run/vehicle-edge, then drops to the work dir's owner
                    assert "exec setpriv --reuid=" in step["Script"]
    assert "sudo" not in json.dumps([rendered[n] for n in COMPONENTS]).lower()


sys.path.insert(0, str(ROOT / "scripts"))
try:
    import build_components as bc
finally:
    sys.path.remove(str(ROOT / "scripts"))


def test_subobject_count_as_nucleus_lite_counts() -> None:
    """The counting rule measured on lite 2.6.0: map entry 2 + its value's, list item 1 +
    its own. 100 flat DefaultConfiguration keys (200) deploy, 101 (202) do not."""
    assert bc.subobjects({f"k{i}": i for i in range(100)}) == 200
    assert bc.subobjects({f"k{i}": i for i in range(101)}) == 202
    assert bc.subobjects({"a": {"b": [1, 2, {"c": None}]}}) == 2 + 2 + 1 + 1 + 1 + 2
    assert bc.subobjects("x") == 0


@pytest.mark.parametrize("name", COMPONENTS)
def test_recipe_fits_nucleus_lite(rendered: dict[str, Any], name: str) -> None:
    """Under GG_MAX_OBJECT_SUBOBJECTS (255) with the whole recipe counted as one object,
    all architectures' manifests included; DefaultConfiguration well under ~200."""
    recipe = rendered[name]
    total = bc.subobjects(recipe)
    assert total < bc.LITE_MAX_SUBOBJECTS, f"{name}: {total} sub-objects"
    dc = recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
    assert bc.subobjects(dc) <= 60, f"{name}: DefaultConfiguration {bc.subobjects(dc)}"

    def objects(v: Any) -> list[Any]:
        kids = v.values() if isinstance(v, dict) else v if isinstance(v, list) else []
        return [v] + [o for k in kids for o in objects(k)] if kids else [v]

    for obj in objects(recipe):
        assert bc.subobjects(obj) < bc.LITE_MAX_SUBOBJECTS


def test_build_refuses_a_recipe_too_big_for_lite() -> None:
    big = {"ComponentName": "x", "ComponentConfiguration": {
        "DefaultConfiguration": {f"k{i}": i for i in range(101)}}}
    with pytest.raises(bc.BuildError, match="DefaultConfiguration has 202 sub-objects"):
        bc.check_lite_limits(big)
    huge = {"ComponentName": "x", "Manifests": [{"a": list(range(250))}, {"b": 1}]}
    with pytest.raises(bc.BuildError, match="the recipe has 260 sub-objects"):
        bc.check_lite_limits(huge)


def access_control(recipe: dict[str, Any]) -> dict[str, Any]:
    cfg = recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
    ac: dict[str, Any] = cfg.get("accessControl", {})
    return ac


@pytest.mark.parametrize("name", COMPONENTS)
def test_access_control_least_privilege(rendered: dict[str, Any], name: str) -> None:
    ac = access_control(rendered[name])
    for service, policies in ac.items():
        assert service in {"aws.greengrass.ipc.mqttproxy", "aws.greengrass.ipc.config"}, service
        for policy in policies.values():
            for res in policy["resources"]:
                assert "*" != res and not res.startswith("*"), res
            for op in policy["operations"]:
                assert op != "*" and op.startswith("aws.greengrass#"), op
            if service == "aws.greengrass.ipc.mqttproxy":
                assert policy["operations"] == ["aws.greengrass#PublishToIoTCore"]
                assert policy["resources"] == ["vehicles/{iot:thingName}/*"]


def test_daemon_publishes_only_own_topics(rendered: dict[str, Any]) -> None:
    ac = access_control(rendered["com.vehicleedge.Daemon"])
    assert list(ac) == ["aws.greengrass.ipc.mqttproxy"]


def test_daemon_default_configuration_is_lean_and_valid(rendered: dict[str, Any]) -> None:
    """Only what an operator sets per fleet; every other key keeps the code's default
    (a merge may still set any config key)."""
    dc = rendered["com.vehicleedge.Daemon"]["ComponentConfiguration"]["DefaultConfiguration"]
    assert set(dc) == {"uplink", "log", "gnss", "can", "rules", "outbox", "accessControl"}
    cfg = config_from_component(dc, base=Path("/work"), env={"AWS_IOT_THING_NAME": "car-1"})
    defaults = Config(thing="car-1")
    assert cfg.thing == "car-1"  # the recipe's Setenv gives the core device's thing name
    assert cfg.uplink == dataclasses.replace(defaults.uplink, kind="greengrass")
    assert cfg.log == dataclasses.replace(defaults.log, format="json")
    for section in ("gnss", "can", "rules", "telemetry", "health"):
        assert getattr(cfg, section) == getattr(defaults, section), section
    assert cfg.outbox == dataclasses.replace(defaults.outbox, path=Path("/work/outbox.db"))


def test_daemon_reads_the_zones_component_through_the_root_path(
    rendered: dict[str, Any],
) -> None:
    daemon = rendered["com.vehicleedge.Daemon"]
    # no dependency: nucleus lite makes it a systemd Wants= on the Zones unit, so every
    # restart of the Daemon would start Zones again (a crashing Daemon drives Zones into
    # start-limit-hit, ERRORED, and the deployment hangs for 300 s)
    assert "ComponentDependencies" not in daemon
    zones = rendered["com.vehicleedge.Zones"]["Manifests"][0]["Lifecycle"]["run"]["Script"]
    assert "mv -f {work:path}/zones.geojson.new {work:path}/zones.geojson" in zones
    # lite runs it again on every deployment: an unchanged file must not be replaced
    assert zones.startswith(
        "if cmp -s {artifacts:path}/zones.geojson {work:path}/zones.geojson; then")
    for m in daemon["Manifests"]:
        env = m["Lifecycle"]["run"]["Setenv"]
        assert env["VEHICLE_EDGE_ZONES"] == (
            "{kernel:rootPath}/work/com.vehicleedge.Zones/zones.geojson")
        assert env["AWS_IOT_THING_NAME"] == "{iot:thingName}"
    dc = daemon["ComponentConfiguration"]["DefaultConfiguration"]
    path = "/var/lib/greengrass/work/com.vehicleedge.Zones/zones.geojson"  # lite's rootPath
    cfg = config_from_component(dc, base=Path("/work"),
                                env={"AWS_IOT_THING_NAME": "car-1", "VEHICLE_EDGE_ZONES": path})
    assert cfg.rules.zones == Path(path)
    out = Path(rendered["_out"]["dir"])
    art = out / "artifacts" / "com.vehicleedge.Zones" / VERSION / "zones.geojson"
    assert json.loads(art.read_text())["type"] == "FeatureCollection"


def test_roads_component_publishes_the_index_where_the_daemon_reads_it(
    rendered: dict[str, Any], tmp_path: Path,
) -> None:
    """make components builds com.vehicleedge.Roads from an extract; its run step (as lite
    runs it, in sh) renames the index over the old one and ends; run again unchanged it
    leaves the file alone (no reload); the Daemon finds it through the root path."""
    from edge.roads.index import RoadIndex

    out = Path(rendered["_out"]["dir"])
    summary = json.loads((out / "build-summary.json").read_text())
    assert summary["roads"]["region"] == "testikatu"
    assert summary["roads"]["import"]["segments"] == 2
    recipe = rendered[ROADS]
    assert "testikatu" in recipe["ComponentDescription"] and "{REGION}" not in json.dumps(recipe)
    (m,) = recipe["Manifests"]
    (art,) = m["Artifacts"]
    assert art["Uri"] == f"s3://{BUCKET}/{ROADS}/{VERSION}/roads.db"
    adir = out / "artifacts" / ROADS / VERSION
    assert RoadIndex(adir / "roads.db").meta["segments"] == "2"
    work = tmp_path / "work"
    work.mkdir()
    (work / "roads.db").write_bytes(b"an older index")
    old = (work / "roads.db").stat().st_ino
    script = (m["Lifecycle"]["run"]["Script"].replace("{artifacts:path}", str(adir))
              .replace("{work:path}", str(work)))
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert "published" in r.stdout and "already" not in r.stdout
    new = (work / "roads.db").stat()
    assert new.st_ino != old and oct(new.st_mode & 0o777) == "0o644"
    assert RoadIndex(work / "roads.db").meta["segments"] == "2"
    assert not (work / "roads.db.new").exists()
    r = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert "already published" in r.stdout and (work / "roads.db").stat().st_ino == new.st_ino
    for dm in rendered["com.vehicleedge.Daemon"]["Manifests"]:
        env = dm["Lifecycle"]["run"]["Setenv"]
        assert env["VEHICLE_EDGE_ROADS"] == "{kernel:rootPath}/work/com.vehicleedge.Roads/roads.db"
    path = "/var/lib/greengrass/work/com.vehicleedge.Roads/roads.db"
    dc = rendered["com.vehicleedge.Daemon"]["ComponentConfiguration"]["DefaultConfiguration"]
    env = {"AWS_IOT_THING_NAME": "car-1", "VEHICLE_EDGE_ROADS": path}
    assert config_from_component(dc, base=Path("/work"), env=env).roads.index == Path(path)
    # an operator's own index wins over the component's
    mine = config_from_component({**dc, "roads": {"index": "/data/mine.db"}}, env=env)
    assert mine.roads.index == Path("/data/mine.db")
    assert config_from_component(dc, env={"AWS_IOT_THING_NAME": "x"}).roads.index is None


def test_roads_component_left_out_without_an_extract(tmp_path: Path) -> None:
    """No extract given and none cached: the other components build, Roads is left out
    with a warning; asked for by name it is an error; a named extract that is missing
    is a usage error."""
    env = {**os.environ, "VEHICLE_EDGE_CACHE": str(tmp_path / "empty-cache")}
    base = [sys.executable, str(BUILD), "--skip-wheelhouse", "--version", VERSION]
    r = subprocess.run([*base, "--out", str(tmp_path / "a")], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{ROADS} left out" in r.stderr
    assert not (tmp_path / "a" / "recipes" / f"{ROADS}-{VERSION}.json").exists()
    assert (tmp_path / "a" / "recipes" / f"com.vehicleedge.Zones-{VERSION}.json").is_file()
    r = subprocess.run([*base, "--out", str(tmp_path / "b"), "--component", ROADS], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "--roads-extract" in r.stderr
    r = subprocess.run([*base, "--out", str(tmp_path / "c"), "--roads-extract",
                        str(tmp_path / "nope.osm.pbf")], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "nope.osm.pbf does not exist" in r.stderr
    bad = tmp_path / "bad.osm.pbf"
    bad.write_bytes(b"\x00\x00\x00\x0dnot a pbf" * 20)
    r = subprocess.run([*base, "--out", str(tmp_path / "d"), "--roads-extract", str(bad),
                        "--component", ROADS], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "cannot import" in r.stderr and "Traceback" not in r.stderr


def test_default_configuration_template_typo_fails_the_build() -> None:
    with pytest.raises(bc.BuildError, match=r"rules\.speed\.limit_kph"):
        bc.check_config_keys(bc.config_defaults(), {"rules": {"speed": {"limit_kph": 50}}})
    with pytest.raises(bc.BuildError, match=r"rules\.speed must be a table"):
        bc.check_config_keys(bc.config_defaults(), {"rules": {"speed": 50}})
    bc.check_config_keys(bc.config_defaults(), {"accessControl": {}, "gnss": {"port": None}})
    bad = {"ComponentName": "com.vehicleedge.Daemon",
           "ComponentConfiguration": {"DefaultConfiguration": {"gnss": {"baud": "fast"}}}}
    with pytest.raises(bc.BuildError, match=r"not a valid config: gnss\.baud"):
        bc.check_default_configuration(bad)


@pytest.mark.parametrize("name", ["com.vehicleedge.Daemon", "com.vehicleedge.Simulator"])
def test_install_is_offline_into_work_dir_venv(rendered: dict[str, Any], name: str) -> None:
    for m in rendered[name]["Manifests"]:
        install = m["Lifecycle"]["install"]["Script"]
        arch = m["Name"].removeprefix("linux-")
        assert "install-venv.sh" in install and "{work:path}" in install and arch in install
        uris = [a["Uri"].rsplit("/", 1)[-1] for a in m["Artifacts"]]
        assert f"wheelhouse-{arch}.zip" in uris
        assert f"{{work:path}}/venv-{VERSION}" in m["Lifecycle"]["run"]["Script"]
    script = (INSTALL_VENV).read_text()
    assert "--no-index" in script and "--find-links" in script
    pip_lines = [ln for ln in script.splitlines() if "pip install" in ln or "pip\" install" in ln
                 or ln.strip().startswith("\"$VENV/bin/python\" -m pip")]
    assert pip_lines and all("--no-index" in ln for ln in pip_lines), pip_lines


def test_install_script_installs_offline_from_a_wheelhouse(tmp_path: Path) -> None:
    """Run install-venv.sh against a tiny wheelhouse: no network, the real script."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip("install-venv.sh requires CPython 3.11")
    import zipfile

    art = tmp_path / "art"
    work = tmp_path / "work"
    art.mkdir()
    work.mkdir()
    # a minimal wheel named vehicle-edge that provides an `edge` console script
    whl = art / "vehicle_edge-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("vedge_stub.py", "def main():\n    print('ok')\n")
        z.writestr("edge/__init__.py", "")  # the real step that runs after pip
        z.write(ROOT / "edge" / "pagecache.py", "edge/pagecache.py")
        di = "vehicle_edge-9.9.9.dist-info"
        z.writestr(f"{di}/METADATA", "Metadata-Version: 2.1\nName: vehicle-edge\nVersion: 9.9.9\n")
        z.writestr(f"{di}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                  "Tag: py3-none-any\n")
        z.writestr(f"{di}/entry_points.txt", "[console_scripts]\nedge = vedge_stub:main\n")
        z.writestr(f"{di}/RECORD", "")
    with zipfile.ZipFile(art / "wheelhouse-x86_64.zip", "w") as z:
        z.write(whl, whl.name)
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/none", "PATH": os.environ["PATH"]}
    r = subprocess.run(
        ["sh", str(INSTALL_VENV), str(art), str(work), "x86_64",
         "9.9.10"], capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    # the daemon will start right away: what pip wrote left the page cache
    assert "page cache: dropped " in r.stdout and "venv-9.9.10" in r.stdout, r.stdout
    # and the -OO bytecode the daemon will load is in its private cache (edge.process)
    bytecode = work / "cache" / "vehicle-edge" / "bytecode"
    assert stat.S_IMODE(bytecode.stat().st_mode) == 0o700
    compiled = {p.name for p in bytecode.rglob("*.opt-2.pyc")}
    assert {"vedge_stub.cpython-311.opt-2.pyc", "pagecache.cpython-311.opt-2.pyc",
            "decoder.cpython-311.opt-2.pyc"} <= compiled  # the package, edge, json's stdlib
    assert not any("/site-packages/pip/" in str(p) for p in bytecode.rglob("*.pyc"))
    # the venv is named by the component version, which need not be the package's
    out = subprocess.run([str(work / "venv-9.9.10" / "bin" / "edge")], capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "ok"
    assert not (work / "wheelhouse-9.9.10-x86_64").exists()
    # the venv's modules have -OO bytecode caches: an optimised daemon compiles nothing
    stub = next((work / "venv-9.9.10" / "lib").glob("python3*/site-packages/vedge_stub.py"))
    assert Path(importlib.util.cache_from_source(str(stub), optimization=2)).is_file()


def test_build_rejects_bad_arguments(tmp_path: Path) -> None:
    for args in (["--arch", "mips"], ["--version", "one"]):
        r = subprocess.run([sys.executable, str(BUILD), "--skip-wheelhouse", "--out",
                            str(tmp_path), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, args


def test_templates_and_deployment(rendered: dict[str, Any]) -> None:
    dep = json.loads((ROOT / "recipes" / "deployment.template.json").read_text())
    pol = dep["deploymentPolicies"]
    assert pol["failureHandlingPolicy"] == "ROLLBACK"
    job = dep["iotJobConfiguration"]
    assert job["jobExecutionsRolloutConfig"]["exponentialRate"]["incrementFactor"] > 1
    assert any(c["failureType"] == "FAILED" for c in job["abortConfig"]["criteriaList"])
    for comp in dep["components"].values():
        assert comp["runWith"]["posixUser"].split(":")[0] not in ("root", "0")
    merge = json.loads(dep["components"]["com.vehicleedge.Daemon"]["configurationUpdate"]["merge"])
    config_from_component(merge, env={"AWS_IOT_THING_NAME": "car-1"})  # a valid merge
    out = Path(rendered["_out"]["dir"])
    rendered_dep = json.loads((out / "deployment.json").read_text())
    assert rendered_dep["components"]["com.vehicleedge.Daemon"]["componentVersion"] == VERSION


def test_iot_policy_scoped_to_thing() -> None:
    doc = json.loads((ROOT / "recipes" / "iot-policy.template.json").read_text())
    for st in doc["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if any(a.startswith("iot:") for a in actions):
            for res in resources:
                assert res != "*"
                if "iot:AssumeRoleWithCertificate" not in actions:
                    assert "${iot:Connection.Thing.ThingName}" in res, res
    publish = next(st for st in doc["Statement"] if st["Action"] == "iot:Publish")
    assert publish["Resource"].endswith("topic/vehicles/${iot:Connection.Thing.ThingName}/*")


# --------------------------------------------------------------------------- simulator



def test_simulator_feeds_the_daemon_through_stable_paths(rendered: dict[str, Any]) -> None:
    """The Simulator serves the drive at /run/vehicle-edge/ and runs no daemon of its own:
    no IPC permissions at all (the deployed Daemon is what publishes)."""
    sim = rendered["com.vehicleedge.Simulator"]
    dc = sim["ComponentConfiguration"]["DefaultConfiguration"]
    assert dc == {"drive": "city", "rate": 1.0}
    for m in sim["Manifests"]:
        run = m["Lifecycle"]["run"]["Script"]
        assert '/bin/edge sim "{configuration:/drive}" --serve /run/vehicle-edge' in run
        assert '--rate "{configuration:/rate}" --loop' in run
        assert "install -d" in run and "/run/vehicle-edge" in run
        assert "--config" not in run and "edge run" not in run


# --------------------------------------------------------------------------- GDK projects

SEMVER = r"^\d+\.\d+\.\d+(-[0-9A-Za-z.\-]+)?(\+[0-9A-Za-z.\-]+)?$"
# the fields of the GDK CLI's gdk-config.json schema (gdk/static/config_schema.json) that
# `gdk component build|publish` read for a custom build, written here
GDK_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["component", "gdk_version"],
    "properties": {
        "gdk_version": {"type": "string", "pattern": SEMVER},
        "component": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": {
                "type": "object",
                "required": ["author", "version", "build", "publish"],
                "properties": {
                    "author": {"type": "string"},
                    "version": {"anyOf": [{"type": "string", "pattern": SEMVER},
                                          {"enum": ["NEXT_PATCH"]}]},
                    "build": {
                        "type": "object",
                        "required": ["build_system", "custom_build_command"],
                        "properties": {
                            "build_system": {"enum": ["custom"]},
                            "custom_build_command": {"type": "array", "minItems": 1,
                                                     "items": {"type": "string"}},
                        },
                    },
                    "publish": {
                        "type": "object",
                        "required": ["bucket", "region"],
                        "properties": {"bucket": {"type": "string", "minLength": 1},
                                       "region": {"type": "string",
                                                  "pattern": r"^[a-z]{2}(-gov)?-[a-z]+-\d$"}},
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_dir_is_a_gdk_project(name: str) -> None:
    cdir = GDK_PROJECTS / name
    recipe = cdir / "recipe.json"
    assert recipe.is_file(), f"{recipe} missing (GDK needs recipe.json or recipe.yaml)"
    if recipe.is_symlink():  # survives git clone only as a relative link inside the repo
        target = os.readlink(recipe)
        assert not os.path.isabs(target), target
        assert recipe.resolve().is_relative_to(ROOT), target
    assert json.loads(recipe.read_text())["ComponentName"] == name
    conf = json.loads((cdir / "gdk-config.json").read_text())
    jsonschema.validate(conf, GDK_CONFIG_SCHEMA)
    assert list(conf["component"]) == [name]
    cmd = conf["component"][name]["build"]["custom_build_command"]
    assert cmd[-2:] == ["--gdk", name]
    assert (cdir / cmd[1]).resolve() == BUILD  # relative to the project dir, where GDK runs it


def test_recipe_symlinks_are_tracked_as_symlinks() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-s", "--", "components"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"git unavailable: {r.stderr.strip()}")
    modes = {line.split("\t")[1]: line.split()[0] for line in r.stdout.splitlines()}
    for name in COMPONENTS:
        path = f"components/greengrass/{name}/recipe.json"
        if (ROOT / path).is_symlink() and path in modes:  # new files: not committed yet
            assert modes[path] == "120000", path


@pytest.mark.parametrize("name", COMPONENTS)
def test_gdk_custom_build_writes_what_gdk_publishes(tmp_path: Path, name: str) -> None:
    """Run the project's custom_build_command as `gdk component build` does (in the
    component dir), in a copy of the layout so the source tree stays clean."""
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    proj = tmp_path / GDK_PROJECTS.relative_to(ROOT) / name
    proj.mkdir(parents=True)
    conf_text = (GDK_PROJECTS / name / "gdk-config.json").read_text()
    (proj / "gdk-config.json").write_text(conf_text)
    conf = json.loads(conf_text)["component"][name]
    cmd = [sys.executable if c in ("python3", "python") else c
           for c in conf["build"]["custom_build_command"]]
    extra = ["--roads-extract", str(tiny_extract(tmp_path))] if name == ROADS else []
    r = subprocess.run([*cmd, "--skip-wheelhouse", *extra], cwd=proj, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    built = json.loads((proj / "greengrass-build" / "recipes" / "recipe.json").read_text())
    assert built["ComponentName"] == name
    jsonschema.validate(lower_keys(built), RECIPE_SCHEMA)
    # GDK uploads from artifacts/<name>/<gdk-config version> (NEXT_PATCH literally)
    adir = proj / "greengrass-build" / "artifacts" / name / conf["version"]
    present = {p.name for p in adir.iterdir()}
    for m in built["Manifests"]:
        for a in m.get("Artifacts", []):
            art = a["Uri"].rsplit("/", 1)[-1]
            if not art.startswith("wheelhouse-"):  # skipped here; built by `make components`
                assert art in present, art


def test_edge_run_help_lists_every_key_a_merge_may_set() -> None:
    """The lean DefaultConfiguration leaves the rest to the code; `edge run --help` says
    which keys a deployment merge may set."""
    from edge.cli import config_keys_help

    text = config_keys_help()

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                section = prefix.rstrip(".") or "(top)"
                line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{section}:"))
                assert k in line.split(":", 1)[1].replace(",", " ").split(), (section, k)

    walk(bc.config_defaults(), "")
