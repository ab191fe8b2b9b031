"""The zones file on disk: the one place that reads it (``edge.core.zones`` parses and
indexes what it holds)."""

from __future__ import annotations

from pathlib import Path

from edge.core.zones import Zones, parse_zones_json
from edge.errors import ZonesError

__all__ = ["load_zones"]


def load_zones(path: Path) -> Zones:
    """Read and index a zones file. Raises ``ZonesError`` naming the file and feature."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ZonesError(f"{path}: cannot read: {exc}") from exc
    return parse_zones_json(text, source=str(path))
