"""An encrypted outbox end to end: the real ``edge run`` offline with key A, killed
(-9, so the WAL is left as it was), the bytes on disk grepped, then restarted with a
rotated key (B, A kept in ``old_key_files``) against the real Mosquitto (mutual TLS):
every row sealed with A reaches the broker, new rows are sealed with B."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge.seal import key_id, keygen
from tests.conftest import THING
from tests.support.broker import Observer, PersistentBroker, Pki
from tests.support.chaos import wait_until
from tests.support.daemon import PtyFeeder, pending, start_daemon, stop, write_config

pytest.importorskip("cryptography")


@pytest.fixture
def pbroker(pki: Pki) -> object:
    b = PersistentBroker(pki)
    # the pki folder lives for the session: a broker of an earlier test on the same
    # port left its persistence (the observer's session with a full queue) behind
    (pki.dir / f"ps-{b.port}.db").unlink(missing_ok=True)
    b.start()
    yield b
    b.stop()


def rows(db: Path) -> int:
    """Rows in a running daemon's outbox, read without a checkpoint (``pending`` closes
    with one and would empty the WAL this test wants to look at)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def sealed_config(tmp: Path, broker: PersistentBroker, port: str, key: Path,
                  old: list[Path] | None = None) -> Path:
    cfg = write_config(tmp, broker, port)
    text = cfg.read_text().replace(
        "[outbox]\n",
        '[outbox]\nencryption = "aes-256-gcm"\n'
        f'key_file = "{key}"\n'
        f"old_key_files = {json.dumps([str(p) for p in old or []])}\n", 1)
    cfg.write_text(text)
    return cfg


def test_sealed_rows_survive_kill_and_key_rotation_and_drain_to_the_broker(
    tmp_path: Path, pbroker: PersistentBroker
) -> None:
    key_a, key_b = tmp_path / "a.key", tmp_path / "b.key"
    keygen(key_a)
    db = tmp_path / "outbox.db"
    # offline: everything the daemon makes stays in the outbox (no client has used this
    # broker yet: nothing for it to save)
    pbroker.stop(require_saved=False)
    feeder = PtyFeeder().start()
    obs: Observer | None = None
    try:
        proc = start_daemon(sealed_config(tmp_path, pbroker, feeder.path, key_a))
        try:
            assert wait_until(lambda: rows(db) >= 40, 30), (
                proc.stderr.read1().decode() if proc.stderr else "")
        finally:
            proc.kill()  # -9: the WAL stays as the daemon left it
            proc.wait()
        wal = db.with_name("outbox.db-wal")
        assert wal.stat().st_size > 0
        for f in (db, wal, db.with_name("outbox.db-shm")):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        disk = db.read_bytes() + wal.read_bytes()
        # the feeder's positions (48.1351 + i * 1e-4, 11.5820), the thing, VSS field names,
        # what health says about the car
        for secret in (THING.encode(), b"48.13", b"11.58", b"Vehicle.", b"Latitude",
                       b"\"speed", b"fixes"):
            assert secret not in disk, secret
        with sqlite3.connect(db) as con:
            old_ids = {i for (i,) in con.execute("SELECT id FROM messages")}
        assert len(old_ids) >= 40

        keygen(key_b)  # rotation: new key, the old one still read until drained
        pbroker.start()
        obs = Observer(pbroker)  # subscribed (SUBACK seen) before the daemon connects
        proc = start_daemon(sealed_config(tmp_path, pbroker, feeder.path, key_b, [key_a]))
        try:
            if not wait_until(lambda: old_ids <= set(obs.ids()), 60):
                proc.terminate()
                err = proc.communicate(timeout=15)[1].decode(errors="replace")
                from collections import Counter
                kinds = Counter((e.get("type"), str(e.get("id"))[:8]) for e in obs.envelopes)
                pytest.fail(f"{len(old_ids - set(obs.ids()))} of {len(old_ids)} not"
                            f" delivered; {len(obs.ids())} seen {kinds.most_common(8)}"
                            f" old {sorted(old_ids)[:3]}\n{err[-1500:]}")
            assert wait_until(lambda: (tmp_path / "health.json").exists(), 10)
            r = subprocess.run([sys.executable, "-m", "edge", "status", "-c",
                                str(tmp_path / "edge.toml")], capture_output=True, text=True,
                               timeout=60)
            status = json.loads(r.stdout)
            assert status["outbox"]["undecryptable"] == 0
            assert status["outbox"]["encryption"]["key_id"] == key_id(key_b.read_bytes()).hex()
            assert stat.S_IMODE((tmp_path / "health.json").stat().st_mode) == 0o600
        finally:
            pbroker.stop()  # what is made from now on stays: it must be sealed with B
            wait_until(lambda: pending(db) >= 5, 10)
            stop(proc)
    finally:
        feeder.close()
        if obs is not None:
            obs.close()
    delivered = [e for e in obs.envelopes if e["id"] in old_ids]
    assert {e["thing"] for e in delivered} == {THING}
    with sqlite3.connect(db) as con:
        kids = {bytes(p[1:5]) for (p,) in con.execute("SELECT payload FROM messages")}
    assert kids == {key_id(key_b.read_bytes())}


def test_a_key_file_others_can_read_stops_the_daemon_naming_it(
    tmp_path: Path, pbroker: PersistentBroker
) -> None:
    key = tmp_path / "open.key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o644)
    cfg = sealed_config(tmp_path, pbroker, "/dev/null", key)
    proc = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "outbox.key_file" in proc.stderr and str(key) in proc.stderr
