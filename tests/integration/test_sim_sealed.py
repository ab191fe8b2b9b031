"""A drive replayed through the unmodified daemon with ``[outbox] encryption`` on and
the broker out of reach: every envelope stays in the outbox, and the database file
holds none of the drive's coordinates, thing name or event fields."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.seal import keygen

DRIVES = Path(__file__).resolve().parents[2] / "sim" / "drives"
pytest.importorskip("cryptography")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def test_replayed_drive_leaves_no_location_thing_or_event_field_on_disk(tmp_path: Path) -> None:
    from edge.replay import replay_events
    from sim.run import run_sim

    key = tmp_path / "outbox.key"
    keygen(key)
    cfg = load_config(DRIVES / "faults" / "config.toml")
    cfg = dataclasses.replace(
        cfg,
        uplink=dataclasses.replace(cfg.uplink, kind="mqtt", endpoint="127.0.0.1",
                                   port=_free_port(), tls=False),
        outbox=dataclasses.replace(cfg.outbox, path=tmp_path / "outbox.db",
                                   encryption="aes-256-gcm", key_file=key),
        health=dataclasses.replace(cfg.health, path=tmp_path / "health.json"),
    )
    rc = asyncio.run(run_sim(DRIVES / "faults", cfg, rate=None, can_mode="virtual",
                             drain_s=0.5, progress=None))
    assert rc == 0
    db = tmp_path / "outbox.db"
    with sqlite3.connect(db) as con:
        lanes = dict(con.execute("SELECT topic, COUNT(*) FROM messages GROUP BY topic"))
    # nothing was delivered: what the drive made is all on disk, alerts included
    assert lanes.get("vehicles/+/telemetry", 0) > 100
    assert any(t.startswith("vehicles/+/events/") for t in lanes), lanes

    # what replay says the daemon published: its coordinates and event fields
    secrets = {cfg.thing.encode()}
    for e in replay_events(DRIVES / "faults", cfg):
        body = json.loads(e.to_bytes())
        for k in body:
            if k not in ("id", "thing", "type", "ts", "seq"):
                secrets.add(json.dumps(k).encode())  # a field name, quoted as in JSON
        for v in _leaves(body):
            if isinstance(v, str) and len(v) >= 4 and v != e.id:
                secrets.add(json.dumps(v).encode())
            elif isinstance(v, float) and len(repr(v)) >= 7:  # coordinates, not 50.0
                secrets.add(repr(v).encode())
    assert b'"Vehicle.CurrentLocation.Latitude"' in secrets and len(secrets) > 200
    disk = db.read_bytes()
    wal = db.with_name("outbox.db-wal")
    if wal.exists():
        disk += wal.read_bytes()
    found = sorted(s for s in secrets if s in disk)
    assert not found, found[:10]
