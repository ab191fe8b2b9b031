"""awscrt MQTT 5 uplink (the iotcore kind) against the real Mosquitto with mutual TLS.

awscrt reports a refused TLS handshake only after 10-30 s; the uplink applies its own
connect deadline, so the one negative test here takes ~connect_timeout_s."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.config import UplinkConfig
from edge.errors import PublishRejected, UplinkError
from edge.uplinks.iotcore import IotCoreUplink
from tests.conftest import OTHER, THING
from tests.support.broker import Broker, Pki, PropsSubscriber

pytest.importorskip("awscrt")
pytest.importorskip("awsiot")


def iot_config(broker: Broker, **kw: object) -> UplinkConfig:
    pki = broker.pki
    return UplinkConfig(kind="iotcore", endpoint="localhost", port=broker.port, ca=pki.ca,
                        cert=pki.cert(THING), key=pki.key(THING), connect_timeout_s=5.0,
                        **kw)  # type: ignore[arg-type]


def test_publish_puback_user_properties_and_acl_denial(broker: Broker) -> None:
    sub = PropsSubscriber(broker)

    async def go() -> int | None:
        async with IotCoreUplink(iot_config(broker), client_id=THING) as up:
            await up.publish(f"vehicles/{THING}/events/overspeed", b'{"id":"a1"}')
            await up.publish(f"vehicles/{THING}/telemetry", b"zz",
                             user_properties=[("content-encoding", "gzip")])
            with pytest.raises(PublishRejected) as err:
                await up.publish(f"vehicles/{OTHER}/telemetry", b"{}")
            with pytest.raises(PublishRejected):
                await up.publish("$aws/things/x/shadow/update", b"{}")
            await up.publish(f"vehicles/{THING}/health", b"{}")  # still connected
            return err.value.reason_code

    try:
        code = asyncio.run(go())
        deadline = time.monotonic() + 5
        while len(sub.messages) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.close()
    assert code == 0x87
    assert [(t, p) for t, p, _ in sub.messages] == [
        (f"vehicles/{THING}/events/overspeed", b'{"id":"a1"}'),
        (f"vehicles/{THING}/telemetry", b"zz"),
        (f"vehicles/{THING}/health", b"{}"),
    ]
    assert sub.messages[1][2] == {"content-encoding": "gzip"}


def test_broker_stopped_sets_lost_and_fails_publishes(broker: Broker) -> None:
    async def go() -> None:
        async with IotCoreUplink(iot_config(broker), client_id=THING) as up:
            await up.publish(f"vehicles/{THING}/telemetry", b"{}")
            await asyncio.to_thread(broker.stop)
            async with asyncio.timeout(10):
                await up.lost.wait()
            with pytest.raises(UplinkError):
                await up.publish(f"vehicles/{THING}/telemetry", b"{}")

    asyncio.run(go())


def test_untrusted_server_ca_fails_within_our_deadline(broker: Broker) -> None:
    other = Pki.create([])
    cfg = dataclasses.replace(iot_config(broker), ca=other.ca, connect_timeout_s=3.0)

    async def go() -> None:
        async with IotCoreUplink(cfg, client_id=THING):
            pass

    t0 = time.monotonic()
    with pytest.raises(UplinkError):
        asyncio.run(go())
    assert time.monotonic() - t0 < 9


def test_awscrt_is_not_imported_unless_iotcore_is_chosen(tmp_path: Path) -> None:
    code = ("import sys, edge.app, edge.uplinks.mqtt, edge.forwarder, edge.outbox;"
            "print(any(m.startswith(('awscrt', 'awsiot')) for m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
