"""Resident memory of the daemon with every source on: GNSS + CAN (DBC) + MQTT + zones.

* ``daemon_can.rss``: VmRSS of a real ``edge run`` process after ~20 s of traffic
  (10 s with ``--quick``): the bundled city drive (sim/drives/city/gnss.nmea) written
  into a GNSS pty at 10 epochs/s, VEHICLE_SPEED frames (sim/dbc/demo.dbc,
  VEHICLE_SPEED.SPEED_KMH) at 50 Hz plus ENGINE_1 and WHEEL_SPEEDS at 50 Hz each through
  a fake slcan adapter on a pty (sim/slcan.py; python-can's virtual bus cannot cross
  processes), alerts published to a real Mosquitto with mutual TLS, the bundled city
  zones. Goal <= 60 MB (the project bar). Baseline: a bare python importing the same
  third-party modules the daemon imports (no edge code, no data).
* ``daemon_can.rss_peak``: the highest of the per-second samples.
* ``daemon_can.rss_cantools_preloaded`` (full run only): the same daemon started by a
  wrapper that imports cantools and keeps the parsed DBC, as the daemon did before
  ``edge.core.dbcspec``: what not importing cantools saves.
* ``daemon_can.import_marginal.<module>``: what deferring one import would save, i.e.
  RSS of all the daemon's third-party imports minus RSS of all but that one (shared
  dependencies such as asyncio are counted once, where they are needed anyway).
* ``daemon_can.import_rss.<module>``: what each import costs alone (RSS over bare
  python, one process per module; overlapping), including modules the daemon must not
  load (cantools, awscrt, matplotlib, rich, colorama).

Run: ``python -m bench --only rss`` or ``python bench/bench_rss.py [--quick]``
(needs mosquitto and openssl).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

from bench import need_mosquitto, row, stop_process

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sim.slcan import SlcanPtyAdapter  # noqa: E402
from tests.support.broker import Broker, Pki  # noqa: E402
from tests.support.chaos import rss_kb, wait_until  # noqa: E402
from tests.support.proc import die_with_parent  # noqa: E402

GOAL_MB = 60.0
THING = "car-rss-1"
DRIVE = ROOT / "sim" / "drives" / "city"
DBC = ROOT / "sim" / "dbc" / "demo.dbc"
# third-party (and heavy stdlib) modules a GNSS + slcan + mqtt daemon has loaded
# (uvloop only with VEHICLE_EDGE_EVENT_LOOP=uvloop, edge.process)
DAEMON_THIRD_PARTY = ("asyncio", "ssl", "sqlite3", "structlog", "serial", "pynmea2",
                      "shapely", "paho.mqtt.client", "can", "can.interfaces.slcan")
EDGE = ("edge.cli", "edge.app", "edge.sources.gnss", "edge.sources.can", "edge.uplinks.mqtt",
        "edge.core.engine", "edge.core.zones", "edge.outbox")
# what each costs alone; the last ones must not be in the daemon
IMPORTS = (*DAEMON_THIRD_PARTY, "edge.cli", "edge.app", "edge.sources.can",
           "edge.core.canspeed", "cantools", "awscrt", "matplotlib", "rich", "colorama")
# resident memory of the daemon by what it belongs to (``rss_by_part``): the first
# part whose marker is in a mapping's path; anonymous memory is "heap"
PARTS = (
    ("cryptography", ("/cryptography/", "_cffi_backend")),
    ("numpy", ("/numpy/", "/numpy.libs/")),
    ("shapely_geos", ("/shapely/", "/shapely.libs/")),
    ("uvloop", ("/uvloop/",)),
    ("openssl_system", ("libssl.so", "libcrypto.so")),
    ("python", ("libpython", "/lib-dynload/")),
)
# the daemon, writing the names of the modules it loaded when it exits (``modules_out``):
# ``edge run ARGS`` runs as ``python -OO -m edge.daemon ARGS`` (edge.process), and this
# wrapper stays around it when it starts itself over
DUMP_MODULES = (
    "import atexit, runpy, sys\n"
    "out = sys.argv[1]\n"
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sorted(sys.modules))))\n"
    "sys.argv = ['edge.daemon', *sys.argv[3:]]  # without 'run'\n"
    "runpy.run_module('edge.daemon', run_name='__main__', alter_sys=True)\n"
)
PRELOAD = (
    "import runpy, sys, cantools\n"
    "_db = cantools.database.load_file(sys.argv[1])  # what the old decoder kept\n"
    "sys.argv = ['edge', *sys.argv[2:]]\n"
    "runpy.run_module('edge', run_name='__main__', alter_sys=True)\n"
)


def city_epochs() -> list[bytes]:
    """The city drive's NMEA, one chunk per epoch (an epoch starts at each RMC)."""
    out: list[bytes] = []
    cur: list[str] = []
    for line in (DRIVE / "gnss.nmea").read_text().splitlines():
        if not line.startswith("$"):
            continue
        if line[3:6] == "RMC" and cur:
            out.append(("\r\n".join(cur) + "\r\n").encode())
            cur = []
        cur.append(line)
    if cur:
        out.append(("\r\n".join(cur) + "\r\n").encode())
    return out


