"""The Greengrass component com.vehicleedge.Roads built from a real extract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge.roads.index import RoadIndex
from tests.support.osm import helsinki_pbf

ROOT = Path(__file__).resolve().parents[2]


def test_build_renders_a_recipe_whose_install_step_delivers_the_index(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_roads_component.py"), str(helsinki_pbf()),
         "--region", "helsinki", "--version", "2026.11.29", "--bucket", "my-artifacts",
         "--out", str(tmp_path / "gg")], capture_output=True, text=True, check=False,
        timeout=300)
    assert r.returncode == 0, r.stderr
    built = json.loads(r.stdout)
    assert built["import"]["segments"] > 1800
    recipe = json.loads(Path(built["recipe"]).read_text())
    assert recipe["ComponentName"] == "com.vehicleedge.Roads"
    assert recipe["ComponentVersion"] == "2026.11.29"
    assert "helsinki" in recipe["ComponentDescription"]
    (manifest,) = recipe["Manifests"]
    (art,) = manifest["Artifacts"]
    assert art["Uri"] == "s3://my-artifacts/com.vehicleedge.Roads/2026.11.29/roads.db"
    # nucleus lite: phases lowercase, step keys capitalised
    assert set(manifest["Lifecycle"]) == {"install"}
    assert set(manifest["Lifecycle"]["install"]) == {"Script", "Timeout"}
    # the install step as the nucleus runs it: the index lands in the work dir, renamed
    # over the old one (the daemon reloads on the new inode)
    work = tmp_path / "work"
    work.mkdir()
    (work / "roads.db").write_bytes(b"old")
    old_ino = (work / "roads.db").stat().st_ino
    script = (manifest["Lifecycle"]["install"]["Script"]
              .replace("{artifacts:path}", str(Path(built["artifact"]).parent))
              .replace("{work:path}", str(work)))
    subprocess.run(["sh", "-c", script], check=True)
    assert (work / "roads.db").stat().st_ino != old_ino
    assert RoadIndex(work / "roads.db").meta["segments"] == str(built["import"]["segments"])
