"""What encryption at rest costs (``[outbox] encryption = "aes-256-gcm"``).

* ``seal.enqueue``: telemetry put in group commits of 100 (the writer's way), sealed;
  baseline the same outbox unsealed, in the same run. Goal: at most 15 % slower.
* ``seal.drain``: claim 100, ack them (the forwarder's way, no network), sealed rows
  opened on claim; baseline unsealed. Goal: at most 15 % slower.
* ``seal.daemon_rss``: VmRSS of the real daemon (``bench_rss``'s GNSS + CAN + MQTT +
  zones run) with encryption on, so ``cryptography`` loaded; baseline the same daemon
  with it off; the median of 3 alternating rounds (1 with ``--quick``: a single run
  swings by a few MB). Goal <= 60 MB. ``seal.daemon_rss_cost``: on - off.
  ``seal.import_rss``: what importing AESGCM costs alone.
* ``seal.daemon_rss.<part>``: where the encrypted daemon's resident memory is, from
  /proc/PID/smaps (``bench_rss.rss_by_part``): ``cryptography`` (its ``_rust`` module,
  which carries its own OpenSSL, and cffi), ``numpy`` and ``shapely_geos`` (zones),
  ``uvloop`` (0 unless asked for), ``openssl_system`` (the libssl/libcrypto of
  Python's ``ssl``: MQTT/TLS), ``python`` (libpython, stdlib extensions), ``heap``
  (anonymous: Python objects, malloc), ``other`` (libc, libstdc++, sqlite, ...).
  Baseline: the same part with encryption off.
* ``seal.daemon_modules``: how many modules the encrypted daemon has loaded (a short
  run of its own; baseline: encryption off). ``seal.floor_libraries``: a bare python -OO
  importing only the third-party modules that daemon loads (``bench_rss``'s list and
  AESGCM), no edge code, no data: what the libraries alone take of the 60 MB (baseline:
  the encrypted daemon). ``seal.floor_edge_imports``: the same plus edge's modules the
  daemon loads, still no data: what edge's code adds (issue 18's module diet).
* ``seal.daemon_rss_uvloop`` and ``seal.daemon_rss_unoptimized``: the encrypted daemon
  with the process knobs of ``edge.process`` at their other values (uvloop's event loop;
  not started over as ``python -OO``): what each default saves.

Each rate is the best of several alternating rounds (the machine is shared: the best
round is the least disturbed one, for both sides alike).
"""

from __future__ import annotations

