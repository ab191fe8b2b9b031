"""com.vehicleedge.Simulator's run step: write the config `edge sim` runs with on a bench gateway.

    python sim-config.py DRIVE THING OUT_TOML

DRIVE is a drive bundled with the ``sim`` package (``city``, ``faults``) or the path of a
drive directory on the gateway. The drive's own ``config.toml`` gives the vehicle (DBC,
speed signal, zones, speed limit); on top of it this sets

* ``thing`` = THING (the core device's thing name: the recipe allows PublishToIoTCore only
  on ``vehicles/{iot:thingName}/*``),
* ``[uplink] kind = "greengrass"``: events go to the cloud through the nucleus' IPC,
  exactly as the daemon component publishes them,
* ``[outbox] path`` (and the health file) in OUT_TOML's directory (the component's
  work dir: the drive's own ``~/.cache`` path may not exist for the component's user),
* ``[log] format = "json"`` (the nucleus captures stdout/stderr into its log files).

Relative paths of the drive's config are made absolute, the result is validated with
``edge.config`` and written atomically. Prints the drive directory on stdout (the run
step passes it to ``edge sim``). Exit status 2 with a clear message on a bad drive.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tomllib
from pathlib import Path
from typing import Any


def drive_dir(drive: str) -> Path:
    if "/" in drive:
        return Path(drive).expanduser().resolve()
    if not drive or drive.startswith(".") or not all(c.isalnum() or c in "-_" for c in drive):
        raise ValueError(f"drive {drive!r} is neither a bundled drive name nor a path")
    import sim

    return Path(sim.__file__).resolve().parent / "drives" / drive


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(data: dict[str, Any]) -> str:
    """Tables and scalars (all a config has) as TOML."""
    lines: list[str] = []

    def table(d: dict[str, Any], name: str) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        if name and scalars:
            lines.append(f"\n[{name}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        for k, v in tables.items():
            table(v, f"{name}.{k}" if name else k)

    table(data, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def sim_component_config(drive: Path, thing: str, out: Path) -> dict[str, Any]:
    from edge.config import config_from_dict

    src = drive / "config.toml"
    data = tomllib.loads(src.read_text(encoding="utf-8"))
    data["thing"] = thing
    data["uplink"] = {"kind": "greengrass"}
    data["outbox"] = {**data.get("outbox", {}), "path": str(out.parent / "sim-outbox.db")}
    data.get("health", {}).pop("path", None)  # beside the outbox
    data["log"] = {**data.get("log", {}), "format": "json"}
    cfg = config_from_dict(data, base=drive)  # validates; resolves paths against the drive

    def absolute(section: Any, raw: dict[str, Any]) -> dict[str, Any]:
        res = dict(raw)
        for k, v in raw.items():
            value = getattr(section, k)
            if isinstance(v, dict):
                res[k] = absolute(value, v)
            elif isinstance(value, Path):
                res[k] = str(value)
        return res

    return absolute(cfg, data)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: sim-config.py DRIVE THING OUT_TOML", file=sys.stderr)
        return 2
    drive_arg, thing, out_arg = argv
    from edge.errors import ConfigError

    out = Path(out_arg).resolve()
    try:
        drive = drive_dir(drive_arg)
        if not (drive / "config.toml").is_file():
            raise ValueError(f"{drive} has no config.toml (is it a drive directory?)")
        data = sim_component_config(drive, thing, out)
    except (ValueError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"sim-config: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"sim-config: {drive_arg}: invalid config: {exc}", file=sys.stderr)
        return 2
    text = to_toml(data)
    tomllib.loads(text)  # what we write must read back
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    print(drive)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
