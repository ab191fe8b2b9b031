"""What `make run` does, against the test broker: `edge sim` on the bundled city drive,
NMEA through a pty and CAN through an slcan adapter on a pty, the unmodified daemon
publishing over MQTT with mutual TLS. Every alert `edge replay` decides arrives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge.config import load_config
from edge.replay import replay_events
from tests.support.broker import Broker, Subscriber

ROOT = Path(__file__).resolve().parents[2]
CITY = ROOT / "sim" / "drives" / "city"
THING = "car-test-1"  # the identity the broker's ACL lets publish


def test_edge_sim_city_publishes_every_replayed_alert(
    tmp_path: Path, broker: Broker, subscriber: Subscriber
) -> None:
    text = (CITY / "config.toml").read_text()
    head, _, _ = text.partition("[uplink]")
    head = head.replace('thing = "sim-city"', f'thing = "{THING}"')
    head = head.replace('dbc = "../../dbc/demo.dbc"', f'dbc = "{ROOT / "sim/dbc/demo.dbc"}"')
    head = head.replace('zones = "zones.geojson"', f'zones = "{CITY / "zones.geojson"}"')
    cfg = tmp_path / "sim.toml"
    cfg.write_text(head + broker.uplink_section(THING)
                   + f'[outbox]\npath = "{tmp_path / "o.db"}"\n[log]\nformat = "json"\n')
    r = subprocess.run([sys.executable, "-m", "edge", "sim", str(CITY), "--config", str(cfg),
                        "--max"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]

    expected = [(e.type, e.ts) for e in replay_events(CITY, load_config(cfg))
                if e.type not in ("telemetry", "health")]
    assert len(expected) >= 8

    def alerts(messages: list[tuple[str, bytes]]) -> list[tuple[str, int]]:
        out = []
        for topic, payload in messages:
            if "/events/" in topic:
                p = json.loads(payload)
                out.append((p["type"], p["ts"]))
        return out

    assert subscriber.wait_for(lambda m: len(alerts(m)) >= len(expected), timeout=20)
    got = sorted(alerts(subscriber.messages), key=lambda x: x[1])
    # the live daemon stamps CAN-driven events by the monotonic clock it read them at:
    # at --max the same events, within the replay's frame spacing
    assert [k for k, _ in got] == [k for k, _ in expected]
    for (_, ts_live), (_, ts_replay) in zip(got, expected, strict=True):
        assert abs(ts_live - ts_replay) <= 1500
    tel = [t for t, _ in subscriber.messages if t.endswith("/telemetry")]
    assert tel, "telemetry batches arrive too"
