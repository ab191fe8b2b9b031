"""``edge sim DRIVE --serve DIR``: a bench gateway's vehicle, for a daemon running elsewhere.

Replays DRIVE into device interfaces at stable paths and runs no daemon of its own (the
Greengrass Simulator component; the deployed Daemon component is what the bench tests):

* ``DIR/gnss``  -> the slave side of a pty carrying the drive's NMEA,
* ``DIR/can``   -> a fake USB slcan adapter (``sim.slcan``) replaying its CAN log,
* ``DIR/<dbc>`` -> the drive's DBC file (copied, so the daemon can decode the frames),
* ``DIR/bench.json`` -> the daemon configuration (component configuration JSON: a
  Greengrass deployment's ``merge``) that points a daemon at all of the above, with the
  vehicle's settings from the drive's ``config.toml`` (CAN speed signal, speed rules,
  trip thresholds). Zones are left out: they come from the Zones component.

Links are replaced atomically, so a daemon that reopens a path after the simulator
restarted finds the new pty. A bare DRIVE name (``city``) is a drive bundled with ``sim``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import structlog

from sim.device_replay import Replayer
from sim.drive import DriveError, load_drive
from sim.pty import PtySerial

log = structlog.get_logger()

BUNDLED = Path(__file__).resolve().parent / "drives"
# sections of a drive's config.toml that describe the vehicle (not where it publishes)
VEHICLE_SECTIONS = ("gnss", "can", "rules", "telemetry")


def resolve_drive(drive: str | Path) -> Path:
    """A drive directory: a path, or the name of a drive bundled with ``sim``."""
    p = Path(drive)
    if p.is_dir() or "/" in str(drive):
        return p
    name = str(drive)
    if (BUNDLED / name).is_dir() and not name.startswith("."):
        return BUNDLED / name
    raise DriveError(f"{drive}: neither a drive directory nor a bundled drive "
                     f"({', '.join(sorted(d.name for d in BUNDLED.iterdir() if d.is_dir()))})")


def link_atomically(target: str, link: Path) -> None:
    tmp = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def bench_config(drive: Path, serve_dir: Path, *, can: bool, copy_dbc: bool = True
                 ) -> dict[str, Any]:
    """The daemon configuration (component configuration JSON) for ``serve_dir``'s
    devices; the DBC the drive's config names is copied into ``serve_dir`` (unless
    ``copy_dbc`` is off: what the Simulator will serve, computed elsewhere)."""
    src = drive / "config.toml"
    data: dict[str, Any] = tomllib.loads(src.read_text()) if src.is_file() else {}
    out: dict[str, Any] = {k: dict(data[k]) for k in VEHICLE_SECTIONS
                           if isinstance(data.get(k), dict)}
    rules = out.get("rules", {})
    rules.pop("zones", None)  # the Zones component's
    out["gnss"] = {**out.get("gnss", {}), "port": str(serve_dir / "gnss")}
    if can:
        can_cfg = {**out.get("can", {}), "interface": "slcan", "channel": str(serve_dir / "can")}
        if "dbc" in can_cfg:
            dbc = (src.parent / str(can_cfg["dbc"])).resolve()
            if copy_dbc:
                shutil.copyfile(dbc, serve_dir / dbc.name)
            can_cfg["dbc"] = str(serve_dir / dbc.name)
        out["can"] = can_cfg
    else:
        out["can"] = {"interface": "none"}
    return out


def _make_dir(serve_dir: Path) -> None:
    serve_dir.mkdir(parents=True, exist_ok=True)


def _publish(drive: Path, serve_dir: Path, pty: PtySerial | None, *, can: bool) -> None:
    """The GNSS link and bench.json (the CAN link is the adapter's own)."""
    if pty is not None:
        link_atomically(pty.path, serve_dir / "gnss")
    config = bench_config(drive, serve_dir, can=can)
    tmp = serve_dir / "bench.json.new"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, serve_dir / "bench.json")


async def serve(drive_arg: str | Path, serve_dir: Path, *, rate: float | None,
                loop: bool = True, max_gap_s: float | None = None,
                open_timeout_s: float = 15.0) -> int:
    """Replay the drive into ``serve_dir``'s devices until it ends (or forever with
    ``loop``); returns 0."""
    from sim.slcan import SlcanPtyAdapter

    drive = load_drive(resolve_drive(drive_arg))
    _make_dir(serve_dir)
    pty = PtySerial(write_timeout_s=1.0) if drive.gnss is not None else None
    sink = SlcanPtyAdapter(link=serve_dir / "can") if drive.can is not None else None
    try:
        _publish(drive.path, serve_dir, pty, can=sink is not None)
        replayer = Replayer(drive, nmea=pty, can=sink, rate=rate, max_gap_s=max_gap_s,
                            loop=loop, wait_reader_s=open_timeout_s)
        log.info("sim serving", drive=str(drive.path), dir=str(serve_dir),
                 gnss=pty.path if pty else None, can=sink.tty_path if sink else None,
                 rate=rate or "max", loop=loop)
        if sink is not None:
            # python-can's slcan opens the port, then waits: replay once it listens
            while not await replayer.wait_open(open_timeout_s):
                log.info("sim: waiting for a daemon to open the CAN adapter",
                         path=str(serve_dir / "can"))
        await replayer.run()
        s = replayer.stats
        log.info("sim done", nmea_lines=s.nmea_lines, can_frames=s.can_frames)
        return 0
    finally:
        if pty is not None:
            _unlink(serve_dir / "gnss")
            pty.close()
        if sink is not None:
            sink.close()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def run_serve(drive: str | Path, serve_dir: Path, *, rate: float | None, loop: bool,
              max_gap_s: float | None = None) -> int:
    """Until the drive ends or SIGINT/SIGTERM."""
    from edge.app import run_until_signalled

    async def main(stop: asyncio.Event) -> None:
        task = asyncio.create_task(serve(drive, serve_dir, rate=rate, loop=loop,
                                         max_gap_s=max_gap_s), name="sim-serve")
        stopping = asyncio.create_task(stop.wait(), name="sim-stop")
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, stopping):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(asyncio.CancelledError):
                await stopping

    return asyncio.run(run_until_signalled(main))