def _rmc_kmh(epoch: bytes) -> float:
    for line in epoch.decode().split("\r\n"):
        f = line.split(",")
        if line[3:6] == "RMC" and len(f) > 7 and f[7]:
            return float(f[7]) * 1.852
    return 0.0


class Traffic:
    """GNSS epochs into a pty at 10 Hz; CAN frames to the slcan adapter at 150 Hz."""

    def __init__(self, gnss_master: int, can: SlcanPtyAdapter) -> None:
        self.gnss_master = gnss_master
        self.can = can
        self.epochs = city_epochs()
        self.sent_epochs = 0
        self.sent_frames = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> Traffic:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)

    def _run(self) -> None:
        tick = 0
        kmh = 0.0
        nxt = time.monotonic()
        while not self._stop.is_set():
            if tick % 20 == 0:  # every 100 ms: one GNSS epoch
                ep = self.epochs[self.sent_epochs % len(self.epochs)]
                kmh = _rmc_kmh(ep)
                try:
                    os.write(self.gnss_master, ep)
                    self.sent_epochs += 1
                except OSError:
                    pass
            # every 5 ms one frame, in turn: speed (50 Hz), engine, wheels
            kind = tick % 3
            raw = min(65535, round(kmh * 100))
            if kind == 0:
                data = raw.to_bytes(2, "little") + b"\x01" + bytes(4) + bytes([tick % 16])
                ok = self.can.send(1001, data)
            elif kind == 1:
                data = (3000 * 4).to_bytes(2, "little") + bytes([40, 130, 3, 0, 0, 0])
                ok = self.can.send(416, data)
            else:
                ok = self.can.send(1200, raw.to_bytes(2, "little") * 4)
            self.sent_frames += bool(ok)
            tick += 1
            nxt += 1 / 150
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()


def _config(d: Path, broker: Broker, gnss: str, can_path: str, outbox_extra: str = "") -> Path:
    cfg = d / "edge.toml"
    cfg.write_text(
        f'thing = "{THING}"\n'
        f'[gnss]\nport = "{gnss}"\nreopen_max_s = 0.5\n'
        "[can]\n"
        'interface = "slcan"\n'
        f'channel = "{can_path}"\n'
        "bitrate = 500000\n"
        "slcan_open_delay_s = 0.1\n"
        f'dbc = "{DBC}"\n'
        'speed_signal = "VEHICLE_SPEED.SPEED_KMH"\n'
        f'[rules]\nzones = "{DRIVE / "zones.geojson"}"\n'
        "[rules.speed]\nlimit_kmh = 30\nmin_duration_s = 1\n"
        "[telemetry]\ninterval_s = 1\n"
        f'[outbox]\npath = "{d / "outbox.db"}"\n{outbox_extra}'
        f'[health]\ninterval_s = 1.0\npath = "{d / "health.json"}"\n'
        '[log]\nformat = "json"\nlevel = "warning"\n'
        + broker.uplink_section(THING)
    )
    return cfg


