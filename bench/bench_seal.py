"""What encryption at rest costs (``[outbox] encryption = "aes-256-gcm"``).

* ``seal.enqueue``: telemetry put in group commits of 100 (the writer's way), sealed;
  baseline the same outbox unsealed, in the same run. Goal: at most 15 % slower.
* ``seal.drain``: claim 100, ack them (the forwarder's way, no network), sealed rows
  opened on claim; baseline unsealed. Goal: at most 15 % slower.
* ``seal.daemon_rss``: VmRSS of the real daemon (``bench_rss``'s GNSS + CAN + MQTT run)
  with encryption on, so ``cryptography`` loaded; baseline the same daemon with it off.
  Goal <= 60 MB. ``seal.import_rss``: what importing AESGCM costs alone.

Each rate is the best of several alternating rounds (the machine is shared: the best
round is the least disturbed one, for both sides alike).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import need_mosquitto, row

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.model import Envelope, Lane  # noqa: E402
from edge.outbox import Outbox  # noqa: E402

GOAL_SLOWER = 0.15
GOAL_MB = 60.0
THING = "car-rss-1"


def _env(i: int) -> Envelope:
    # a telemetry batch envelope of the daemon's usual size (10 records)
    rec = {"Vehicle.Speed": 50.0, "Vehicle.CurrentLocation.Latitude": 48.1351234,
           "Vehicle.CurrentLocation.Longitude": 11.5820123, "ts": 1700000000000 + i}
    return Envelope(id=f"{i:036d}", thing="car", type="telemetry", ts=i, seq=i,
                    topic="vehicles/car/telemetry", lane=Lane.TELEMETRY,
                    body={"records": [rec] * 10})


def _rates(tmp: Path, sealer: Any, envs: list[Envelope], tag: str) -> tuple[float, float]:
    """(enqueue msgs/s, drain msgs/s) of one fresh outbox."""
    ob = Outbox(tmp / f"{tag}.db", max_bytes=1 << 40, sync_interval_s=5.0, sealer=sealer)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(envs), 100):
            ob.put(envs[i : i + 100])
        put = len(envs) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        n = 0
        while rows := ob.claim(100):
            ob.ack([r.seq for r in rows])
            n += len(rows)
        drain = n / (time.perf_counter() - t0)
        assert n == len(envs)
    finally:
        ob.close()
    return put, drain


def run(quick: bool = False) -> list[dict[str, Any]]:
    from edge.seal import Sealer, keygen

    n = 5_000 if quick else 10_000
    rounds = 7 if quick else 11
    envs = [_env(i) for i in range(n)]
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="ve-bench-seal-"))
    try:
        key = tmp / "outbox.key"
        keygen(key)
        sealer = Sealer(key)
        best: dict[str, list[float]] = {"plain": [0.0, 0.0], "sealed": [0.0, 0.0]}
        for r in range(rounds):
            for tag, s in (("plain", None), ("sealed", sealer)):
                put, drain = _rates(tmp, s, envs, f"{tag}{r}")
                best[tag] = [max(best[tag][0], put), max(best[tag][1], drain)]
        size = len(envs[0].to_bytes())
        for i, what in enumerate(("enqueue", "drain")):
            sealed, plain = best["sealed"][i], best["plain"][i]
            rows.append(row(f"seal.{what}", round(sealed), "msgs/s", round(plain),
                            f">= {1 - GOAL_SLOWER:.0%} of unsealed ({size} B payloads)",
                            sealed >= (1 - GOAL_SLOWER) * plain))
        rows += _rss(tmp, quick)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _rss(tmp: Path, quick: bool) -> list[dict[str, Any]]:
    need_mosquitto()
    from bench.bench_rss import import_rss, measure_daemon
    from edge.seal import keygen
    from tests.support.broker import Broker, Pki

    seconds = 10.0 if quick else 20.0
    key = tmp / "daemon.key"
    keygen(key)
    extra = f'encryption = "aes-256-gcm"\nkey_file = "{key}"\n'
    pki = Pki.create([THING])
    broker = Broker(pki)
    broker.start()
    try:
        on = measure_daemon(tmp, broker, seconds, outbox_extra=extra)
        off = measure_daemon(tmp, broker, seconds)
    finally:
        broker.stop()
        shutil.rmtree(pki.dir, ignore_errors=True)
    enc = (on["health"].get("outbox") or {}).get("encryption")
    if not enc:
        raise RuntimeError(f"the daemon did not run with encryption on: {on['health']}")
    mb_on, mb_off = on["rss_kb"][-1] / 1024, off["rss_kb"][-1] / 1024
    bare, _ = import_rss(())
    aead, _ = import_rss(("cryptography.hazmat.primitives.ciphers.aead",))
    return [
        row("seal.daemon_rss", round(mb_on, 1), "MB", round(mb_off, 1),
            f"<= {GOAL_MB:g} MB after {seconds:g} s, encryption on (baseline: off)",
            mb_on <= GOAL_MB),
        row("seal.import_rss", round((aead - bare) / 1024, 1), "MB", None,
            "cryptography's AESGCM alone (imported only when encryption is on)"),
    ]


if __name__ == "__main__":
    import json

    for r in run(quick="--quick" in sys.argv):
        print(json.dumps(r))
