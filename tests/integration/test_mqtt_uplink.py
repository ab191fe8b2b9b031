"""paho uplink against the real Mosquitto (mutual TLS, per-thing ACL)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from edge.config import UplinkConfig
from edge.errors import PublishRejected, UplinkAuthError, UplinkError
from edge.forwarder import CONTENT_ENCODING, Forwarder, decompress
from edge.model import Envelope, Lane
from edge.outbox import Outbox
from edge.uplinks.mqtt import MqttUplink
from tests.conftest import OTHER, THING
from tests.support.broker import Broker, Pki, PropsSubscriber, Subscriber


def uplink_config(broker: Broker, **kw: Any) -> UplinkConfig:
    pki = broker.pki
    return UplinkConfig(kind="mqtt", endpoint="localhost", port=broker.port, ca=pki.ca,
                        cert=pki.cert(THING), key=pki.key(THING), connect_timeout_s=5.0,
                        **kw)


def telemetry(i: int) -> Envelope:
    return Envelope(id=f"t-{i:06d}", thing=THING, type="telemetry", ts=i, seq=i,
                    topic=f"vehicles/{THING}/telemetry", lane=Lane.TELEMETRY,
                    body={"Vehicle.Speed": 50.0 + i % 7})


@pytest.mark.parametrize("protocol", [5, 311])
def test_publish_is_acknowledged_with_mqtt5_and_311(
    broker: Broker, subscriber: Subscriber, protocol: int
) -> None:
    async def go() -> None:
        async with MqttUplink(uplink_config(broker, protocol=protocol), client_id=THING) as up:
            await up.publish(f"vehicles/{THING}/events/overspeed", b'{"id":"a1"}')
            # an empty subscription still succeeds (Mosquitto: 0x10 no matching subscribers)
            await up.publish(f"vehicles/{THING}/x/y", b'{"id":"a2"}')

    asyncio.run(go())
    assert subscriber.wait_for(lambda m: len(m) >= 2, timeout=10)
    assert [p for _, p in subscriber.messages] == [b'{"id":"a1"}', b'{"id":"a2"}']


def test_acl_denied_publish_is_rejected_with_reason_0x87(broker: Broker) -> None:
    async def go() -> int | None:
        async with MqttUplink(uplink_config(broker), client_id=THING) as up:
            with pytest.raises(PublishRejected) as err:
                await up.publish(f"vehicles/{OTHER}/telemetry", b"{}")
            # the connection stays usable
            await up.publish(f"vehicles/{THING}/telemetry", b"{}")
            return err.value.reason_code

    assert asyncio.run(go()) == 0x87


def test_local_limits_refuse_before_the_network(broker: Broker) -> None:
    async def go() -> None:
        async with MqttUplink(uplink_config(broker), client_id=THING) as up:
            for topic, payload in [("$aws/things/x/shadow/update", b"{}"),
                                   ("vehicles/" + "/".join("abcdefgh"), b"{}"),
                                   (f"vehicles/{THING}/telemetry", b"x" * (128 * 1024 + 1))]:
                with pytest.raises(PublishRejected):
                    await up.publish(topic, payload)

    asyncio.run(go())


def test_world_readable_key_is_refused(broker: Broker, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(broker.pki.key(THING).read_bytes())
    os.chmod(key, 0o644)
    cfg = dataclasses.replace(uplink_config(broker), key=key)

    async def go() -> None:
        async with MqttUplink(cfg, client_id=THING):
            pass

    with pytest.raises(UplinkAuthError, match="world-readable"):
        asyncio.run(go())
    os.chmod(key, 0o600)
    asyncio.run(go())  # the same key, private: accepted


def test_broker_gone_fails_pending_publishes_and_sets_lost(broker: Broker) -> None:
    async def go() -> None:
        async with MqttUplink(uplink_config(broker), client_id=THING) as up:
            await up.publish(f"vehicles/{THING}/telemetry", b"{}")
            await asyncio.to_thread(broker.stop)
            async with asyncio.timeout(10):
                await up.lost.wait()
            with pytest.raises(UplinkError):
                await up.publish(f"vehicles/{THING}/telemetry", b"{}")

    asyncio.run(go())


@pytest.mark.parametrize("method", ["gzip", "zstd"])
def test_forwarder_compressed_batches_with_content_encoding_and_drops_acl_denied(
    broker: Broker, tmp_path: Path, method: str
) -> None:
    if method == "zstd":
        pytest.importorskip("zstandard", reason="zstd needs the 'zstd' extra (zstandard)")
    ob = Outbox(tmp_path / "o.db")
    ob.put([telemetry(i) for i in range(300)])
    denied = Envelope(id="bad", thing=THING, type="overspeed", ts=0, seq=0,
                      topic=f"vehicles/{OTHER}/events/overspeed", lane=Lane.ALERT, body={})
    ob.put([denied])
    sub = PropsSubscriber(broker)
    fw = Forwarder(ob, thing=THING, batch_max=100, compression=method)

    async def go() -> None:
        wake = asyncio.Event()
        async with MqttUplink(uplink_config(broker), client_id=THING) as up:
            task = asyncio.create_task(fw.run(up, wake))
            async with asyncio.timeout(15):
                while ob.stats()["pending"]:
                    await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    try:
        asyncio.run(go())
        deadline = time.monotonic() + 5
        while len(sub.messages) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.close()
    st = ob.stats()
    ob.close()
    assert st["counters"]["rejected"] == 1  # dropped, not retried
    assert fw.health()["counters"]["rejected"] == 1
    assert st["counters"]["delivered"] == 300
    ids = []
    for topic, payload, props in sub.messages:
        assert topic == f"vehicles/{THING}/telemetry"
        assert props == {CONTENT_ENCODING: method}
        body = json.loads(decompress(payload, props[CONTENT_ENCODING]))
        assert body["type"] == "telemetry_batch"
        ids += [r["id"] for r in body["records"]]
    assert ids == [f"t-{i:06d}" for i in range(300)]  # FIFO, each once
    assert len(sub.messages) == 3


def test_unknown_ca_is_a_connect_error_not_a_hang(broker: Broker, tmp_path: Path) -> None:
    other = Pki.create([])
    cfg = dataclasses.replace(uplink_config(broker), ca=other.ca, connect_timeout_s=2.0)

    async def go() -> None:
        async with MqttUplink(cfg, client_id=THING):
            pass

    t0 = time.monotonic()
    with pytest.raises(UplinkError):
        asyncio.run(go())
    assert time.monotonic() - t0 < 4