def rss_by_part(smaps: str) -> dict[str, int]:
    """Resident KiB of a process by part (``PARTS``, "heap", "other") from the text
    of its /proc/PID/smaps."""
    out = {name: 0 for name, _ in PARTS} | {"heap": 0, "other": 0}
    part = "other"
    for line in smaps.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else ""
            if not path or path in ("[heap]", "[stack]") or path.startswith("[anon"):
                part = "heap"  # malloc's heap, the main stack, anonymous mappings
            else:
                part = next((name for name, marks in PARTS
                             if any(m in path for m in marks)), "other")
        elif head and head[0] == "Rss:":
            out[part] += int(head[1])
    return out


def measure_daemon(tmp: Path, broker: Broker, seconds: float, *,
                   preload_cantools: bool = False, outbox_extra: str = "",
                   env: dict[str, str] | None = None,
                   modules_out: Path | None = None) -> dict[str, Any]:
    """RSS samples (KiB, one a second) of ``edge run`` under traffic, its health and
    its resident memory by part at the last sample (``rss_by_part``). With
    ``modules_out`` the daemon runs under ``DUMP_MODULES`` and writes there the modules
    it loaded (a run for counting them, not for its RSS)."""
    d = Path(tempfile.mkdtemp(prefix="run-", dir=tmp))
    master, slave = os.openpty()
    tty.setraw(slave)
    gnss = os.ttyname(slave)
    os.set_blocking(master, False)
    adapter = SlcanPtyAdapter(link=d / "ttyACM0")
    cfg = _config(d, broker, gnss, adapter.path, outbox_extra)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg-cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT),
                                                       os.environ.get("PYTHONPATH")))),
           **(env or {})}
    args = ["run", "--config", str(cfg)]
    cmd = ([sys.executable, "-c", PRELOAD, str(DBC), *args] if preload_cantools
           else [sys.executable, "-c", DUMP_MODULES, str(modules_out), *args] if modules_out
           else [sys.executable, "-m", "edge", *args])
    log = d / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=d,
                                preexec_fn=die_with_parent)
    traffic = Traffic(master, adapter)
    samples: list[int] = []
    try:
        if not adapter.wait_open(30):
            raise RuntimeError("the daemon did not open the slcan adapter: "
                               + log.read_text(errors="replace")[-2000:])
        traffic.start()
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            time.sleep(1.0)
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited: " + log.read_text(errors="replace")[-2000:])
            samples.append(rss_kb(proc.pid))
        smaps = Path(f"/proc/{proc.pid}/smaps").read_text()
        health_path = d / "health.json"
        wait_until(health_path.exists, 5)
        health = json.loads(health_path.read_text())
        return {"rss_kb": samples, "health": health, "epochs": traffic.sent_epochs,
                "frames": traffic.sent_frames, "parts_kb": rss_by_part(smaps)}
    finally:
        traffic.stop()
        stop_process(proc)
        adapter.close()
        os.close(master)
        os.close(slave)


