"""Store-and-forward end to end: the real ``edge run`` process, NMEA on a pty, the real
Mosquitto (mutual TLS, ACL) going away and coming back, ``kill -9``, a full disk.

The observer keeps a persistent MQTT 5 session on a broker with persistence on, so a
message the daemon got a PUBACK for while the observer was reconnecting still reaches
it: what the observer sees is what the broker accepted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from edge.outbox import Outbox
from tests.support.broker import OBSERVER, Broker, Pki
from tests.system.test_daemon import PtyFeeder, start_daemon, write_config


class PersistentBroker(Broker):
    """A broker that keeps sessions and queued messages across restarts.

    Its configuration is written before the one and only mosquitto process starts: a
    throw-away broker without persistence must never listen on this port, even briefly,
    or the daemon may reconnect to it, get PUBACKs and see those messages vanish with
    it before the observer has reconnected. Started as root, mosquitto runs as its own
    user: the persistence folder is that user's, or mosquitto cannot save (it says
    "Permission denied" and forgets every session at the restart). ``stop`` checks that
    the database was written."""

    @property
    def store(self) -> Path:
        return self.pki.dir / f"mq-store-{self.port}"

    def write_conf(self) -> None:
        super().write_conf()
        self.store.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            import pwd

            with contextlib.suppress(KeyError):
                pw = pwd.getpwnam("mosquitto")
                os.chown(self.store, pw.pw_uid, pw.pw_gid)
        text = self.conf.read_text()
        assert "persistence false\n" in text
        self.conf.write_text(text.replace(
            "persistence false\n",
            f"persistence true\npersistence_location {self.store}/\n"
            "persistence_file ps.db\n"))

    def stop(self, timeout: float = 30.0) -> None:
        running = self.proc is not None and self.proc.poll() is None
        # a graceful stop saves the database: on a loaded machine that can outlast the
        # plain broker's 5 s, and a kill would lose what the test is about
        super().stop(timeout)
        if running:  # a broker that did not persist would lose the observer's session
            assert (self.store / "ps.db").exists(), f"mosquitto saved nothing in {self.store}"


class Observer:
    """Every envelope the broker accepted, across broker restarts (persistent session)."""

    def __init__(self, broker: Broker) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.envelopes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"obs-{broker.port}",
                        protocol=mqtt.MQTTv5)
        ctx = ssl.create_default_context(cafile=str(broker.pki.ca))
        ctx.load_cert_chain(str(broker.pki.cert(OBSERVER)), str(broker.pki.key(OBSERVER)))
        c.tls_set_context(ctx)
        c.reconnect_delay_set(0.1, 0.5)
        ready = threading.Event()
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("vehicles/#", qos=1)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("localhost", broker.port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        assert ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        with self._lock:
            self.envelopes.extend(body["records"] if "records" in body else [body])

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.envelopes)

    def ids(self) -> list[str]:
        with self._lock:
            return [str(e["id"]) for e in self.envelopes]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def pbroker(pki: Pki) -> Any:
    b = PersistentBroker(pki)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def feeder() -> Any:
    f = PtyFeeder().start()
    yield f
    f.close()


def pending(path: Path) -> int:
    """Rows waiting in a running daemon's outbox (opened without recovering its
    in-flight rows: they are the daemon's)."""
    ob = Outbox(path, recover=False)
    try:
        return int(ob.stats()["pending"])
    finally:
        ob.close()


def outbox_rows(path: Path) -> list[tuple[str, int, int]]:
    """(id, seq, state) of every row, read without recovering in-flight rows."""
    with sqlite3.connect(path) as db:
        return [(json.loads(p)["id"], int(json.loads(p)["seq"]), s)
                for p, s in db.execute("SELECT payload, state FROM messages")]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def missing_seqs(obs: Observer, remaining: list[tuple[str, int, int]]) -> tuple[list[int], int]:
    """Seqs below the highest one known that neither reached the observer nor are in
    the outbox, and that highest seq."""
    seqs = {int(e["seq"]) for e in obs.snapshot()} | {s for _, s, _ in remaining}
    top = max(seqs)
    return sorted(set(range(1, top + 1)) - seqs), top


def assert_no_gaps(obs: Observer, remaining: list[tuple[str, int, int]]) -> int:
    """Every envelope of this boot reached the observer or is still in the outbox.

    A message the broker acknowledged may still be on its way to the observer (a
    loaded machine, paho reconnecting after a broker restart): wait for that, bounded."""
    wait_until(lambda: not missing_seqs(obs, remaining)[0], 15)
    missing, top = missing_seqs(obs, remaining)
    assert not missing, missing[:20]
    return top


