"""A daemon under test: its GNSS receiver on a pty, its config, its process, and what
it wrote (the helpers of the system and hot-reload tests)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from edge.outbox import Outbox
from tests.conftest import THING
from tests.support.broker import Broker
from tests.support.nmea import T0, epoch
from tests.support.proc import die_with_parent

if TYPE_CHECKING:
    from edge.app import Daemon
    from edge.config import Config


class PtyFeeder:
    """The GNSS receiver's side of a pty: writes one epoch every ``period`` seconds."""

    def __init__(self, period: float = 0.05) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        os.close(slave)
        self.period = period
        self._stop = threading.Event()
        self.sent = 0
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PtyFeeder:
        self._t.start()
        return self

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            data = epoch(T0 + timedelta(seconds=i), 48.1351 + i * 1e-4, 11.5820, 36.0)
            try:
                os.write(self.master, data)
            except OSError:
                return
            self.sent += 1
            i += 1
            time.sleep(self.period)

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        os.close(self.master)


def write_config(tmp: Path, broker: Broker, gnss_port: str, extra: str = "") -> Path:
    cfg = tmp / "edge.toml"
    cfg.write_text(
        f'thing = "{THING}"\n'
        "[gnss]\n"
        f'port = "{gnss_port}"\n'
        "[outbox]\n"
        f'path = "{tmp / "outbox.db"}"\n'
        "[health]\ninterval_s = 1.0\n"
        "[log]\nformat = \"json\"\n"
        + broker.uplink_section(THING)
        + extra
    )
    return cfg


def start_daemon(cfg: Path) -> subprocess.Popen[bytes]:
    """``edge run --config cfg`` as a real process (stdout and stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent,
    )


def events(path: Path, kind: str) -> list[dict[str, object]]:
    """The records of ``kind`` a file uplink wrote to ``path`` (batches unpacked)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        p = json.loads(line)["payload"]
        for rec in p["records"] if p["type"] == "telemetry_batch" else [p]:
            if rec["type"] == kind:
                out.append(rec)
    return out


async def wait_until(pred: Callable[[], object], timeout: float = 10.0) -> bool:
    """Await ``pred()`` on the running loop, polling every 0.1 s; its last answer."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.1)
    return bool(pred())


def pending(path: Path) -> int:
    """Rows waiting in a running daemon's outbox (opened without recovering its
    in-flight rows: they are the daemon's)."""
    ob = Outbox(path, recover=False)
    try:
        return int(ob.stats()["pending"])
    finally:
        ob.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the daemon and assert a clean exit within 15 s (killed in any case)."""
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_until_health(cmd: list[str], *, env: dict[str, str], cwd: Path,
                     health: Path) -> tuple[dict[str, object], str, int]:
    """Run ``cmd`` (a daemon) until it writes ``health``, then SIGTERM it (it must exit
    0): its first health document, its command line as the kernel had it, its pid."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stderr=subprocess.PIPE,
                            preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 60
        while not health.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health.exists(), proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        body = json.loads(health.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return body, cmdline, proc.pid


def zones_file_uplink_config(tmp: Path, thing: str, gnss_port: str, sections: str = "") -> Path:
    """``tmp/edge.toml`` for a daemon reading ``gnss_port`` against the bundled city
    zones, publishing to a file, its health every 0.5 s in ``tmp/health.json``."""
    zones = Path(__file__).resolve().parents[2] / "sim" / "drives" / "city" / "zones.geojson"
    cfg = tmp / "edge.toml"
    cfg.write_text(
        f'thing = "{thing}"\n'
        f'[gnss]\nport = "{gnss_port}"\n'
        f'[rules]\nzones = "{zones}"\n'
        f'[uplink]\nkind = "file"\npath = "{tmp / "out.jsonl"}"\n'
        f'[health]\ninterval_s = 0.5\npath = "{tmp / "health.json"}"\n'
        '[log]\nformat = "json"\nlevel = "warning"\n' + sections)
    return cfg


def run_in_process(cfg: Config, feeder: PtyFeeder,
                   body: Callable[[Daemon, asyncio.Task[None]], Awaitable[None]], *,
                   ready: Callable[[], object], ready_s: float = 10.0,
                   setup: Callable[[Daemon], None] | None = None) -> None:
    """A daemon on ``cfg`` in this process: ``setup(daemon)`` before it runs, then, once
    ``ready()`` (within ``ready_s``), ``body(daemon, task)``; then it stops in order (its
    failure re-raised) and ``feeder`` closes."""
    from edge.app import Daemon

    async def scenario() -> None:
        d = Daemon(cfg)
        if setup is not None:
            setup(d)
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop))
        assert await wait_until(ready, ready_s)
        await body(d, task)
        stop.set()
        await task

    try:
        asyncio.run(scenario())
    finally:
        feeder.close()
