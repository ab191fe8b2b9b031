#!/usr/bin/env python3
"""Build the Greengrass v2 components: artifacts + rendered recipes (what `make components` runs).

For each component in recipes/<name>.recipe.json (its GDK project,
components/greengrass/<name>/, links the same file as recipe.json) this writes, in the
layout of a local deployment (nucleus lite's ``ggl-cli deploy --recipe-dir
--artifacts-dir``, classic's ``greengrass-cli deployment create --recipeDir
--artifactDir``),

    build/greengrass/recipes/<name>-<version>.json
    build/greengrass/artifacts/<name>/<version>/...

Artifacts: the project wheel (``pip wheel . --no-deps``) and, per architecture, an offline
wheelhouse zip (``pip download --platform manylinux... --only-binary=:all:``) holding the
project wheel and every dependency, so a car installs with ``pip install --no-index`` and
never reaches PyPI. Where PyPI has no wheel for an architecture (armv7l: awscrt, shapely,
numpy, uvloop as of this writing), the zip carries MISSING.txt and the install step builds
the venv with ``--system-site-packages``: those packages must then come from the OS image.

Recipe templates use GDK's placeholders ``{COMPONENT_NAME}`` / ``{COMPONENT_VERSION}``,
``{{ARTIFACT_BUCKET}}`` (kept as is unless ``--bucket`` is given) and one manifest with
``{ARCH}`` / ``{GG_ARCH}`` that is expanded to one manifest per architecture. Artifacts
that ship as they are live in components/greengrass/artifacts/.
com.vehicleedge.Roads carries one region's road index (``roads.db``), imported here from
an OSM extract with ``edge roads import``'s importer (``--roads-extract``, default: the
Helsinki extract scripts/fetch_osm.py caches; without one the Roads component is left
out with a warning). com.vehicleedge.Daemon's DefaultConfiguration holds only what an
operator sets per fleet (the code owns every default); the build checks its keys
against ``edge.config`` and that every rendered recipe fits nucleus lite's size limits
(``subobjects``).

    python scripts/build_components.py [--version V] [--bucket B] [--arch aarch64,x86_64]
                                       [--skip-wheelhouse] [--out build/greengrass]
                                       [--roads-extract X.osm.pbf --roads-region NAME
                                        --roads-bbox W,S,E,N --roads-country FI]
                                       [--component NAME]...
    python scripts/build_components.py --gdk com.vehicleedge.Daemon   # GDK custom build
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # edge.config (stdlib only) gives the configuration defaults
    sys.path.insert(0, str(ROOT))
RECIPES = ROOT / "recipes"
# files shipped as they are (install-venv.sh: the Daemon's and the Simulator's install step)
ARTIFACTS = ROOT / "components" / "greengrass" / "artifacts"
DEFAULT_ZONES = ROOT / "sim" / "drives" / "city" / "zones.geojson"
ROADS = "com.vehicleedge.Roads"


@dataclass(frozen=True, slots=True, kw_only=True)
class RoadsSource:
    """What com.vehicleedge.Roads' index is imported from."""

    extract: Path
    region: str
    bbox: tuple[float, float, float, float] | None = None
    country: str | None = None


