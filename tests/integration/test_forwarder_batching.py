"""The forwarder's batched drain: many rows claimed per worker-thread hop, outcomes
settled many per transaction, and still: a row leaves only after its PUBACK, alerts
first, every claimed row settled or released when ``run`` returns, and no outbox write
on the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from edge.config import UplinkConfig
from edge.errors import UplinkError
from edge.forwarder import Forwarder
from edge.model import Envelope, Lane
from edge.outbox import Outbox, Row
from edge.uplinks.file import FileUplink
from edge.uplinks.mqtt import MqttUplink
from tests.conftest import THING
from tests.support.broker import Broker

TOPIC = f"vehicles/{THING}/telemetry"


def env(i: int, lane: Lane = Lane.TELEMETRY) -> Envelope:
    kind = "overspeed" if lane == Lane.ALERT else "telemetry"
    topic = f"vehicles/{THING}/events/overspeed" if lane == Lane.ALERT else TOPIC
    return Envelope(id=f"{kind}-{i:06d}", thing=THING, type=kind, ts=i, seq=i, topic=topic,
                    lane=lane, body={"Vehicle.Speed": 50.0, "i": i})


def uplink_config(b: Broker) -> UplinkConfig:
    return UplinkConfig(kind="mqtt", endpoint="localhost", port=b.port, ca=b.pki.ca,
                        cert=b.pki.cert(THING), key=b.pki.key(THING), connect_timeout_s=5.0)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def ids(path: Path) -> list[str]:
    """Record ids in publish order (a telemetry batch carries its records)."""
    out = []
    for line in lines(path):
        body = line["payload"]
        assert isinstance(body, dict)
        out += [str(r["id"]) for r in body.get("records", [body])]
    return out


def test_a_burst_of_1000_alerts_is_fully_acked(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(i, Lane.ALERT) for i in range(1000)])
    out = tmp_path / "out.jsonl"
    fw = Forwarder(ob, thing=THING, window=16)

    async def go() -> None:
        async with FileUplink(out) as up:
            task = asyncio.create_task(fw.run(up, asyncio.Event()))
            async with asyncio.timeout(30):
                while ob.stats()["pending"]:
                    await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    st = ob.stats()
    assert st["counters"]["delivered"] == 1000 and st["pending"] == 0
    assert fw.counters["published"] == 1000 and fw.counters["publish_batches"] == 1000
    got = sorted(ids(out))
    assert got == [f"overspeed-{i:06d}" for i in range(1000)]  # each exactly once
    assert ob.integrity_ok()
    ob.close()


def test_cancelled_run_settles_every_acked_row_and_releases_the_rest(
    tmp_path: Path, broker: Broker
) -> None:
    ob = Outbox(tmp_path / "o.db")
    n = 3000
    ob.put([env(i) for i in range(n)])
    # a long linger: most PUBACKed rows are still queued for the settler at the cancel
    fw = Forwarder(ob, thing=THING, batch_max=1, quota=False, settle_linger_s=0.5)

    async def go() -> None:
        async with MqttUplink(uplink_config(broker), client_id=THING) as up:
            task = asyncio.create_task(fw.run(up, asyncio.Event()))
            async with asyncio.timeout(30):
                while fw.counters["published"] < 300:
                    await asyncio.sleep(0.005)
            assert ob.stats()["lanes"]["telemetry"]["inflight"] > 0  # rows are staged
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    st = ob.stats()
    lane = st["lanes"]["telemetry"]
    assert lane["inflight"] == 0  # nothing left claimed
    # every PUBACKed row left (none sent twice later), every other one is ready again
    assert st["counters"]["delivered"] == fw.counters["published"]
    assert lane["ready"] == n - fw.counters["published"]
    left = [r.id for r in ob.iter_rows([Lane.TELEMETRY])]
    assert left == [f"telemetry-{i:06d}" for i in range(fw.counters["published"], n)]
    assert ob.integrity_ok()
    ob.close()


def test_connection_lost_mid_drain_raises_and_leaves_nothing_in_flight(
    tmp_path: Path, broker: Broker
) -> None:
    ob = Outbox(tmp_path / "o.db")
    n = 20_000
    ob.put([env(i) for i in range(n)])
    fw = Forwarder(ob, thing=THING, batch_max=1, quota=False)

    async def go() -> None:
        async with MqttUplink(uplink_config(broker), client_id=THING) as up:
            task = asyncio.create_task(fw.run(up, asyncio.Event()))
            async with asyncio.timeout(30):
                while fw.counters["published"] < 200:
                    await asyncio.sleep(0.005)
            await asyncio.to_thread(broker.stop)
            with pytest.raises(UplinkError):
                async with asyncio.timeout(15):
                    await task

    asyncio.run(go())
    st = ob.stats()
    lane = st["lanes"]["telemetry"]
    assert lane["inflight"] == 0
    assert st["counters"]["delivered"] == fw.counters["published"] < n
    assert lane["ready"] == n - fw.counters["published"]
    ob.close()


def test_a_new_alert_overtakes_the_staged_telemetry(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    n = 5000
    ob.put([env(i) for i in range(n)])
    out = tmp_path / "out.jsonl"
    fw = Forwarder(ob, thing=THING, batch_max=1, window=4)

    async def go() -> None:
        wake = asyncio.Event()
        async with FileUplink(out) as up:
            task = asyncio.create_task(fw.run(up, wake))
            async with asyncio.timeout(30):
                while fw.counters["published"] < 100:
                    await asyncio.sleep(0.002)
                await asyncio.to_thread(ob.put, [env(0, Lane.ALERT)])
                wake.set()  # what the daemon's writer does after a put
                while ob.stats()["pending"]:
                    await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    sent = ids(out)
    assert len(sent) == n + 1 and len(set(sent)) == n + 1
    at = sent.index("overspeed-000000")
    # it went out within a window or two of staged units, not after the backlog
    assert at < 100 + 4 * 4 + 64, at
    ob.close()


def test_settle_acks_rejects_and_releases_in_one_transaction(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    ob.put([env(i) for i in range(10)])
    rows = ob.claim(10)
    seqs = [r.seq for r in rows]
    ob.settle(acked=seqs[:4], rejected=seqs[4:6], released=seqs[6:])
    st = ob.stats()
    assert st["counters"]["delivered"] == 4 and st["counters"]["rejected"] == 2
    assert st["lanes"]["telemetry"] == {"ready": 4, "inflight": 0,
                                        "bytes": sum(len(r.payload) for r in rows[6:])}
    assert [r.seq for r in ob.claim(10)] == seqs[6:]  # released in their old place
    assert ob.integrity_ok()
    ob.close()


class ThreadNotingOutbox(Outbox):
    """A real outbox that notes which thread each claim and settlement ran on."""

    threads: list[tuple[str, int]]

    def claim(self, limit: int, *, lanes: Iterable[Lane] | None = None) -> list[Row]:
        self.threads.append(("claim", threading.get_ident()))
        return super().claim(limit, lanes=lanes)

    def settle(self, *, acked: Sequence[int] = (), rejected: Sequence[int] = (),
               released: Sequence[int] = ()) -> None:
        self.threads.append(("settle", threading.get_ident()))
        super().settle(acked=acked, rejected=rejected, released=released)


def test_no_sqlite_write_on_the_event_loop_and_health_counts_what_it_sent(
    tmp_path: Path
) -> None:
    ob = ThreadNotingOutbox(tmp_path / "o.db")
    ob.threads = []
    ob.put([env(i) for i in range(500)] + [env(i, Lane.ALERT) for i in range(20)])
    fw = Forwarder(ob, thing=THING, batch_max=10, window=4)
    loop_thread = 0

    async def go() -> None:
        nonlocal loop_thread
        loop_thread = threading.get_ident()
        async with FileUplink(tmp_path / "out.jsonl") as up:
            task = asyncio.create_task(fw.run(up, asyncio.Event()))
            async with asyncio.timeout(30):
                while ob.stats()["pending"] > 100:
                    await asyncio.sleep(0.005)
            task.cancel()  # mid-drain: the last settlement and the releases too
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())
    kinds = {k for k, _ in ob.threads}
    assert kinds == {"claim", "settle"}
    assert all(t != loop_thread for _, t in ob.threads), "an outbox write on the event loop"
    h = fw.health()
    st = ob.stats()
    assert h["counters"]["published"] == st["counters"]["delivered"] > 400
    assert h["counters"]["publish_batches"] < h["counters"]["published"]  # batched
    assert h["leased"] == 0 and st["lanes"]["telemetry"]["inflight"] == 0
    ob.close()
