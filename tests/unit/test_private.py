"""Private by default: what the daemon writes about the car is its user's alone."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge.model import Envelope, Lane
from edge.outbox import Outbox
from edge.private import PrivacyError, private_dir, tighten, write_status
from edge.uplinks.base import key_problem


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o000)  # files would be 0666, folders 0777
    try:
        yield
    finally:
        os.umask(old)


def env(i: int, lane: Lane = Lane.ALERT) -> Envelope:
    return Envelope(id=f"id-{i}", thing="car", type="overspeed", ts=i, seq=i,
                    topic="vehicles/car/events/overspeed", lane=lane, body={"n": i})


def test_outbox_wal_shm_and_reserve_are_0600_in_0700_folders_under_umask_0(
    tmp_path: Path, open_umask: None
) -> None:
    path = tmp_path / "var" / "lib" / "edge" / "outbox.db"
    ob = Outbox(path, reserve_bytes=64 * 1024)
    ob.put([env(i) for i in range(20)])
    files = [path, path.with_name("outbox.db-wal"), path.with_name("outbox.db-shm"),
             path.with_name("outbox.db.reserve")]
    for f in files:
        assert f.exists(), f
        assert mode(f) == 0o600, (f, oct(mode(f)))
    for d in (tmp_path / "var", tmp_path / "var" / "lib", path.parent):
        assert mode(d) == 0o700, (d, oct(mode(d)))
    ob.close()


def test_status_file_is_0600_and_a_configured_group_gets_0640(
    tmp_path: Path, open_umask: None
) -> None:
    p = tmp_path / "run" / "health.json"
    write_status(p, b"{}")
    assert mode(p) == 0o600 and mode(p.parent) == 0o700
    group = grp.getgrgid(os.getegid()).gr_name
    write_status(p, b'{"a": 1}', group=group)
    assert mode(p) == 0o640 and p.stat().st_gid == os.getegid()
    assert mode(p.parent) == 0o710  # the group reaches the file by name, lists nothing
    assert json.loads(p.read_text()) == {"a": 1}


def test_an_existing_open_outbox_is_tightened_and_logged_once(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    path = d / "outbox.db"
    path.write_bytes(b"")  # an empty database (SQLite creates it on first use)
    os.chmod(path, 0o644)
    with capture_logs() as logs:
        Outbox(path).close()
        os.chmod(path, 0o644)
        Outbox(path).close()  # tightened again, not logged again
    assert mode(path) == 0o600 and mode(d) == 0o700
    tightened = [e for e in logs if "tightened" in e["event"]]
    assert sorted(e["path"] for e in tightened) == sorted([str(d), str(path)])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_an_open_file_of_another_user_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    os.chmod(path, 0o644)
    os.chown(path, 4242, 4242)
    with pytest.raises(PrivacyError, match=f"{path}.*uid 4242"):
        Outbox(path)
    assert mode(path) == 0o644  # not touched


def test_a_file_of_another_user_refused_even_without_root(tmp_path: Path) -> None:
    # /etc/passwd: world-readable, root's; for a non-root user it is "another user's"
    if os.geteuid() == 0:
        pytest.skip("root owns /etc/passwd")
    with pytest.raises(PrivacyError, match="/etc/passwd"):
        tighten(Path("/etc/passwd"))


def test_private_dir_keeps_existing_parents_alone(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path) == 0o755  # not ours to decide
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700


def test_the_tls_key_check_and_the_private_check_are_one(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    os.chmod(key, 0o644)
    assert "world-readable" in (key_problem(key) or "")
    os.chmod(key, 0o640)
    assert key_problem(key) is None  # group-readable TLS keys stay allowed (Greengrass)


def test_edge_record_writes_a_private_drive(tmp_path: Path, open_umask: None) -> None:
    out = tmp_path / "drive"
    r = subprocess.run([sys.executable, "-m", "edge", "record", "--out", str(out),
                        "--can-interface", "virtual", "--can-channel", "rec-priv",
                        "--duration", "0.3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert mode(out) == 0o700
    written = sorted(p.name for p in out.iterdir())
    assert "drive.toml" in written and "can.log" in written
    for p in out.iterdir():
        assert mode(p) == 0o600, (p, oct(mode(p)))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_the_daemon_refuses_to_start_on_another_users_open_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    os.chmod(path, 0o644)
    os.chown(path, 4242, 4242)
    conf = tmp_path / "edge.toml"
    conf.write_text(f'thing = "car"\n[outbox]\npath = "{path}"\n[uplink]\nkind = "file"\n'
                    f'path = "{tmp_path / "out.jsonl"}"\n')
    r = subprocess.run([sys.executable, "-m", "edge", "run", "-c", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"{path} is readable by other users (mode 0644) and belongs to uid 4242" in r.stderr


def test_the_file_uplink_creates_its_file_private(tmp_path: Path, open_umask: None) -> None:
    import asyncio

    from edge.uplinks.file import FileUplink

    out = tmp_path / "sink" / "published.jsonl"

    async def publish() -> None:
        async with FileUplink(out) as up:
            await up.publish("vehicles/car/telemetry", b'{"a": 1}')

    asyncio.run(publish())
    assert mode(out) == 0o600 and mode(out.parent) == 0o700
    assert out.read_text().strip()