def default_roads_extract() -> Path:
    """The Helsinki extract scripts/fetch_osm.py caches (``make testdata``)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import fetch_osm
    finally:
        sys.path.pop(0)
    return Path(fetch_osm.pbf_path())


def region_of(extract: Path) -> str:
    """``finland-latest.osm.pbf`` -> ``finland-latest``: the region a build is named by
    when ``--roads-region`` is not given."""
    name = extract.name
    for suffix in (".osm.pbf", ".pbf", ".osm"):
        if name.endswith(suffix):
            return name.removesuffix(suffix).lower()
    return extract.stem.lower()


def build_road_index(src: RoadsSource, dest: Path) -> dict[str, Any]:
    """``edge roads import`` of the extract into ``dest``; the import summary."""
    try:
        from edge.roads.importer import import_extract

        summary = import_extract(src.extract, dest, bbox=src.bbox, country=src.country)
    except ImportError as exc:
        raise BuildError(f"{ROADS}: the import needs pyosmium: pip install "
                         f"'vehicle-edge[roads]' ({exc})") from exc
    except (RuntimeError, OSError) as exc:  # pyosmium's error for a file it cannot read
        raise BuildError(f"{ROADS}: cannot import {src.extract}: {exc}") from exc
    return dict(summary.to_json())


@dataclass(frozen=True, slots=True, kw_only=True)
class Arch:
    name: str  # uname -m, used in artifact names
    greengrass: str  # the nucleus' Platform "architecture" value
    platforms: tuple[str, ...]  # pip --platform tags (glibc >= 2.17 .. 2.31)


def _manylinux(machine: str) -> tuple[str, ...]:
    return tuple(
        f"manylinux{tag}_{machine}" for tag in ("2014", "_2_17", "_2_24", "_2_27", "_2_28",
                                                "_2_31")
    )


ARCHES: dict[str, Arch] = {
    "aarch64": Arch(name="aarch64", greengrass="aarch64", platforms=_manylinux("aarch64")),
    "armv7l": Arch(name="armv7l", greengrass="arm", platforms=_manylinux("armv7l")),
    "x86_64": Arch(name="x86_64", greengrass="amd64", platforms=_manylinux("x86_64")),
}

# components that ship the Python wheelhouse
PYTHON_COMPONENTS = ("com.vehicleedge.Daemon", "com.vehicleedge.Simulator")


class BuildError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[components] {msg}", file=sys.stderr, flush=True)


def project() -> dict[str, Any]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    proj: dict[str, Any] = data["project"]
    return proj


def run(cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), text=True, capture_output=True, **kw)


# --------------------------------------------------------------------------- wheel


def build_wheel(dest: Path) -> Path:
    """``pip wheel . --no-deps``: without build isolation when setuptools is at hand (fast,
    offline), else with it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", tmp,
                "--disable-pip-version-check", "-q"]
        r = run([*base, "--no-build-isolation"])
        if r.returncode != 0:
            r = run(base)
        if r.returncode != 0:
            raise BuildError(f"pip wheel failed:\n{r.stderr[-2000:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"expected one wheel, got {wheels}")
        out = dest / wheels[0].name
        shutil.copy2(wheels[0], out)
    # pip wheel in-tree leaves build/lib behind; do not leave it in the source tree
    shutil.rmtree(ROOT / "build" / "lib", ignore_errors=True)
    for d in (ROOT / "build").glob("bdist.*"):
        shutil.rmtree(d, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- wheelhouse


_NO_MATCH = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+)")


def _canon(req: str) -> str:
    name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _download(reqs: Sequence[str], arch: Arch, dest: Path, py: str,
              find_links: Path | None) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
           "--only-binary=:all:", "--python-version", py, "--implementation", "cp",
           "--abi", f"cp{py.replace('.', '')}", "--abi", "abi3", "--abi", "none",
           "-d", str(dest)]
    for p in arch.platforms:
        cmd += ["--platform", p]
    if find_links is not None:
        cmd += ["--find-links", str(find_links)]
    r = run([*cmd, *reqs])
    return r.returncode == 0, r.stderr


def build_wheelhouse(arch: Arch, reqs: Sequence[str], project_wheel: Path, cache: Path,
                     out_zip: Path, py: str, find_links: Path | None = None) -> list[str]:
    """Download every dependency for ``arch``; zip them with the project wheel.

    Returns the requirements PyPI has no wheel for on this architecture (also written
    to MISSING.txt inside the zip). The download dir is a persistent cache.
    """
    dl = cache / f"wheelhouse-{arch.name}-cp{py.replace('.', '')}"
    dl.mkdir(parents=True, exist_ok=True)
    missing: list[str] = []
    ok, err = _download(reqs, arch, dl, py, find_links)
    if not ok:
        # find out which ones: one top-level requirement (with its deps) at a time
        for req in reqs:
            ok1, err1 = _download([req], arch, dl, py, find_links)
            if ok1:
                continue
            m = _NO_MATCH.search(err1)
            culprit = m.group(1) if m else req
            # keep the requirement's own wheel when only a dependency of it is missing
            ok2, _ = _download([req, "--no-deps"], arch, dl, py, find_links)
            if not ok2:
                missing.append(req)
            elif _canon(culprit) != _canon(req):
                missing.append(culprit)
            else:
                missing.append(f"{req} (its own wheel is included; a dependency has none)")
        missing = sorted(set(missing))
        if not missing:
            raise BuildError(f"pip download for {arch.name} failed:\n{err[-2000:]}")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
        for whl in sorted(dl.glob("*.whl")):
            z.write(whl, whl.name)
        z.write(project_wheel, project_wheel.name)
        z.writestr("requirements.txt", "\n".join(reqs) + "\n")
        if missing:
            z.writestr("MISSING.txt", "\n".join(missing) + "\n")
    tmp.replace(out_zip)
    return missing


