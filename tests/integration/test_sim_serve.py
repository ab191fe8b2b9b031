"""`edge sim DRIVE --serve DIR` (the Greengrass Simulator component): the drive at stable
device paths, read by a daemon that runs separately, configured only by DIR/bench.json."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.app import Daemon
from edge.greengrass.config import config_from_component

DRIVES = Path(__file__).resolve().parents[2] / "sim" / "drives"


def published(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        p = json.loads(line)["payload"]
        out += p.get("records", [p]) if isinstance(p, dict) else p
    return out


@pytest.mark.timeout(90)
def test_a_separate_daemon_reads_the_served_ptys_and_decides_events(tmp_path: Path) -> None:
    serve_dir = tmp_path / "run" / "vehicle-edge"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "sim", "city", "--serve", str(serve_dir), "--rate", "5",
         "--loop"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not (serve_dir / "bench.json").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        bench = json.loads((serve_dir / "bench.json").read_text())
        # stable paths: links to the ptys, and the vehicle's DBC beside them
        assert os.path.realpath(serve_dir / "gnss").startswith("/dev/pts/")
        assert os.path.realpath(serve_dir / "can").startswith("/dev/pts/")
        assert bench["gnss"]["port"] == str(serve_dir / "gnss")
        assert bench["can"] == {
            "interface": "slcan", "channel": str(serve_dir / "can"),
            "dbc": str(serve_dir / "demo.dbc"), "speed_signal": "VEHICLE_SPEED.SPEED_KMH"}
        assert "zones" not in bench["rules"]  # the Zones component's
        # the daemon: the Daemon component's configuration merged with bench.json
        value = {**bench, "thing": "bench-gw", "uplink": {"kind": "file", "path": "out.jsonl"},
                 "rules": {**bench["rules"], "zones": str(DRIVES / "city" / "zones.geojson")},
                 "health": {"interval_s": 1.0}}
        cfg = config_from_component(value, base=tmp_path, env={})
        out = tmp_path / "out.jsonl"

        async def scenario() -> None:
            d = Daemon(cfg)
            stop = asyncio.Event()
            task = asyncio.create_task(d.run(stop))
            try:
                async with asyncio.timeout(45):
                    while not any(r.get("type") == "overspeed" for r in published(out)):
                        assert not task.done()
                        await asyncio.sleep(0.2)
            finally:
                stop.set()
                await task
            h = d.health()
            assert h["gnss"]["fixes"] > 0, h["gnss"]

        asyncio.run(scenario())
        recs = published(out)
        speeds = [r for r in recs if r.get("type") == "telemetry" and "speed_source" in r]
        assert any(r["speed_source"] == "can" for r in speeds)  # CAN via the slcan adapter
        assert any(r.get("type") == "trip" for r in recs)
        assert proc.poll() is None  # --loop: still serving
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert not (serve_dir / "gnss").exists() and not (serve_dir / "can").exists()


def test_serve_usage_errors(tmp_path: Path) -> None:
    for args in (["city", "--serve", str(tmp_path), "--config", "x.toml"],
                 ["no-such-drive", "--serve", str(tmp_path)],
                 ["city"]):
        r = subprocess.run([sys.executable, "-m", "edge", "sim", *args], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 2 and "edge sim:" in r.stderr, (args, r.stderr)
