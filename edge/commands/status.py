"""``edge status``: the health a running daemon last wrote (exit 1 if not running)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from edge.config import Config
from edge.errors import ExitCode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(cfg: Config | None, *, out: TextIO, path: Path | None = None) -> int:
    """Print the status file of ``cfg`` (or the one at ``path``: a Greengrass component's
    ``{work:path}/health.json``, which has no TOML config)."""
    if path is None:
        assert cfg is not None
        path = cfg.health_path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"edge: no status at {path}: the daemon has not run with this config",
              file=sys.stderr)
        return ExitCode.FAILED
    except (OSError, ValueError) as exc:
        print(f"edge: cannot read status {path}: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    age = time.time() - float(data.get("written_at", 0))
    pid = int(data.get("pid", 0))
    running = bool(data.get("running")) and pid > 0 and _alive(pid)
    stale = age > 3 * float(data.get("interval_s", 60)) + 5
    data["status_age_s"] = round(age, 1)
    data["state"] = "running" if running and not stale else ("stale" if running else "stopped")
    data["warnings"] = warnings(data)
    for w in data["warnings"]:
        print(f"edge: warning: {w}", file=sys.stderr)
    json.dump(data, out, indent=2, default=str)
    out.write("\n")
    return ExitCode.OK if data["state"] == "running" else ExitCode.FAILED


def warnings(data: dict[str, Any]) -> list[str]:
    """What an operator should know at a glance: low disk, an outbox not writable."""
    out = []
    disk = data.get("disk")
    if isinstance(disk, dict):
        free = disk.get("free_bytes")
        if disk.get("pressure"):
            out.append(f"disk space low: {free} bytes free for the outbox (min_free"
                       f" {disk.get('min_free_bytes')}): telemetry and health no longer grow")
        target = int(disk.get("reserve_target_bytes") or 0)
        held = int(disk.get("reserve_bytes") or 0)
        if target and held < target:
            out.append(f"alert reserve short: {held} of {target} bytes held")
    if data.get("outbox_mode") == "memory-fallback":
        out.append("outbox not writable: messages held in memory"
                   f" ({data.get('queue')} queued)")
    return out