# --------------------------------------------------------------------------- configuration

# components whose DefaultConfiguration is (a lean part of) the daemon's Config
CONFIG_COMPONENTS = ("com.vehicleedge.Daemon",)
# keys of a component configuration that belong to Greengrass, not to our Config
GREENGRASS_KEYS = ("accessControl",)

# Greengrass nucleus lite's limits on a recipe (GG_MAX_OBJECT_SUBOBJECTS, measured on
# 2.6.0): every object, and the whole recipe as one object, holds at most 255
# sub-objects; DefaultConfiguration fails above ~200 (100 flat keys work, 101 do not).
LITE_MAX_SUBOBJECTS = 255
LITE_MAX_DEFAULT_CONFIG = 200


def subobjects(value: Any) -> int:
    """Sub-objects of ``value`` as nucleus lite counts them: a map entry is 2 (key and
    value) plus its value's own, a list item 1 plus its own, a scalar nothing."""
    if isinstance(value, dict):
        return sum(2 + subobjects(v) for v in value.values())
    if isinstance(value, list):
        return sum(1 + subobjects(v) for v in value)
    return 0


def check_lite_limits(recipe: dict[str, Any]) -> None:
    """Raise ``BuildError`` for a recipe nucleus lite would refuse as too big."""
    name = recipe.get("ComponentName", "?")
    total = subobjects(recipe)
    if total >= LITE_MAX_SUBOBJECTS:
        raise BuildError(f"{name}: the recipe has {total} sub-objects; nucleus lite "
                         f"refuses {LITE_MAX_SUBOBJECTS} or more")
    dc = recipe.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
    n = subobjects(dc)
    if n > LITE_MAX_DEFAULT_CONFIG:
        raise BuildError(f"{name}: DefaultConfiguration has {n} sub-objects; nucleus lite "
                         f"fails above ~{LITE_MAX_DEFAULT_CONFIG}")


