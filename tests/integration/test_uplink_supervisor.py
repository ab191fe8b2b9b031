"""The uplink supervisor's reconnect policy, against real failures: refused credentials
jump to the longest backoff, a broker that is not there starts short; the first failure
is a warning, its repeats debug lines."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from edge.config import Config, config_from_dict
from edge.daemon.ingest import Ingest
from edge.daemon.supervisor import UplinkState, UplinkSupervisor
from tests.conftest import THING
from tests.support.broker import Broker, free_port

CAP_S = 2.0


def _config(uplink: dict[str, object], tmp_path: Path) -> Config:
    return config_from_dict({"thing": THING, "uplink": {
        "kind": "mqtt", "endpoint": "localhost", "connect_timeout_s": 2.0,
        "backoff_max_s": CAP_S, "probe_s": 0, **uplink},
        "outbox": {"path": str(tmp_path / "o.db")}})


def _delays(cfg: Config, attempts: int) -> tuple[list[float], UplinkSupervisor, list[dict]]:  # type: ignore[type-arg]
    """Run the supervisor until ``attempts`` connects failed: the waits it chose."""

    async def go() -> tuple[list[float], UplinkSupervisor, list[dict]]:  # type: ignore[type-arg]
        ingest = Ingest(lambda: cfg)
        ingest.opened.set()
        sup = UplinkSupervisor(lambda: cfg, ingest)
        delays: list[float] = []
        structlog.reset_defaults()
        with capture_logs() as logs:
            task = asyncio.create_task(sup.run())
            async with asyncio.timeout(30):
                while len(delays) < attempts:
                    await asyncio.sleep(0.01)
                    if sup.counters["uplink_errors"] > len(delays) and sup.retry_delay_s:
                        delays.append(sup.retry_delay_s)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return delays, sup, logs

    return asyncio.run(go())


@pytest.mark.timeout(60)
def test_refused_credentials_wait_the_longest_backoff(broker: Broker, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(broker.pki.key(THING).read_bytes())
    os.chmod(key, 0o644)  # world-readable: the uplink refuses it as a credentials error
    cfg = _config({"port": broker.port, "ca": str(broker.pki.ca),
                   "cert": str(broker.pki.cert(THING)), "key": str(key)}, tmp_path)
    delays, sup, logs = _delays(cfg, 2)
    assert all(CAP_S / 2 <= d <= CAP_S for d in delays), delays  # at the cap at once
    assert sup.state == UplinkState.DISCONNECTED and "world-readable" in str(sup.last_error)
    levels = [e["log_level"] for e in logs if e["event"] == "uplink unavailable, will retry"]
    assert levels[:2] == ["warning", "debug"]


@pytest.mark.timeout(60)
def test_a_broker_not_there_starts_with_a_short_backoff(tmp_path: Path) -> None:
    cfg = _config({"port": free_port()}, tmp_path)  # nothing listens there
    delays, sup, _ = _delays(cfg, 1)
    assert delays[0] <= 0.5, delays  # the base, not the cap
    assert sup.health() == {"kind": "mqtt", "state": "disconnected",
                            "last_error": sup.last_error}
