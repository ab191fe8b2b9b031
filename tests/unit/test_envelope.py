from __future__ import annotations

import json
import uuid

import pytest

from edge.core.backoff import Backoff
from edge.core.envelope import EnvelopeFactory, topic_for
from edge.core.ratelimit import IotQuota
from edge.core.telemetry import batch_payload, split_batches
from edge.model import Event, Lane


def test_envelope_contract_and_sortable_ids() -> None:
    f = EnvelopeFactory("car-1")
    envs = [f.make(Event(kind="overspeed", time=1_700_000_000.0 + i, body={"phase": "start"},
                         lat=48.1, lon=11.5)) for i in range(50)]
    ids = [e.id for e in envs]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert all(uuid.UUID(i).version == 7 for i in ids)
    p = json.loads(envs[0].to_bytes())
    assert p["thing"] == "car-1" and p["type"] == "overspeed" and p["seq"] == 1
    assert p["ts"] == 1_700_000_000_000 and p["lat"] == 48.1
    assert envs[0].topic == "vehicles/car-1/events/overspeed" and envs[0].lane == Lane.ALERT


def test_seeded_factory_is_deterministic_and_flags_system_clock() -> None:
    a = EnvelopeFactory("car", seed=7).make(Event(kind="telemetry", time=1.0, clock="system"))
    b = EnvelopeFactory("car", seed=7).make(Event(kind="telemetry", time=1.0, clock="system"))
    assert a == b and a.body["clock"] == "system"


def test_topics_never_leave_the_thing_prefix() -> None:
    assert topic_for("c", "telemetry") == "vehicles/c/telemetry"
    assert topic_for("c", "health") == "vehicles/c/health"
    with pytest.raises(ValueError):
        topic_for("c", "$aws/things")


def test_backoff_is_capped_jittered_and_resets() -> None:
    b = Backoff(base_s=1, cap_s=8)
    delays = [b.next() for _ in range(10)]
    assert all(0.5 <= d <= 8 for d in delays) and max(delays) > 4
    b.reset()
    assert b.next() <= 1
    b.to_cap()
    assert b.next() >= 4


def test_iot_quota_holds_100_publishes_and_512kib_per_second() -> None:
    q = IotQuota.aws()
    t = 0.0
    sent = 0
    while t < 10.0:
        d = q.delay(t, 1024)
        if d == 0:
            sent += 1
        else:
            t += d
    assert 1000 <= sent <= 1100  # 100/s over 10 s plus the initial burst
    q = IotQuota.aws()
    t, sent_bytes = 0.0, 0
    while t < 10.0:
        d = q.delay(t, 100 * 1024)
        if d == 0:
            sent_bytes += 100 * 1024
        else:
            t += d
    assert sent_bytes <= 11 * 512 * 1024


def test_batch_wrapper_is_an_envelope_with_a_stable_id() -> None:
    f = EnvelopeFactory("car")
    recs = [f.make(Event(kind="telemetry", time=1_700_000_000.0 + i)).to_bytes()
            for i in range(10)]
    a = json.loads(batch_payload("car", recs))
    assert {"id", "thing", "type", "ts", "seq", "count", "records"} <= set(a)
    assert a["ts"] == 1_700_000_000_000 and a["seq"] == 1 and a["count"] == 10
    assert uuid.UUID(a["id"]).version == 7
    assert a["id"] not in {r["id"] for r in a["records"]}
    # the same batch sent again has the same id; another composition another one
    assert json.loads(batch_payload("car", recs))["id"] == a["id"]
    assert json.loads(batch_payload("car", recs[:9]))["id"] != a["id"]


def test_batches_respect_record_and_byte_limits() -> None:
    recs = [b'{"id":"x","ts":1,"seq":1,"x":"' + b"a" * 1000 + b'"}'] * 500
    groups = split_batches(recs, max_records=60, max_bytes=128 * 1024)
    assert sum(len(g) for g in groups) == 500
    for g in groups:
        payload = batch_payload("car", [recs[i] for i in g])
        assert len(payload) <= 128 * 1024 and len(g) <= 60
        assert json.loads(payload)["count"] == len(g)