def config_defaults() -> dict[str, Any]:
    """Every key of ``edge.config.Config`` with its default, as component configuration JSON
    (what a merge may set; the recipe ships only what an operator sets per fleet)."""
    import dataclasses

    from edge.config import Config

    def walk(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            if f.name == "source":  # where a TOML file came from; not a key
                continue
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                out[f.name] = walk(v)
            elif isinstance(v, Path):
                out[f.name] = str(v)
            else:
                out[f.name] = v
        return out

    return walk(Config(thing=""))


def check_config_keys(base: dict[str, Any], over: dict[str, Any], where: str = "") -> None:
    """Every key of ``over`` must be a config key (a typo in a template must not ship as
    a silently ignored setting); tables must stay tables."""
    for k, v in over.items():
        if not where and k in GREENGRASS_KEYS:
            continue
        if k not in base:
            raise BuildError(f"DefaultConfiguration: unknown key {where}{k}")
        if isinstance(base[k], dict) != isinstance(v, dict):
            raise BuildError(f"DefaultConfiguration: {where}{k} must "
                             f"{'' if isinstance(base[k], dict) else 'not '}be a table")
        if isinstance(v, dict):
            check_config_keys(base[k], v, f"{where}{k}.")


def check_default_configuration(template: dict[str, Any]) -> None:
    """A config component's DefaultConfiguration: known keys, and a valid Config."""
    if template["ComponentName"] not in CONFIG_COMPONENTS:
        return
    dc = template.get("ComponentConfiguration", {}).get("DefaultConfiguration", {})
    check_config_keys(config_defaults(), dc)
    from edge.errors import ConfigError

    try:  # needs the runtime dependencies (structlog): absent under a bare GDK python3
        from edge.greengrass.config import config_from_component
    except ImportError:
        return

    try:
        config_from_component(dc, base=Path("/"), env={"AWS_IOT_THING_NAME": "build-check"})
    except ConfigError as exc:
        raise BuildError(f"DefaultConfiguration is not a valid config: {exc}") from exc


# --------------------------------------------------------------------------- recipes


def render_recipe(template: dict[str, Any], *, version: str, bucket: str | None,
                  arches: Sequence[Arch], region: str | None = None) -> dict[str, Any]:
    name = template["ComponentName"]

    def subst(value: Any, arch: Arch | None) -> Any:
        if isinstance(value, dict):
            return {subst(k, arch): subst(v, arch) for k, v in value.items()}
        if isinstance(value, list):
            return [subst(v, arch) for v in value]
        if isinstance(value, str):
            s = value.replace("{COMPONENT_NAME}", name).replace("{COMPONENT_VERSION}", version)
            if bucket:
                s = s.replace("{{ARTIFACT_BUCKET}}", bucket)
            if region is not None:
                s = s.replace("{REGION}", region)
            if arch is not None:
                s = s.replace("{ARCH}", arch.name).replace("{GG_ARCH}", arch.greengrass)
            return s
        return value

    out: dict[str, Any] = {}
    for key, value in template.items():
        if key == "Manifests":
            manifests: list[dict[str, Any]] = []
            for m in value:
                text = json.dumps(m)
                if "{ARCH}" in text or "{GG_ARCH}" in text:
                    manifests += [subst(m, a) for a in arches]
                else:
                    manifests.append(subst(m, None))
            out[key] = manifests
        else:
            out[key] = subst(value, None)
    return out


def artifact_names(recipe: dict[str, Any]) -> set[str]:
    names = set()
    for m in recipe.get("Manifests", []):
        for a in m.get("Artifacts", []):
            names.add(a["Uri"].rsplit("/", 1)[-1])
    return names


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- main


def build(*, version: str, bucket: str | None, arches: Sequence[Arch], out: Path,
          skip_wheelhouse: bool, zones: Path, python_version: str, cache: Path,
          components: Sequence[str] | None = None, strict: bool = False,
          extra_wheels: Path | None = None, roads: RoadsSource | None = None
          ) -> dict[str, Any]:
    proj = project()
    reqs = [str(r) for r in proj.get("dependencies", [])]
    templates = sorted(RECIPES.glob("*.recipe.json"))  # one per component
    if components:
        templates = [t for t in templates if t.name.removesuffix(".recipe.json") in components]
    if roads is None and any(t.name == f"{ROADS}.recipe.json" for t in templates):
        if components:
            raise BuildError(f"{ROADS}: no OSM extract to import (--roads-extract)")
        log(f"WARNING {ROADS} left out: no OSM extract (--roads-extract X.osm.pbf, or "
            "make testdata for the Helsinki one)")
        templates = [t for t in templates if t.name != f"{ROADS}.recipe.json"]
    if not templates:
        raise BuildError(f"no recipe templates in {RECIPES}")
    summary: dict[str, Any] = {"version": version, "components": {}, "missing": {}}

    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    zips: dict[str, Path] = {}
    wheel: Path | None = None
    if not skip_wheelhouse:  # the recipes install from the zips; the wheel lives inside them
        wheel = build_wheel(staging)
        log(f"built {wheel.name}")
        for arch in arches:
            z = staging / f"wheelhouse-{arch.name}.zip"
            missing = build_wheelhouse(arch, reqs, wheel, cache, z, python_version,
                                       extra_wheels)
            zips[arch.name] = z
            if missing:
                summary["missing"][arch.name] = missing
                msg = (f"{arch.name}: PyPI has no {python_version} wheel for "
                       f"{', '.join(missing)}; the device must provide them")
                if strict:
                    raise BuildError(msg)
                log(f"WARNING {msg}")
            log(f"wheelhouse-{arch.name}.zip: {z.stat().st_size / 1e6:.1f} MB")

    for tpath in templates:
        template = json.loads(tpath.read_text())
        check_default_configuration(template)
        name = template["ComponentName"]
        recipe = render_recipe(template, version=version, bucket=bucket, arches=arches,
                               region=roads.region if roads is not None else None)
        check_lite_limits(recipe)
        rpath = out / "recipes" / f"{name}-{version}.json"
        adir = out / "artifacts" / name / version
        shutil.rmtree(adir, ignore_errors=True)
        adir.mkdir(parents=True)
        rpath.parent.mkdir(parents=True, exist_ok=True)
        for art in sorted(artifact_names(recipe)):
            if art.startswith("wheelhouse-"):
                arch_name = art.removeprefix("wheelhouse-").removesuffix(".zip")
                if arch_name in zips:
                    shutil.copy2(zips[arch_name], adir / art)
            elif (ARTIFACTS / art).is_file():
                shutil.copy2(ARTIFACTS / art, adir / art)
            elif art == "zones.geojson":
                shutil.copy2(zones, adir / art)
            elif art == "roads.db" and roads is not None:
                summary["roads"] = {"extract": str(roads.extract), "region": roads.region,
                                    "import": build_road_index(roads, adir / art)}
                log(f"{name}: {roads.region} road index from {roads.extract.name}: "
                    f"{summary['roads']['import']['segments']} segments, "
                    f"{(adir / art).stat().st_size / 1e3:.0f} kB")
            else:
                raise BuildError(f"{name}: no rule to build artifact {art}")
        if name in PYTHON_COMPONENTS and wheel is not None:
            shutil.copy2(wheel, adir / wheel.name)  # for `pip install` by hand; not in the recipe
        rpath.write_text(json.dumps(recipe, indent=2) + "\n")
        summary["components"][name] = {
            "recipe": str(rpath),
            "artifacts": {p.name: sha256(p) for p in sorted(adir.iterdir())},
        }
        log(f"{name} {version}: {rpath} ({subobjects(recipe)} sub-objects)")
    shutil.rmtree(staging, ignore_errors=True)
    dep = RECIPES / "deployment.template.json"
    if dep.is_file() and not components:
        text = dep.read_text().replace("{COMPONENT_VERSION}", version)
        (out / "deployment.json").write_text(text)
        log(f"deployment document: {out / 'deployment.json'} (fill in {{{{THING_GROUP_ARN}}}})")
    (out / "build-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def gdk_version(project_dir: Path, component: str) -> str:
    """The component's ``version`` in ``gdk-config.json`` (a semver or ``NEXT_PATCH``)."""
    path = project_dir / "gdk-config.json"
    try:
        conf = json.loads(path.read_text())
        version = conf["component"][component]["version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"{path}: no component.{component}.version ({exc})") from exc
    if not isinstance(version, str) or not version:
        raise BuildError(f"{path}: component.{component}.version must be a string")
    return version


def gdk_build(component: str, args: argparse.Namespace) -> None:
    """GDK custom build: write greengrass-build/{recipes,artifacts} in the component dir.

    GDK looks for the artifacts in ``greengrass-build/artifacts/<name>/<version>`` where
    ``<version>`` is gdk-config.json's (literally ``NEXT_PATCH`` when it says so); at
    publish it sets ComponentVersion and the artifact URIs itself. The lifecycle scripts
    keep the package version (the venv's name); the install step takes whatever
    vehicle-edge wheel the wheelhouse holds."""
    cwd = Path.cwd()
    artifacts_version = gdk_version(cwd, component)
    with tempfile.TemporaryDirectory() as tmp:
        # GDK publish fills BUCKET_NAME in artifact URIs itself
        build(version=args.version, bucket=args.bucket or "BUCKET_NAME", arches=args.arches,
              out=Path(tmp),
              skip_wheelhouse=args.skip_wheelhouse, zones=args.zones,
              python_version=args.python_version, cache=args.cache, components=[component],
              extra_wheels=args.extra_wheels, roads=args.roads)
        built = Path(tmp)
        gb = cwd / "greengrass-build"
        shutil.rmtree(gb, ignore_errors=True)
        (gb / "recipes").mkdir(parents=True)
        shutil.copy2(built / "recipes" / f"{component}-{args.version}.json",
                     gb / "recipes" / "recipe.json")
        shutil.copytree(built / "artifacts" / component / args.version,
                        gb / "artifacts" / component / artifacts_version)


def main(argv: Sequence[str] | None = None) -> int:
    cache_default = Path(os.environ.get("VEHICLE_EDGE_CACHE")
                         or Path.home() / ".cache" / "vehicle-edge")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", default=None, help="component version (default: pyproject)")
    p.add_argument("--bucket", default=None,
                   help="S3 bucket for artifact URIs (default: keep {{ARTIFACT_BUCKET}})")
    p.add_argument("--arch", default="aarch64,armv7l,x86_64",
                   help="comma-separated: aarch64, armv7l, x86_64 (default: all)")
    p.add_argument("--skip-wheelhouse", action="store_true",
                   help="no per-architecture wheelhouse zips (fast; for tests)")
    p.add_argument("--strict", action="store_true",
                   help="fail when an architecture lacks wheels on PyPI")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "greengrass")
    p.add_argument("--zones", type=Path, default=DEFAULT_ZONES,
                   help="GeoJSON shipped by com.vehicleedge.Zones")
    p.add_argument("--python-version", default="3.11")
    p.add_argument("--cache", type=Path, default=cache_default / "wheelhouse",
                   help="pip download cache (default: $VEHICLE_EDGE_CACHE/wheelhouse)")
    p.add_argument("--extra-wheels", type=Path, default=None,
                   help="dir of wheels PyPI lacks (e.g. built on an armv7l box); pip --find-links")
    p.add_argument("--roads-extract", type=Path, default=None,
                   help="OSM extract (.osm.pbf) com.vehicleedge.Roads' index is imported from "
                        "(default: the cached Helsinki extract when there, else no Roads)")
    p.add_argument("--roads-region", default=None,
                   help="what the index covers, shown in the recipe (default: the extract's name)")
    p.add_argument("--roads-bbox", default=None, help="import only W,S,E,N")
    p.add_argument("--roads-country", default=None,
                   help="ISO code for implicit/default limits (default: guessed from the extract)")
    p.add_argument("--component", action="append", default=None, metavar="NAME",
                   help="build only this component (repeatable), e.g. com.vehicleedge.Roads")
    p.add_argument("--gdk", metavar="COMPONENT", help="GDK custom build of one component")
    args = p.parse_args(argv)
    args.version = args.version or project()["version"]
    try:
        args.arches = [ARCHES[a.strip()] for a in args.arch.split(",") if a.strip()]
    except KeyError as exc:
        p.error(f"unknown --arch {exc}; choose from {', '.join(ARCHES)}")
    if not re.fullmatch(r"\d+\.\d+\.\d+([-+][0-9A-Za-z.\-]+)?", args.version):
        p.error(f"--version {args.version!r} is not semver (MAJOR.MINOR.PATCH)")
    if not args.zones.is_file():
        p.error(f"--zones {args.zones} does not exist")
    args.roads = None
    extract = args.roads_extract or default_roads_extract()
    if args.roads_extract is not None and not extract.is_file():
        p.error(f"--roads-extract {extract} does not exist")
    if extract.is_file():
        from edge.commands.roads import parse_bbox

        try:
            bbox = parse_bbox(args.roads_bbox) if args.roads_bbox else None
        except ValueError as exc:
            p.error(f"--roads-bbox: {exc}")
        args.roads = RoadsSource(extract=extract, region=args.roads_region or region_of(extract),
                                 bbox=bbox, country=args.roads_country)
    try:
        if args.gdk:
            gdk_build(args.gdk, args)
        else:
            build(version=args.version, bucket=args.bucket, arches=args.arches, out=args.out,
                  skip_wheelhouse=args.skip_wheelhouse, zones=args.zones,
                  python_version=args.python_version, cache=args.cache, strict=args.strict,
                  extra_wheels=args.extra_wheels, roads=args.roads, components=args.component)
    except BuildError as exc:
        log(f"ERROR {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