def warm_bytecode(tmp: Path, broker: Broker) -> None:
    """A short daemon start that is not measured: a daemon caches its ``-OO`` bytecode in
    its cache folder (``edge.process``), and the bench's folder starts empty, so the
    first measured run would compile ~500 modules (holding ~1 MB more) where a deployed
    daemon loads them. Nothing to do where bytecode is not written
    (``PYTHONDONTWRITEBYTECODE``: ``make venv`` compiled it next to the sources)."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        measure_daemon(tmp, broker, 1.0)


def import_rss(modules: tuple[str, ...]) -> tuple[int, list[str]]:
    """VmRSS (KiB) of a fresh ``python -OO`` (as the daemon runs, ``edge.process``)
    after importing ``modules``; the ones missing."""
    code = ("import sys\nmissing = []\n"
            f"for m in {list(modules)!r}:\n"
            "    try: __import__(m)\n"
            "    except ImportError: missing.append(m)\n"
            "rss = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')]\n"
            "print(rss[0], ','.join(missing))")
    r = subprocess.run([sys.executable, "-OO", "-c", code], capture_output=True, text=True,
                       check=True, cwd=ROOT, timeout=120)
    kb, _, missing = r.stdout.strip().partition(" ")
    return int(kb), [m for m in missing.split(",") if m]


def median_import_rss(modules: tuple[str, ...], runs: int = 3) -> tuple[int, list[str]]:
    got = [import_rss(modules) for _ in range(runs)]
    return sorted(g[0] for g in got)[runs // 2], got[0][1]


def _check_traffic(run: dict[str, Any]) -> str | None:
    """Why the run does not count (no speed decoded, nothing published), or None."""
    h = run["health"]
    can = h.get("can", {})
    if can.get("samples", 0) <= 0:
        return f"no CAN speed samples (can health: {can})"
    if h.get("counters", {}).get("published", 0) <= 0 and h.get("uplink", {}).get(
            "state") != "connected":
        return f"uplink never published (health: {h.get('uplink')}, {h.get('counters')})"
    return None


def run(quick: bool = False) -> list[dict[str, Any]]:
    need_mosquitto()
    seconds = 10.0 if quick else 20.0
    tmp = Path(tempfile.mkdtemp(prefix="ve-bench-rss-"))
    pki = Pki.create([THING])
    broker = Broker(pki)
    broker.start()
    rows: list[dict[str, Any]] = []
    try:
        warm_bytecode(tmp, broker)
        now = measure_daemon(tmp, broker, seconds)
        why = _check_traffic(now)
        if why is not None:
            raise RuntimeError(why)
        bare_kb, _ = median_import_rss(())
        base_kb, missing = median_import_rss(DAEMON_THIRD_PARTY)
        last = now["rss_kb"][-1] / 1024
        peak = max(now["rss_kb"]) / 1024
        h = now["health"]
        rows += [
            row("daemon_can.rss", round(last, 1), "MB", round(base_kb / 1024, 1),
                 f"<= {GOAL_MB:g} MB after {seconds:g} s (GNSS + CAN dbc + mqtt + zones)",
                 last <= GOAL_MB),
            row("daemon_can.rss_peak", round(peak, 1), "MB", round(base_kb / 1024, 1),
                 f"<= {GOAL_MB:g} MB", peak <= GOAL_MB),
            row("daemon_can.can_samples", h.get("can", {}).get("samples", 0), "samples",
                 None, f"{now['frames']} frames sent, {now['epochs']} GNSS epochs"),
            row("daemon_can.published", h.get("counters", {}).get("published", 0),
                 "messages"),
            row("daemon_can.bare_python_rss", round(bare_kb / 1024, 1), "MB", None,
                 "missing: " + ",".join(missing) if missing else None),
        ]
        if not quick:
            old = measure_daemon(tmp, broker, seconds, preload_cantools=True)
            old_mb = old["rss_kb"][-1] / 1024
            rows.append(row("daemon_can.rss_cantools_preloaded", round(old_mb, 1), "MB",
                             round(last, 1), "before edge.core.dbcspec (for comparison)"))
        # what deferring one import would save: all third-party minus that one module
        for mod in DAEMON_THIRD_PARTY:
            if mod.startswith("can."):
                continue
            rest = tuple(m for m in DAEMON_THIRD_PARTY if m != mod and not
                         (mod == "can" and m.startswith("can.")))
            kb, _ = median_import_rss(rest)
            rows.append(row(f"daemon_can.import_marginal.{mod}",
                             round((base_kb - kb) / 1024, 1) + 0.0, "MB", None,
                             "RSS saved by not importing it (others loaded)"))
        edge_kb, _ = median_import_rss((*DAEMON_THIRD_PARTY, *EDGE))
        with_ct, _ = median_import_rss((*DAEMON_THIRD_PARTY, *EDGE, "cantools"))
        rows += [
            row("daemon_can.import_marginal.edge", round((edge_kb - base_kb) / 1024, 1), "MB",
                 None, "edge's own modules on top of the third-party ones"),
            row("daemon_can.import_marginal.cantools", round((with_ct - edge_kb) / 1024, 1),
                 "MB", None, "what importing cantools would add (not imported any more)"),
        ]
        for mod in IMPORTS:
            kb, miss = import_rss((mod,))
            if miss:
                rows.append(row(f"daemon_can.import_rss.{mod}", None, "MB", None,
                                 "not installed"))
                continue
            rows.append(row(f"daemon_can.import_rss.{mod}", round((kb - bare_kb) / 1024, 1),
                             "MB"))
    finally:
        broker.stop()
        shutil.rmtree(pki.dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(json.dumps(r))
