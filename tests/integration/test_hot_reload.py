"""Hot reload in a running daemon: zones file replaced, config updated, bad input kept out."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edge.app import Daemon
from edge.config import Config, load_config
from tests.support.daemon import PtyFeeder, events, run_in_process, wait_until

CIRCLE = {
    "type": "FeatureCollection",
    "features": [{
        "type": "Feature",
        "properties": {"id": "city", "name": "Whole town", "radius_m": 20000},
        "geometry": {"type": "Point", "coordinates": [11.5820, 48.1351]},
    }],
}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def make_config(tmp_path: Path, port: str) -> Config:
    zones = tmp_path / "zones.geojson"
    zones.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        'thing = "car-reload"\n'
        f'[gnss]\nport = "{port}"\n'
        '[rules]\nzones = "zones.geojson"\n'
        f'[uplink]\nkind = "file"\npath = "{tmp_path / "out.jsonl"}"\n'
        f'[outbox]\npath = "{tmp_path / "o.db"}"\n'
        "[health]\ninterval_s = 0.5\n"
    )
    return load_config(cfg)


def run_daemon(tmp_path: Path,
               body: Callable[[Daemon, Config, asyncio.Task[None]], Awaitable[None]], *,
               zones_optional: bool = False) -> None:
    """A daemon in this process (file uplink, NMEA from a pty feeder): once its first
    telemetry is out, ``body(daemon, config, task)`` runs; then the daemon stops in order."""
    feeder = PtyFeeder(period=0.1).start()
    cfg = make_config(tmp_path, feeder.path)
    if zones_optional:
        (tmp_path / "zones.geojson").unlink()

    def setup(d: Daemon) -> None:
        d.zones_optional = zones_optional

    run_in_process(cfg, feeder, lambda d, task: body(d, cfg, task), setup=setup,
                   ready=lambda: bool(events(tmp_path / "out.jsonl", "telemetry")))


@pytest.mark.timeout(60)
def test_zones_file_replaced_while_running(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"

    async def body(d: Daemon, cfg: Config, task: asyncio.Task[None]) -> None:
        # an invalid update is rejected, the daemon goes on and health says why
        write_atomic(tmp_path / "zones.geojson", '{"type": "FeatureCollection", "features": [1]}')
        assert await wait_until(lambda: d.health()["rules"]["zones"]["error"] is not None)
        assert not task.done()
        # a valid one swaps in: the car is inside the new fence -> "inside", never "enter"
        write_atomic(tmp_path / "zones.geojson", json.dumps(CIRCLE))
        assert await wait_until(lambda: bool(events(out, "geofence")))
        (ev,) = events(out, "geofence")
        assert ev["fence"] == "city" and ev["transition"] == "inside"
        h = d.health()["rules"]["zones"]
        assert h["error"] is None and h["reloads"] >= 1

    run_daemon(tmp_path, body)


@pytest.mark.timeout(60)
def test_config_update_switches_uplink_and_rules_live(tmp_path: Path) -> None:
    out2 = tmp_path / "out2.jsonl"

    async def body(d: Daemon, cfg: Config, task: asyncio.Task[None]) -> None:
        new = dataclasses.replace(
            cfg,
            uplink=dataclasses.replace(cfg.uplink, path=out2),
            telemetry=dataclasses.replace(cfg.telemetry, interval_s=2.0),
            outbox=dataclasses.replace(cfg.outbox, path=tmp_path / "elsewhere.db"),
        )
        await d.apply_config(new)
        assert await wait_until(lambda: bool(events(out2, "telemetry")))
        assert d.engine is not None and d.engine.telemetry.interval_s == 2.0
        # the outbox cannot move under a running daemon: flagged, not applied
        assert d.health()["config"]["restart_required"] == ["outbox"]
        assert d.config.outbox.path == tmp_path / "o.db"

    run_daemon(tmp_path, body)


@pytest.mark.timeout(60)
def test_an_update_that_cannot_run_is_rejected_whole(tmp_path: Path) -> None:
    from edge.errors import ConfigError

    out = tmp_path / "out.jsonl"
    dbc = Path(__file__).resolve().parents[2] / "sim" / "dbc" / "demo.dbc"

    async def body(d: Daemon, cfg: Config, task: asyncio.Task[None]) -> None:
        gnss_task = d.inputs.tasks["gnss"]
        bad = dataclasses.replace(
            cfg,
            gnss=dataclasses.replace(cfg.gnss, baud=115200),
            can=dataclasses.replace(cfg.can, interface="virtual", dbc=dbc,
                                    speed_signal="VEHICLE_SPEED.NOPE"),
            telemetry=dataclasses.replace(cfg.telemetry, interval_s=5.0),
        )
        with pytest.raises(ConfigError) as ei:
            await d.apply_config(bad)
        assert ei.value.field == "can.speed_signal"
        # nothing of it was applied: same config, same running GNSS source, no CAN
        assert d.config == cfg
        assert d.inputs.tasks["gnss"] is gnss_task and not gnss_task.done()
        assert "can" not in d.inputs.tasks
        assert d.engine is not None and d.engine.telemetry.interval_s == 1.0
        n = len(events(out, "telemetry"))
        assert await wait_until(lambda: len(events(out, "telemetry")) > n + 2)

    run_daemon(tmp_path, body)


@pytest.mark.timeout(60)
def test_zones_file_deployed_after_start_is_picked_up(tmp_path: Path) -> None:
    """Under Greengrass the Zones component may deploy its file after the daemon starts."""
    out = tmp_path / "out.jsonl"

    async def body(d: Daemon, cfg: Config, task: asyncio.Task[None]) -> None:
        # until then health says so, naming the file (the operator's first question)
        error = d.health()["rules"]["zones"]["error"]
        assert error is not None and str(tmp_path / "zones.geojson") in error
        assert "does not exist" in error and "com.vehicleedge.Zones" in error
        write_atomic(tmp_path / "zones.geojson", json.dumps(CIRCLE))
        assert await wait_until(lambda: bool(events(out, "geofence")))
        assert events(out, "geofence")[0]["transition"] == "inside"
        assert d.health()["rules"]["zones"]["error"] is None

    run_daemon(tmp_path, body, zones_optional=True)
