"""Store-and-forward end to end: the real ``edge run`` process, NMEA on a pty, the real
Mosquitto (mutual TLS, ACL) going away and coming back, ``kill -9``, a full disk.

The observer keeps a persistent MQTT 5 session on a broker with persistence on, so a
message the daemon got a PUBACK for while the observer was reconnecting still reaches
it: what the observer sees is what the broker accepted."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Observer, PersistentBroker, Pki
from tests.support.chaos import wait_until
from tests.support.daemon import PtyFeeder, pending, start_daemon, stop, write_config


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


def outbox_rows(path: Path) -> list[tuple[str, int, int]]:
    """(id, seq, state) of every row, read without recovering in-flight rows."""
    with sqlite3.connect(path) as db:
        return [(json.loads(p)["id"], int(json.loads(p)["seq"]), s)
                for p, s in db.execute("SELECT payload, state FROM messages")]


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
