"""`edge sim`: the unmodified daemon fed by a replayed drive through ptys (sim/run.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from edge.config import Config, load_config

DRIVES = Path(__file__).resolve().parents[2] / "sim" / "drives"
pytest.importorskip("edge.app")


def _cfg(tmp_path: Path, name: str) -> Config:
    cfg = load_config(DRIVES / name / "config.toml")
    return dataclasses.replace(
        cfg,
        uplink=dataclasses.replace(cfg.uplink, kind="file", path=tmp_path / "published.jsonl"),
        outbox=dataclasses.replace(cfg.outbox, path=tmp_path / "outbox.db"),
        health=dataclasses.replace(cfg.health, path=tmp_path / "health.json"),
    )


def _alerts(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        payloads = obj["payload"] if isinstance(obj["payload"], list) else [obj["payload"]]
        for p in payloads:
            if isinstance(p, dict) and p.get("type") in ("overspeed", "geofence", "poi", "trip"):
                out.append((p["type"], str(p.get("phase") or p.get("transition") or p.get("poi"))))
    return out


def _replay_alerts(name: str, cfg: Config) -> list[tuple[str, str]]:
    from edge.commands.replay import replay_events

    return [(e.type, str(e.body.get("phase") or e.body.get("transition") or e.body.get("poi")))
            for e in replay_events(DRIVES / name, cfg) if e.type in
            ("overspeed", "geofence", "poi", "trip")]


def test_sim_on_the_virtual_bus_publishes_what_replay_decides(tmp_path: Path) -> None:
    from sim.run import run_sim

    cfg = _cfg(tmp_path, "faults")
    rc = asyncio.run(run_sim(DRIVES / "faults", cfg, rate=None, can_mode="virtual",
                             drain_s=1.0, progress=None))
    assert rc == 0
    got = _alerts(tmp_path / "published.jsonl")
    assert sorted(got) == sorted(_replay_alerts("faults", cfg))
    assert ("geofence", "enter") in got and ("trip", "start") in got


def test_sim_through_the_slcan_pty_adapter(tmp_path: Path) -> None:
    pytest.importorskip("sim.slcan")
    from sim.run import run_sim

    cfg = _cfg(tmp_path, "faults")  # includes a 3 s adapter unplug and replug
    cfg = dataclasses.replace(cfg, can=dataclasses.replace(cfg.can, slcan_open_delay_s=0.2))
    rc = asyncio.run(run_sim(DRIVES / "faults", cfg, rate=None, can_mode="slcan", drain_s=1.0,
                             progress=None))
    assert rc == 0
    got = _alerts(tmp_path / "published.jsonl")
    for want in [("trip", "start"), ("overspeed", "start"), ("geofence", "enter"),
                 ("geofence", "dwell"), ("geofence", "exit"), ("trip", "end")]:
        assert want in got, (want, got)