def wait_until(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_broker_stopped_mid_drive_then_flapping_every_id_delivered(
    tmp_path: Path, pbroker: PersistentBroker, feeder: PtyFeeder
) -> None:
    obs = Observer(pbroker)
    cfg = write_config(tmp_path, pbroker, feeder.path)
    proc = start_daemon(cfg)
    try:
        assert wait_until(lambda: len(obs.ids()) >= 10, 20)
        pbroker.stop()  # mid-drive: 3 s offline
        time.sleep(3.0)
        pbroker.start()
        for _ in range(3):  # then flapping: up ~1.5 s, down ~1 s
            time.sleep(1.5)
            pbroker.stop()
            time.sleep(1.0)
            pbroker.start()
        # broker back for good: the backlog drains
        assert wait_until(lambda: pending(tmp_path / "outbox.db") < 30, 20)
        stop(proc)
        remaining = outbox_rows(tmp_path / "outbox.db")
        top = assert_no_gaps(obs, remaining)
    finally:
        if proc.poll() is None:
            proc.kill()
        obs.close()
    assert top > 100
    assert not [s for _, _, s in remaining if s == 1]  # nothing left in flight


def test_kill9_mid_drive_then_restart_delivers_every_accepted_id(
    tmp_path: Path, pbroker: PersistentBroker, feeder: PtyFeeder
) -> None:
    obs = Observer(pbroker)
    cfg = write_config(tmp_path, pbroker, feeder.path)
    proc = start_daemon(cfg)
    try:
        assert wait_until(lambda: len(obs.ids()) >= 20, 20)
        proc.kill()
        proc.wait()
        rows = outbox_rows(tmp_path / "outbox.db")
        inflight = {i for i, _, s in rows if s == 1}
        # what the broker already accepted reaches the observer (waited for, bounded)
        assert_no_gaps(obs, rows)
        before = obs.ids()
        accepted = set(before) | {i for i, _, _ in rows}
        proc = start_daemon(cfg)
        assert wait_until(lambda: accepted <= set(obs.ids()), 20), (
            len(accepted - set(obs.ids())))
        # the second boot runs (and installed its signal handlers): new ids arrive
        assert wait_until(lambda: len(set(obs.ids()) - accepted) >= 5, 20)
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        obs.close()
    dupes = {i for i, n in Counter(obs.ids()).items() if n > 1}
    assert dupes <= inflight, dupes - inflight


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-capped tmpfs needs root")
def test_full_disk_keeps_the_daemon_running_and_loses_nothing_uncounted(
    tmp_path: Path, pbroker: PersistentBroker, feeder: PtyFeeder
) -> None:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"mount not permitted: {r.stderr.decode().strip()}")
    proc = None
    # the observer's persistent session exists before the daemon starts: what the daemon
    # publishes the moment the broker is back is queued for it, not missed
    obs = Observer(pbroker)
    try:
        pbroker.stop()  # offline: everything stays in the outbox
        cfg = write_config(tmp_path, pbroker, feeder.path)
        text = cfg.read_text().replace(f'path = "{tmp_path / "outbox.db"}"',
                                       f'path = "{mnt / "outbox.db"}"')
        cfg.write_text(text.replace("[health]\n", f'[health]\npath = "{tmp_path / "h.json"}"\n'))
        proc = start_daemon(cfg)
        assert wait_until(lambda: (mnt / "outbox.db").exists(), 10)
        time.sleep(1.0)
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # the disk fills up
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)

        def health() -> dict[str, Any]:
            try:
                return dict(json.loads((tmp_path / "h.json").read_text()))
            except (OSError, ValueError):
                return {}

        # the daemon says so: disk pressure in its health (and edge status)
        assert wait_until(lambda: bool((health().get("disk") or {}).get("pressure")), 15), (
            health().get("disk"))
        time.sleep(2.0)
        assert proc.poll() is None
        (mnt / "filler").unlink()  # space again, broker back
        pbroker.start()
        assert wait_until(lambda: health().get("outbox_mode") == "disk", 15)
        assert wait_until(lambda: pending(mnt / "outbox.db") < 30, 20)
        stop(proc)
        remaining = outbox_rows(mnt / "outbox.db")
        # nothing lost uncounted while the disk was full: telemetry and health may have
        # been evicted to make room (counted per lane), alerts never
        with sqlite3.connect(mnt / "outbox.db") as db:
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        assert counters.get("evicted_alert", 0) == 0, counters
        drops = sum(v for k, v in counters.items()
                    if k.startswith(("evicted_", "dropped_full_", "expired_")))
        drops += int(health().get("counters", {}).get("queue_dropped", 0))
        # what the broker acknowledged may still be on its way to the observer
        wait_until(lambda: len(missing_seqs(obs, remaining)[0]) <= drops, 15)
        missing, _ = missing_seqs(obs, remaining)
        assert len(missing) <= drops, (len(missing), counters)
    finally:
        obs.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
