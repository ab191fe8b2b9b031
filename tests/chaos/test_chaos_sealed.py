"""The chaos ledger with ``[outbox] encryption`` on: kill -9 at random points of a
replay and a broker outage, every accepted alert delivered once or more, none invented;
the rows on disk sealed (the ledger's trigger sees ids, never payloads)."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.seal import is_sealed, keygen
from tests.chaos.conftest import Scale
from tests.chaos.test_chaos import Rig, _first_alert, _rig
from tests.support.broker import Broker
from tests.support.chaos import THING, Tally, wait_until

pytest.importorskip("cryptography")


@pytest.fixture
def sealed_rig(tmp_path: Path, broker: Broker, scale: Scale) -> Iterator[Rig]:
    for rig in _rig(tmp_path, broker, scale):
        key = tmp_path / "outbox.key"
        keygen(key)
        cfg = tmp_path / "edge.toml"
        cfg.write_text(cfg.read_text().replace(
            "[outbox]\n", f'[outbox]\nencryption = "aes-256-gcm"\nkey_file = "{key}"\n', 1))
        yield rig


def _all_sealed(db: Path) -> bool:
    with sqlite3.connect(db) as c:
        payloads = [bytes(p) for (p,) in c.execute("SELECT payload FROM messages")]
    return bool(payloads) and all(is_sealed(p) and THING.encode() not in p for p in payloads)


def test_kill9_and_an_outage_with_encryption_on(sealed_rig: Rig, scale: Scale,
                                                record_tally: list[Tally]) -> None:
    rig = sealed_rig
    rnd = random.Random(18)
    rig.feeder.start()
    rig.daemon.start()
    _first_alert(rig)
    rig.kill_and_restart(scale.kills, rnd, 0.05, 2.0)
    rig.net.down()  # offline: rows pile up, sealed
    assert wait_until(lambda: rig.ledger.pending_alerts() > 0, 30), rig.daemon.stderr_tail()
    assert _all_sealed(rig.ledger.db)
    assert wait_until(lambda: "outbox" in rig.health(), 10)
    outbox = rig.health()["outbox"]  # what the running daemon reports
    assert outbox["undecryptable"] == 0 and outbox["encryption"]["cipher"] == "aes-256-gcm"
    t = rig.finish("kill-9+outage sealed", record_tally, kills=rig.daemon.kills)
    assert rig.daemon.kills == scale.kills
    assert t.delivered == t.accepted
