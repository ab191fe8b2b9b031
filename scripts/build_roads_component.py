#!/usr/bin/env python3
"""Build the Greengrass component ``com.vehicleedge.Roads`` from an OSM extract.

    python scripts/build_roads_component.py EXTRACT.osm.pbf --region finland \\
        [--version 2026.11.29] [--bucket my-artifacts] [--bbox W,S,E,N] [--country FI] \\
        [--out build/greengrass]

(``make roads-component EXTRACT=... REGION=...``). Writes
``OUT/com.vehicleedge.Roads/VERSION/{recipe.json,artifacts/roads.db}`` and prints the
import summary. One component per region: deploy the region's version to the thing
group of the cars that drive there; the daemon's ``roads.index`` points at
``/greengrass/v2/work/com.vehicleedge.Roads/roads.db`` and hot-reloads it.
Separate from ``scripts/build_components.py`` on purpose: it is data, built from an
extract, on its own release rhythm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "components" / "com.vehicleedge.Roads" / "recipe.json"
NAME = "com.vehicleedge.Roads"


def build_roads(extract: Path, *, out: Path, version: str, region: str,
                bucket: str | None = None, bbox: tuple[float, float, float, float] | None = None,
                country: str | None = None) -> dict[str, object]:
    from edge.roads.importer import import_extract

    cdir = out / NAME / version
    shutil.rmtree(cdir, ignore_errors=True)
    (cdir / "artifacts").mkdir(parents=True)
    db = cdir / "artifacts" / "roads.db"
    summary = import_extract(extract, db, bbox=bbox, country=country)
    text = (TEMPLATE.read_text().replace("{COMPONENT_VERSION}", version)
            .replace("{REGION}", region))
    if bucket:
        text = text.replace("{{ARTIFACT_BUCKET}}", bucket)
    recipe = json.loads(text)
    (cdir / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return {"recipe": str(cdir / "recipe.json"), "artifact": str(db),
            "sha256": hashlib.sha256(db.read_bytes()).hexdigest(),
            "bytes": db.stat().st_size, "import": summary.to_json()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("extract", type=Path)
    p.add_argument("--region", required=True, help="what the index covers, e.g. finland")
    p.add_argument("--version", default=time.strftime("%Y.%-m.%-d", time.gmtime()),
                   help="component version (default: today, YYYY.M.D)")
    p.add_argument("--bucket", help="S3 bucket for the artifact URI")
    p.add_argument("--bbox", help="W,S,E,N")
    p.add_argument("--country", help="ISO code for implicit/default limits")
    p.add_argument("--out", type=Path, default=ROOT / "build" / "greengrass")
    args = p.parse_args(argv)
    from edge.commands.roads import parse_bbox

    try:
        bbox = parse_bbox(args.bbox) if args.bbox else None
    except ValueError as exc:
        print(f"build_roads_component: {exc}", file=sys.stderr)
        return 2
    if not args.extract.is_file():
        print(f"build_roads_component: {args.extract}: no such file", file=sys.stderr)
        return 2
    print(json.dumps(build_roads(args.extract, out=args.out, version=args.version,
                                 region=args.region, bucket=args.bucket, bbox=bbox,
                                 country=args.country), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
