"""A running daemon swaps to a new road index when the file is replaced (a Greengrass
Roads deployment), and keeps the old one when the new file is not an index."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
from pathlib import Path

import pytest

from edge.app import Daemon
from edge.config import Config, load_config
from edge.errors import ConfigError
from edge.roads.index import E7, IndexWriter
from tests.support.daemon import PtyFeeder, events, run_in_process, wait_until

LON = 11.5820  # the feeder drives north along this meridian from 48.1351


def north_road(path: Path, kmh: float) -> None:
    w = IndexWriter(path)
    w.add_way(id=42, highway="primary", name="Nordstrasse", ref=None, oneway=0,
              fwd=(kmh, False), bwd=(kmh, False))
    lats = [48.13 + i * 0.001 for i in range(60)]
    w.add_segments(42, [(i, i + 1, round(a * E7), round(LON * E7), round(b * E7),
                         round(LON * E7)) for i, (a, b) in enumerate(itertools.pairwise(lats))])
    w.close({"country": "DE", "source": "test"})


def roads_config(tmp_path: Path, gnss: str, index: Path) -> Config:
    """A daemon on a GNSS pty with ``index`` as its road index, publishing to a file."""
    cfg_path = tmp_path / "edge.toml"
    cfg_path.write_text(
        'thing = "car-roads"\n'
        f'[gnss]\nport = "{gnss}"\n'
        f'[roads]\nindex = "{index}"\n'
        f'[uplink]\nkind = "file"\npath = "{tmp_path / "out.jsonl"}"\n'
        f'[outbox]\npath = "{tmp_path / "o.db"}"\n'
        "[telemetry]\ninterval_s = 1\n[health]\ninterval_s = 0.5\n")
    return load_config(cfg_path)


def deploy_road(tmp_path: Path, index: Path, kmh: float) -> None:
    """A new index with the north road at ``kmh`` replaces ``index`` atomically, as the
    Roads component's run step does."""
    index.parent.mkdir(parents=True, exist_ok=True)
    north_road(tmp_path / "next.db", kmh)
    os.replace(tmp_path / "next.db", index)


def limits(out: Path) -> list[object]:
    """The posted limit of every telemetry record published so far."""
    return [r.get("speed_limit_kmh") for r in events(out, "telemetry")]


@pytest.mark.timeout(90)
def test_new_index_is_picked_up_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    index = tmp_path / "roads.db"
    north_road(index, 50.0)
    feeder = PtyFeeder(period=0.1).start()
    cfg = roads_config(tmp_path, feeder.path, index)
    out = tmp_path / "out.jsonl"

    async def body(d: Daemon, task: asyncio.Task[None]) -> None:
        # not an index: refused, the old one stays
        bad = tmp_path / "bad.new"
        bad.write_bytes(b"garbage" * 1000)
        os.replace(bad, index)
        await asyncio.sleep(6)
        assert d.engine is not None and d.engine.rules.roads is not None
        assert d.engine.rules.roads.index.meta["source"] == "test"
        assert limits(out)[-1] == 50.0 and not task.done()
        # a real one: swapped in, the posted limit follows
        deploy_road(tmp_path, index, 20.0)
        assert await wait_until(lambda: limits(out)[-1] == 20.0, 15)

    run_in_process(cfg, feeder, body, ready=lambda: 50.0 in limits(out), ready_s=15)


@pytest.mark.timeout(90)
def test_an_index_deployed_after_the_daemon_is_a_health_error_then_loaded(tmp_path: Path) -> None:
    """Under Greengrass the Roads component may deploy after the Daemon: a missing index
    is no crash but an error in health, and the watcher loads the index when it comes.
    Outside Greengrass the same config is refused at start, naming roads.index."""
    index = tmp_path / "work" / "com.vehicleedge.Roads" / "roads.db"  # not there yet
    feeder = PtyFeeder(period=0.1).start()
    cfg = roads_config(tmp_path, feeder.path, index)
    out = tmp_path / "out.jsonl"

    def roads(d: Daemon) -> dict[str, object]:
        return dict(d.health()["rules"]["overspeed"]["roads"])

    async def refused() -> None:
        await Daemon(cfg).run(asyncio.Event())

    with pytest.raises(ConfigError, match=r"roads\.index"):
        asyncio.run(refused())

    async def body(d: Daemon, task: asyncio.Task[None]) -> None:
        h = roads(d)
        assert h["index"] == str(index) and "does not exist" in str(h["error"])
        assert "com.vehicleedge.Roads" in str(h["error"]) and not task.done()
        # a configuration merge meanwhile is applied, not rejected for the missing index
        await d.apply_config(dataclasses.replace(
            cfg, telemetry=dataclasses.replace(cfg.telemetry, interval_s=2.0)))
        assert d.reloads == 1 and d.config.telemetry.interval_s == 2.0
        deploy_road(tmp_path, index, 20.0)
        assert await wait_until(
            lambda: limits(out)[-1] == 20.0, 15)
        h = roads(d)
        assert h["error"] is None and h["segments"] == 59 and int(h["lookups"]) > 0  # type: ignore[call-overload]
        assert h["reloads"] == 0  # loaded, not replaced
        deploy_road(tmp_path, index, 30.0)
        assert await wait_until(lambda: roads(d)["reloads"] == 1, 15)

    def setup(d: Daemon) -> None:
        d.zones_optional = True  # what edge run --greengrass sets

    run_in_process(cfg, feeder, body, setup=setup, ready_s=15,
                   ready=lambda: len(events(out, "telemetry")) >= 2)  # running


@pytest.mark.timeout(90)
def test_a_roads_component_the_fleet_does_not_deploy_is_no_error(tmp_path: Path) -> None:
    """The Daemon's recipe always offers com.vehicleedge.Roads' index path
    (VEHICLE_EDGE_ROADS); a fleet that does not deploy Roads runs on zone and default
    limits with health saying so, without an error, and an index deployed later is used."""
    from edge.greengrass.config import component_config_to_dict, roads_offered

    index = tmp_path / "work" / "com.vehicleedge.Roads" / "roads.db"
    env = {"VEHICLE_EDGE_ROADS": str(index)}
    feeder = PtyFeeder(period=0.1).start()
    doc = component_config_to_dict({
        "thing": "car-roads", "gnss": {"port": feeder.path},
        "uplink": {"kind": "file", "path": str(tmp_path / "out.jsonl")},
        "outbox": {"path": str(tmp_path / "o.db")},
        "telemetry": {"interval_s": 1}, "health": {"interval_s": 0.5}}, env=env)
    from edge.config import config_from_dict

    cfg = config_from_dict(doc)
    assert cfg.roads.index == index and roads_offered(env) == index
    out = tmp_path / "out.jsonl"

    async def body(d: Daemon, task: asyncio.Task[None]) -> None:
        h = dict(d.health()["rules"]["overspeed"]["roads"])
        assert h["state"] == "not deployed" and h["error"] is None, h
        health = [e for e in events(out, "health")]
        assert health and all(
            e["rules"]["overspeed"]["roads"]["error"] is None for e in health)
        deploy_road(tmp_path, index, 20.0)
        assert await wait_until(
            lambda: limits(out)[-1] == 20.0, 15)
        assert dict(d.health()["rules"]["overspeed"]["roads"])["state"] == "loaded"

    def setup(d: Daemon) -> None:
        d.zones_optional = True
        d.roads_offered = roads_offered(env)  # what edge run --greengrass sets

    run_in_process(cfg, feeder, body, setup=setup, ready_s=15,
                   ready=lambda: len(events(out, "telemetry")) >= 2)  # running