import shutil
import statistics
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
# edge's modules the encrypted daemon loads beyond bench_rss.EDGE (seal.floor_edge_imports)
EDGE_ENCRYPTED = ("edge.seal", "edge.daemon.supervisor", "edge.forwarder", "edge.sources.dbc",
                  "edge.sources.zonesfile")


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
    from bench.bench_rss import (
        DAEMON_THIRD_PARTY,
        EDGE,
        GOAL_MB,
        PARTS,
        THING,
        import_rss,
        measure_daemon,
        median_import_rss,
        warm_bytecode,
    )
    from edge.process import LOOP_ENV, OPTIMIZE_ENV
    from edge.seal import keygen
    from tests.support.broker import Broker, Pki

    seconds = 10.0 if quick else 20.0
    rounds = 1 if quick else 3
    key = tmp / "daemon.key"
    keygen(key)
    extra = f'encryption = "aes-256-gcm"\nkey_file = "{key}"\n'
    pki = Pki.create([THING])
    broker = Broker(pki)
    broker.start()
    ons: list[dict[str, Any]] = []
    offs: list[dict[str, Any]] = []
    try:
        warm_bytecode(tmp, broker)
        for _ in range(rounds):  # alternating, so both sides see the same machine
            ons.append(measure_daemon(tmp, broker, seconds, outbox_extra=extra))
            offs.append(measure_daemon(tmp, broker, seconds))
        # the two process knobs (edge.process) at their other values, for comparison
        uvloop = measure_daemon(tmp, broker, seconds, outbox_extra=extra,
                                env={LOOP_ENV: "uvloop"})
        unoptimized = measure_daemon(tmp, broker, seconds, outbox_extra=extra,
                                     env={OPTIMIZE_ENV: "0"})
        listed = {enc: tmp / f"modules-{enc}.txt" for enc in (True, False)}
        for enc, out in listed.items():
            measure_daemon(tmp, broker, 3.0, outbox_extra=extra if enc else "",
                           modules_out=out)
        modules = {enc: len(out.read_text().split()) for enc, out in listed.items()}
    finally:
        broker.stop()
        shutil.rmtree(pki.dir, ignore_errors=True)
    for on in (*ons, uvloop, unoptimized):
        if not (on["health"].get("outbox") or {}).get("encryption"):
            raise RuntimeError(f"the daemon did not run with encryption on: {on['health']}")
    for run_, want in ((ons[0], {"optimize": 2, "event_loop": "asyncio"}),
                       (uvloop, {"optimize": 2, "event_loop": "uvloop"}),
                       (unoptimized, {"optimize": 0, "event_loop": "asyncio"})):
        if run_["health"].get("process") != want:
            raise RuntimeError(f"the daemon ran as {run_['health'].get('process')}, not {want}")

    def last_mb(run: dict[str, Any]) -> float:
        return float(run["rss_kb"][-1]) / 1024

    mb_on = statistics.median(last_mb(r) for r in ons)
    mb_off = statistics.median(last_mb(r) for r in offs)
    mb_uvloop, mb_unoptimized = last_mb(uvloop), last_mb(unoptimized)
    spread = (f"{min(map(last_mb, ons)):.1f}-{max(map(last_mb, ons)):.1f}" if rounds > 1
              else f"{mb_on:.1f}")
    bare, _ = import_rss(())
    aead, _ = import_rss(("cryptography.hazmat.primitives.ciphers.aead",))
    libs = (*DAEMON_THIRD_PARTY, "cryptography.hazmat.primitives.ciphers.aead")
    floor_libs, _ = median_import_rss(libs)
    floor_edge, _ = median_import_rss((*libs, *EDGE, *EDGE_ENCRYPTED))
    # where the encrypted daemon's resident memory is (the median round's)
    mid = sorted(ons, key=last_mb)[len(ons) // 2]
    mid_off = sorted(offs, key=last_mb)[len(offs) // 2]
    rows = [
        row("seal.daemon_rss", round(mb_on, 1), "MB", round(mb_off, 1),
            f"<= {GOAL_MB:g} MB after {seconds:g} s, encryption on (baseline: off);"
            f" median of {rounds} alternating rounds (on: {spread})",
            mb_on <= GOAL_MB),
        row("seal.daemon_rss_cost", round(mb_on - mb_off, 1), "MB", None,
            "what encryption adds to the daemon (medians, on - off)"),
        row("seal.daemon_modules", modules[True], "modules", modules[False],
            "loaded by the encrypted daemon (baseline: encryption off)"),
        row("seal.floor_libraries", round(floor_libs / 1024, 1), "MB", round(mb_on, 1),
            "bare python -OO importing only the daemon's third-party modules and AESGCM, no"
            " edge code, no data (median of 3; baseline: the encrypted daemon)"),
        row("seal.floor_edge_imports", round(floor_edge / 1024, 1), "MB",
            round(floor_libs / 1024, 1),
            "the same plus edge's modules the encrypted daemon loads, no data (baseline:"
            " the libraries alone)"),
        row("seal.daemon_rss_uvloop", round(mb_uvloop, 1), "MB", round(mb_on, 1),
            f"the same encrypted daemon with {LOOP_ENV}=uvloop (one run; baseline: the"
            " default, asyncio's loop)"),
        row("seal.daemon_rss_unoptimized", round(mb_unoptimized, 1), "MB", round(mb_on, 1),
            f"the same with {OPTIMIZE_ENV}=0: not started over as python -OO (one run;"
            " baseline: the default)"),
        row("seal.import_rss", round((aead - bare) / 1024, 1), "MB", None,
            "cryptography's AESGCM alone (imported only when encryption is on)"),
    ]
    for part in (*(name for name, _ in PARTS), "heap", "other"):
        kb, kb_off = mid["parts_kb"][part], mid_off["parts_kb"][part]
        rows.append(row(f"seal.daemon_rss.{part}", round(kb / 1024, 1), "MB",
                        round(kb_off / 1024, 1),
                        "resident, encryption on (baseline: off), from /proc/PID/smaps"))
    return rows


if __name__ == "__main__":
    import json

    for r in run(quick="--quick" in sys.argv):
        print(json.dumps(r))
