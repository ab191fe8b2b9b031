"""Encryption at rest: sealed payloads and rule state, rotation, keys that do not fit."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge.config import config_from_dict
from edge.errors import ConfigError
from edge.model import Envelope, Lane
from edge.outbox import Outbox
from edge.seal import KeyFileError, Sealer, is_sealed, key_id, keygen

pytest.importorskip("cryptography")

THING = "car-7731"


def env(i: int, lane: Lane = Lane.TELEMETRY) -> Envelope:
    kind = "telemetry" if lane == Lane.TELEMETRY else "overspeed"
    topic = f"vehicles/{THING}/telemetry" if lane == Lane.TELEMETRY else \
        f"vehicles/{THING}/events/{kind}"
    return Envelope(id=f"0190-{i:04d}", thing=THING, type=kind, ts=i, seq=i, topic=topic,
                    lane=lane, body={"Vehicle.CurrentLocation.Latitude": 48.135117 + i * 1e-6,
                                     "zone": "Dr-Mueller-Strasse"})


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "keys" / "a.key", tmp_path / "keys" / "b.key"
    a.parent.mkdir(mode=0o700)
    keygen(a)
    keygen(b)
    return a, b


def raw(path: Path) -> bytes:
    out = b""
    for suffix in ("", "-wal"):
        p = path.with_name(path.name + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


def test_payloads_topics_and_state_are_not_on_disk_and_come_back_exact(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, sealer=Sealer(keys[0]))
    envs = [env(i) for i in range(5)] + [env(9, Lane.ALERT)]
    ob.put(envs, state={"rules": {"last": [48.135117, 11.58], "zone": "Dr-Mueller-Strasse"}})
    disk = raw(path)
    assert path.with_name("o.db-wal").stat().st_size > 0  # the WAL was looked at too
    for secret in (THING.encode(), b"48.1351", b"Latitude", b"Dr-Mueller", b"overspeed\""):
        assert secret not in disk, secret
    topics = {t for (t,) in sqlite3.connect(path).execute("SELECT topic FROM messages")}
    assert topics == {"vehicles/+/telemetry", "vehicles/+/events/overspeed"}
    rows = ob.claim(10)
    assert {(r.id, r.topic, r.payload) for r in rows} == {
        (e.id, e.topic, e.to_bytes()) for e in envs}
    assert ob.load_state()["rules"]["zone"] == "Dr-Mueller-Strasse"
    ob.close()


def test_a_payload_moved_to_another_row_does_not_open_and_is_kept(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, sealer=Sealer(keys[0]))
    ob.put([env(1), env(2), env(3)])
    with sqlite3.connect(path) as db:  # swap the sealed payloads of rows 1 and 2
        (p1,), (p2,) = db.execute("SELECT payload FROM messages ORDER BY seq LIMIT 2")
        db.execute("UPDATE messages SET payload = ? WHERE id = ?", (p2, "0190-0001"))
        db.execute("UPDATE messages SET payload = ? WHERE id = ?", (p1, "0190-0002"))
    with capture_logs() as logs:
        got = ob.claim(10)
    assert [r.id for r in got] == ["0190-0003"]
    assert ob.claim(10) == []  # not offered again, not deleted
    st = ob.stats()
    assert st["undecryptable"] == 2 and st["pending"] == 3
    assert st["lanes"]["telemetry"]["undecryptable"] == 2
    assert any("moved from another row" in e.get("reason", "") for e in logs)
    ob.close()


def test_rotation_old_rows_read_with_the_old_key_new_rows_sealed_with_the_new(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    a, b = keys
    path = tmp_path / "o.db"
    ob = Outbox(path, sealer=Sealer(a))
    ob.put([env(i) for i in range(3)])
    ob.close()
    ob = Outbox(path, sealer=Sealer(b, [a]))
    ob.put([env(i) for i in range(3, 6)])
    kids = [bytes(p[1:5]) for (p,) in sqlite3.connect(path).execute(
        "SELECT payload FROM messages ORDER BY seq")]
    assert kids == [key_id(a.read_bytes())] * 3 + [key_id(b.read_bytes())] * 3
    assert [r.id for r in ob.claim(10)] == [f"0190-{i:04d}" for i in range(6)]
    ob.close()


def test_a_missing_old_key_keeps_its_rows_until_it_is_back(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    a, b = keys
    path = tmp_path / "o.db"
    ob = Outbox(path, sealer=Sealer(a))
    ob.put([env(i, Lane.ALERT) for i in range(4)], state={"rules": {"x": 1}})
    ob.close()
    ob = Outbox(path, sealer=Sealer(b))  # rotated, but old_key_files forgotten
    with capture_logs() as logs:
        assert ob.claim(10) == []
        assert ob.load_state() == {}
    assert ob.stats()["undecryptable"] == 4
    assert any(str(b) in e.get("reason", "") for e in logs)  # names the key file
    ob.close()
    ob = Outbox(path, sealer=Sealer(b, [a]))  # the old key is back: every row is there
    assert len(ob.claim(10)) == 4 and ob.load_state() == {"rules": {"x": 1}}
    ob.close()


def test_plaintext_rows_from_before_encryption_still_drain(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path)
    ob.put([env(1)])
    ob.close()
    ob = Outbox(path, sealer=Sealer(keys[0]))
    ob.put([env(2)])
    rows = ob.claim(10)
    want = [(e.topic, e.to_bytes()) for e in (env(1), env(2))]
    assert [(r.topic, r.payload) for r in rows] == want
    ob.close()
    ob = Outbox(path)  # encryption switched off: sealed rows are kept, not sent
    assert [r.id for r in ob.claim(10)] == ["0190-0001"]
    assert ob.stats()["undecryptable"] == 1
    ob.close()


def test_key_files_must_be_private_and_exactly_32_bytes(tmp_path: Path) -> None:
    k = tmp_path / "k"
    with pytest.raises(KeyFileError, match=f"cannot read key file {k}"):
        Sealer(k)
    k.write_bytes(os.urandom(31))
    os.chmod(k, 0o600)
    with pytest.raises(KeyFileError, match=f"{k} holds 31 bytes, not 32"):
        Sealer(k)
    k.write_bytes(os.urandom(32))
    os.chmod(k, 0o640)
    with pytest.raises(KeyFileError, match=f"{k} is readable by other users"):
        Sealer(k)
    os.chmod(k, 0o400)
    Sealer(k)


def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "new.key"
    old = os.umask(0)
    try:
        r = subprocess.run([sys.executable, "-m", "edge", "outbox", "keygen", "--out", str(out)],
                           capture_output=True, text=True, timeout=60)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    key = out.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(out.stat().st_mode) == 0o600
    r = subprocess.run([sys.executable, "-m", "edge", "outbox", "keygen", "--out", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not overwritten" in r.stderr
    assert out.read_bytes() == key


def test_config_keys_and_their_errors(tmp_path: Path) -> None:
    base = {"thing": "t", "outbox": {"encryption": "aes-256-gcm", "key_file": "k",
                                     "old_key_files": ["k0", "k1"]}}
    cfg = config_from_dict(base, base=tmp_path)
    assert cfg.outbox.key_file == tmp_path / "k"
    assert cfg.outbox.old_key_files == (tmp_path / "k0", tmp_path / "k1")
    with pytest.raises(ConfigError, match=r"outbox\.key_file: required"):
        config_from_dict({"thing": "t", "outbox": {"encryption": "aes-256-gcm"}})
    with pytest.raises(ConfigError, match=r"outbox\.key_file: set outbox\.encryption"):
        config_from_dict({"thing": "t", "outbox": {"key_file": "k"}})
    with pytest.raises(ConfigError, match=r"outbox\.old_key_files: must be a list"):
        config_from_dict({"thing": "t", "outbox": {"encryption": "aes-256-gcm",
                                                   "key_file": "k", "old_key_files": "k0"}})
    with pytest.raises(ConfigError, match=r"health\.group: no group"):
        config_from_dict({"thing": "t", "health": {"group": "no-such-group-here"}})


def test_outbox_cli_reads_through_the_key_and_names_it_when_wrong(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    a, b = keys
    path = tmp_path / "o.db"
    ob = Outbox(path, sealer=Sealer(a))
    ob.put([env(i) for i in range(3)])
    ob.close()
    conf = tmp_path / "edge.toml"

    def run(action: str, key: Path) -> subprocess.CompletedProcess[str]:
        conf.write_text(f'thing = "{THING}"\n[outbox]\npath = "{path}"\n'
                        f'encryption = "aes-256-gcm"\nkey_file = "{key}"\n')
        return subprocess.run([sys.executable, "-m", "edge", "outbox", action, "-c", str(conf)],
                              capture_output=True, text=True, timeout=60)

    r = run("export", a)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["topic"] for x in lines] == [f"vehicles/{THING}/telemetry"] * 3
    assert lines[0]["payload"]["zone"] == "Dr-Mueller-Strasse"
    r = run("stats", a)
    st = json.loads(r.stdout)
    assert st["pending"] == 3 and st["encryption"]["key_id"] == key_id(a.read_bytes()).hex()
    r = run("export", b)
    assert r.returncode == 1 and str(b) in r.stderr and "3 sealed row(s)" in r.stderr
    r = run("export", tmp_path / "missing.key")
    assert r.returncode == 1 and str(tmp_path / "missing.key") in r.stderr


def test_cryptography_is_imported_only_when_encryption_is_on(tmp_path: Path) -> None:
    code = ("import sys; from edge.config import config_from_dict; import edge.app;"
            " from edge.outbox import Outbox;"
            f" Outbox.from_config(config_from_dict({{'thing': 't'}}, base=__import__('pathlib')"
            f".Path({str(tmp_path)!r})).outbox).close();"
            " print('cryptography' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
    assert not is_sealed(b'{"id": 1}')


def test_under_greengrass_the_key_comes_from_the_component_configuration(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    from edge.config_files import check_runtime
    from edge.greengrass.config import config_from_component

    work = tmp_path / "work"
    (work / "keys").mkdir(parents=True, mode=0o700)
    keygen(work / "keys" / "outbox.key")
    value = {"thing": "car", "outbox": {"encryption": "aes-256-gcm",
                                        "key_file": "keys/outbox.key",
                                        "old_key_files": [str(keys[0])]}}
    cfg = config_from_component(value, env={"VEHICLE_EDGE_WORK": str(work)})
    assert cfg.outbox.key_file == work / "keys" / "outbox.key"
    assert cfg.outbox.old_key_files == (keys[0],)
    check_runtime(cfg)
    os.chmod(work / "keys" / "outbox.key", 0o644)  # readable by other components' users
    with pytest.raises(ConfigError, match=r"outbox\.key_file: key file .* world-readable"):
        check_runtime(cfg)


def test_rows_no_key_opens_are_not_evicted_and_do_not_push_alerts_out(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    a, b = keys
    path = tmp_path / "o.db"
    ob = Outbox(path, sealer=Sealer(a), max_bytes=12_000)
    ob.put([env(i) for i in range(40)])  # ~10 KB of telemetry
    ob.close()
    ob = Outbox(path, sealer=Sealer(b), max_bytes=12_000)  # the old key is missing
    assert ob.claim(100) == []
    ob.put([env(100 + i, Lane.ALERT) for i in range(40)])  # over the cap but for the held rows
    st = ob.stats()
    assert st["undecryptable"] == 40 and st["lanes"]["alert"]["ready"] == 40
    assert not any(k.startswith("evicted_") for k in st["counters"])
    ob.close()
