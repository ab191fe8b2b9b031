"""GreengrassUplink and GreengrassConfigWatcher against an eventstream IPC server written
in the test suite, with awsiotsdk's real GreengrassCoreIPCClientV2 on the other side."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

pytest.importorskip("awsiot.greengrasscoreipc.clientv2")

from edge.config import Config, changed_sections
from edge.core.backoff import Backoff
from edge.errors import (
    ConfigError,
    PublishFailed,
    PublishRejected,
    UplinkAuthError,
    UplinkError,
)
from edge.forwarder import Forwarder
from edge.greengrass.config import (
    GreengrassConfigWatcher,
    component_config_to_dict,
    config_from_component,
)
from edge.greengrass.uplink import (
    LITE_MAX_MESSAGE,
    LITE_MAX_PAYLOAD,
    GreengrassUplink,
    ipc_message_size,
)
from edge.model import Envelope, Lane
from edge.outbox import Outbox
from edge.uplinks.base import MAX_PAYLOAD
from tests.support.ggipc_server import GgIpcServer, thing_topic_policy

THING = "car-0001"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # unix socket paths are limited to ~107 bytes: keep it short, not under tmp_path
    with tempfile.TemporaryDirectory(prefix="gg") as d:
        yield Path(d)


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 30.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(main())


def server(sock_dir: Path, *, lite: bool = False, **kw: Any) -> GgIpcServer:
    """Named as nucleus classic's socket (``ipc.socket``), or lite's (``gg-ipc.socket``,
    with lite's 10,000-byte message cap)."""
    kw.setdefault("may_publish", thing_topic_policy(THING))
    srv = GgIpcServer(sock_dir / ("gg-ipc.socket" if lite else "ipc.socket"), **kw)
    if lite:
        srv.max_message = LITE_MAX_MESSAGE
    return srv


def uplink_for(srv: GgIpcServer, **kw: Any) -> GreengrassUplink:
    return GreengrassUplink(ipc_socket=str(srv.path), authtoken=srv.svcuid, **kw)


# --------------------------------------------------------------------------- uplink


def test_publish_reaches_nucleus_with_qos_and_user_properties(sock_dir: Path) -> None:
    async def body() -> None:
        async with server(sock_dir) as srv, uplink_for(srv) as up:
            payload = json.dumps({"id": "01J", "type": "overspeed"}).encode()
            await up.publish(f"vehicles/{THING}/events/overspeed", payload,
                             user_properties=[("content-encoding", "gzip")])
            await up.publish(f"vehicles/{THING}/telemetry", b"{}", qos=0)
            assert [(p.topic, p.payload, p.qos) for p in srv.published] == [
                (f"vehicles/{THING}/events/overspeed", payload, "1"),
                (f"vehicles/{THING}/telemetry", b"{}", "0"),
            ]
            assert srv.published[0].user_properties == [("content-encoding", "gzip")]

    run(body)


def test_publish_uses_env_like_a_component(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body() -> None:
        async with server(sock_dir) as srv:
            for k, v in srv.env.items():
                monkeypatch.setenv(k, v)
            async with GreengrassUplink() as up:
                await up.publish(f"vehicles/{THING}/health", b"{}")
            assert len(srv.published) == 1

    run(body)


def test_unauthorized_topic_is_rejected_and_connection_survives(sock_dir: Path) -> None:
    async def body() -> None:
        async with server(sock_dir) as srv, uplink_for(srv) as up:
            with pytest.raises(PublishRejected, match="not authorized"):
                await up.publish("vehicles/other-car/events/poi", b"{}")
            await up.publish(f"vehicles/{THING}/events/poi", b"{}")
            assert [p.topic for p in srv.published] == [f"vehicles/{THING}/events/poi"]

    run(body)


def test_local_limits_rejected_before_ipc(sock_dir: Path) -> None:
    async def body() -> None:
        async with server(sock_dir) as srv, uplink_for(srv) as up:
            for topic in ("$aws/things/x/shadow/update", "vehicles/+/x",
                          "a/b/c/d/e/f/g/h/i"):
                with pytest.raises(PublishRejected):
                    await up.publish(topic, b"{}")
            with pytest.raises(PublishRejected, match="over"):
                await up.publish(f"vehicles/{THING}/telemetry", b"x" * (MAX_PAYLOAD + 1))
            with pytest.raises(PublishRejected):
                await up.publish(f"vehicles/{THING}/telemetry", b"{}", qos=2)
            await up.publish(f"vehicles/{THING}/telemetry", b"x" * MAX_PAYLOAD)
            assert len(srv.published) == 1
            assert "PublishToIoTCore" in srv.operations

    run(body)


def test_nucleus_offline_error_is_transient(sock_dir: Path) -> None:
    """Nucleus lite answers at once with an error when offline: retry later, not drop."""

    async def body() -> None:
        async with server(sock_dir) as srv, uplink_for(srv) as up:
            srv.publish_service_error = "Failed to publish: not connected to AWS IoT Core"
            with pytest.raises(PublishFailed):  # the message again later, same connection
                await up.publish(f"vehicles/{THING}/events/geofence", b"{}")
            assert up.connected
            srv.publish_service_error = None
            await up.publish(f"vehicles/{THING}/events/geofence", b"{}")
            assert len(srv.published) == 1

    run(body)


def test_lite_message_size_is_the_frame_on_the_wire(sock_dir: Path) -> None:
    """On lite the whole IPC frame (payload base64 in JSON) must fit 10,000 bytes after
    its prelude. The size we compute is the size awscrt writes, to the byte; what does
    not fit is rejected before sending (lite would reset the connection)."""
    topic = f"vehicles/{THING}/telemetry"

    def fitting() -> int:  # the largest payload that fits: measured against our formula
        n = LITE_MAX_PAYLOAD
        while ipc_message_size(topic, b"x" * (n + 1)) - 12 <= LITE_MAX_MESSAGE:
            n += 1
        return n

    async def body() -> None:
        async with server(sock_dir, lite=True) as srv, uplink_for(srv) as up:
            assert up.lite and up.max_payload == LITE_MAX_PAYLOAD
            n = fitting()
            await up.publish(topic, b"x" * n)
            (pub,) = srv.published
            assert pub.frame_size == ipc_message_size(topic, b"x" * n)
            assert pub.frame_size - 12 > LITE_MAX_MESSAGE - 4  # full to the base64 quantum
            with pytest.raises(PublishRejected, match="nucleus lite's 10000 B"):
                await up.publish(topic, b"x" * (n + 1))
            await up.publish(topic, b"y" * LITE_MAX_PAYLOAD)  # the connection survived
            assert srv.resets == 0 and len(srv.published) == 2
        # the fake nucleus resets like lite does for a frame that is too big
        async with server(sock_dir, lite=True) as srv:
            big = GreengrassUplink(ipc_socket=str(srv.path), authtoken=srv.svcuid)
            big.max_message = None  # as the old uplink: no size check
            async with big:
                with pytest.raises(UplinkError):
                    await big.publish(topic, b"x" * (n + 1))
            assert srv.resets == 1

    run(body)


def telemetry(i: int) -> Envelope:
    """A telemetry row of ~430 B, as the daemon writes them."""
    body = {"Vehicle.Speed": 48.25, "speed_source": "can",
            "Vehicle.CurrentLocation.Latitude": 48.1351253,
            "Vehicle.CurrentLocation.Longitude": 11.5819806,
            "Vehicle.CurrentLocation.Altitude": 519.4, "Vehicle.CurrentLocation.Heading": 87.5,
            "Vehicle.CurrentLocation.GNSSReceiver.FixType": "THREE_D",
            "gnss": {"valid": True, "hdop": 0.9, "sats": 11}, "pad": "p" * 5}
    return Envelope(id=f"0190a1b2-c3d4-7e5f-8a9b-{i:012d}", thing=THING, type="telemetry",
                    ts=1_780_000_000_000 + i, seq=i, topic=f"vehicles/{THING}/telemetry",
                    lane=Lane.TELEMETRY, body=body)


def test_forwarder_through_lite_sizes_batches_and_backs_off_without_reconnecting(
    sock_dir: Path, tmp_path: Path
) -> None:
    """Lite offline answers every PublishToIoTCore with ServiceError: the rows stay, the
    same connection is retried with a capped, jittered backoff (not a reconnect loop),
    and nothing leaves an unretrieved future behind. Back online, 120 records of ~430 B
    go out in batches that each fit lite's 10,000-byte IPC message."""
    import gc
    import random

    ob = Outbox(tmp_path / "o.db")
    ob.put([telemetry(i) for i in range(120)])
    assert 400 < len(ob.claim(1, lanes=(Lane.TELEMETRY,))[0].payload) < 480
    ob.recover_inflight()
    loop_errors: list[dict[str, Any]] = []

    async def body() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, c: loop_errors.append(c))
        async with server(sock_dir, lite=True) as srv:
            srv.publish_service_error = "Failed to publish the message."
            fw = Forwarder(ob, thing=THING, window=8,
                           retry=Backoff(base_s=0.05, cap_s=0.2, rng=random.Random(7)))
            async with uplink_for(srv) as up:
                task = asyncio.create_task(fw.run(up, asyncio.Event()))
                await asyncio.sleep(1.5)
                assert not task.done()
                assert ob.stats()["pending"] == 120  # all kept
                fails = fw.counters["publish_failures"]
                # the first 8 in flight fail together, then one probe per backoff step
                # (0.05 s doubling to 0.2 s, jittered >= half): <= ~14 more in 1.5 s
                assert 3 <= fails <= 8 + 16, fails
                srv.publish_service_error = None  # back online
                async with asyncio.timeout(10):
                    while ob.stats()["pending"]:
                        await asyncio.sleep(0.05)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert srv.connects == 1 and srv.resets == 0
            got = [json.loads(p.payload) for p in srv.published]
            assert sorted(r["id"] for b in got for r in b["records"]) == [
                telemetry(i).id for i in range(120)]
            assert len(got) >= 120 * 430 // LITE_MAX_PAYLOAD  # split by bytes, not count
            for p in srv.published:
                assert len(p.payload) <= LITE_MAX_PAYLOAD
                assert p.frame_size - 12 <= LITE_MAX_MESSAGE
        gc.collect()

    run(body)
    assert not loop_errors, loop_errors
    ob.close()


def test_a_cancelled_publish_leaves_no_unretrieved_future(sock_dir: Path) -> None:
    """A publish cancelled in flight (the forwarder stops its workers when it gives up a
    connection), then the connection closes: awsiotsdk fails the IPC future with
    StreamClosedError, which must not surface as "Future exception was never retrieved"."""
    import gc

    loop_errors: list[dict[str, Any]] = []

    async def body() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, c: loop_errors.append(c))
        async with server(sock_dir) as srv:
            srv.publish_delay_s = 5.0
            async with uplink_for(srv) as up:
                task = asyncio.create_task(up.publish(f"vehicles/{THING}/telemetry", b"x"))
                await asyncio.sleep(0.3)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.sleep(0.3)
            gc.collect()
            await asyncio.sleep(0.1)

    run(body)
    # (the fake nucleus' own serving task, cancelled while it sleeps, is not our concern)
    assert not [c for c in loop_errors if "never retrieved" in c["message"]], loop_errors


def test_classic_socket_keeps_the_iot_core_limit() -> None:
    up = GreengrassUplink(ipc_socket="/greengrass/v2/ipc.socket", authtoken="t")
    assert not up.lite and up.max_payload == MAX_PAYLOAD and up.max_message is None
    up = GreengrassUplink(ipc_socket="/var/lib/greengrass/gg-ipc.socket", authtoken="t")
    assert up.lite and up.max_payload == LITE_MAX_PAYLOAD < 7300


def test_server_closing_raises_uplink_error_then_reconnect_works(sock_dir: Path) -> None:
    async def body() -> None:
        srv = server(sock_dir)
        await srv.start()
        up = uplink_for(srv)
        async with up:
            await up.publish(f"vehicles/{THING}/telemetry", b"1")
            await srv.stop()
            with pytest.raises(UplinkError) as info:
                await up.publish(f"vehicles/{THING}/telemetry", b"2")
            assert not isinstance(info.value, PublishRejected)
        # nucleus not listening: entering fails with UplinkError, never a library error
        with pytest.raises(UplinkError):
            async with up:
                pass
        await srv.start()
        async with up:  # the caller's reconnect loop re-enters the same uplink
            await up.publish(f"vehicles/{THING}/telemetry", b"3")
        await srv.stop()
        assert [p.payload for p in srv.published] == [b"1", b"3"]

    run(body)


def test_in_flight_publish_fails_when_nucleus_drops(sock_dir: Path) -> None:
    async def body() -> None:
        async with server(sock_dir) as srv, uplink_for(srv) as up:
            srv.publish_delay_s = 5.0
            task = asyncio.create_task(up.publish(f"vehicles/{THING}/telemetry", b"x"))
            await asyncio.sleep(0.3)
            srv.drop_connections()
            with pytest.raises(UplinkError):
                async with asyncio.timeout(3):
                    await task

    run(body)


def test_an_idle_forwarder_notices_the_nucleus_connection_drop(
    sock_dir: Path, tmp_path: Path
) -> None:
    """The uplink declares ``lost`` (the Uplink protocol): a forwarder with nothing to
    send gives the connection up as soon as the nucleus drops it, not at the next
    publish, so the daemon reconnects at once."""
    ob = Outbox(tmp_path / "o.db")

    async def body() -> None:
        async with server(sock_dir) as srv:
            async with uplink_for(srv) as up:
                assert not up.lost.is_set()
                task = asyncio.create_task(Forwarder(ob, thing=THING).run(up, asyncio.Event()))
                await asyncio.sleep(0.3)
                assert not task.done()
                srv.drop_connections()
                with pytest.raises(UplinkError):
                    async with asyncio.timeout(3):
                        await task
                assert up.lost.is_set()

    run(body)
    ob.close()


def test_wrong_svcuid_is_auth_error(sock_dir: Path) -> None:
    async def body() -> None:
        async with server(sock_dir) as srv:
            with pytest.raises(UplinkAuthError):
                async with GreengrassUplink(ipc_socket=str(srv.path), authtoken="wrong"):
                    pass

    run(body)


def test_no_ipc_environment_is_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", raising=False)

    async def body() -> None:
        with pytest.raises(UplinkError, match="AWS_GG_NUCLEUS_DOMAIN_SOCKET"):
            async with GreengrassUplink():
                pass

    run(body)


# --------------------------------------------------------------------------- config

BASE_CONFIG: dict[str, Any] = {
    "thing": "",
    "uplink": {"kind": "greengrass"},
    "telemetry": {"interval_s": 1.0, "batch_max": 60.0},
    "gnss": {"port": None, "baud": 9600.0},
    "accessControl": {"aws.greengrass.ipc.mqttproxy": {}},
}


def test_component_config_to_dict_mirrors_toml() -> None:
    d = component_config_to_dict(BASE_CONFIG, env={"AWS_IOT_THING_NAME": THING})
    assert d == {
        "thing": THING,
        "uplink": {"kind": "greengrass"},
        "telemetry": {"interval_s": 1, "batch_max": 60},
        "gnss": {"baud": 9600},
    }
    cfg = config_from_component(BASE_CONFIG, base=Path("/tmp"), env={"AWS_IOT_THING_NAME": THING})
    assert cfg.thing == THING and cfg.telemetry.batch_max == 60 and cfg.gnss.port is None
    with pytest.raises(ConfigError, match=r"uplink\.kind"):
        config_from_component({**BASE_CONFIG, "uplink": {"kind": "carrier-pigeon"}},
                              env={"AWS_IOT_THING_NAME": THING})


def test_strings_from_a_yaml_recipe_read_as_the_numbers_they_are() -> None:
    """Nucleus lite stores the scalars of a YAML recipe or deployment as strings
    (``baud: 9600`` -> ``"9600"``): where a key wants a number or a boolean, a string
    that reads as one is taken; strings stay strings where the key is text."""
    value = {"gnss": {"baud": "9600", "port": "/dev/ttyACM0", "max_hdop": "2.5"},
             "can": {"channel": "123", "bitrate": " 250000 ", "fd": "true"},
             "uplink": {"kind": "greengrass", "protocol": "311", "port": "8883"},
             "rules": {"speed": {"limit_kmh": "50"}}, "log": {"events": "False"}}
    cfg = config_from_component(value, env={"AWS_IOT_THING_NAME": THING})
    assert (cfg.gnss.baud, cfg.gnss.max_hdop, cfg.gnss.port) == (9600, 2.5, "/dev/ttyACM0")
    assert (cfg.can.channel, cfg.can.bitrate, cfg.can.fd) == ("123", 250000, True)
    assert (cfg.uplink.protocol, cfg.uplink.port) == (311, 8883)
    assert cfg.rules.speed.limit_kmh == 50 and cfg.log.events is False
    # what does not read as one is still an error naming the key
    for bad, field in (({"gnss": {"baud": "fast"}}, "gnss.baud"),
                       ({"uplink": {"protocol": "4"}}, "uplink.protocol"),
                       ({"log": {"events": "yes"}}, "log.events")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            config_from_component(bad, env={"AWS_IOT_THING_NAME": THING})


def test_zones_come_from_the_zones_component_when_config_leaves_them_unset(
    sock_dir: Path, tmp_path: Path
) -> None:
    """The Daemon recipe exports VEHICLE_EDGE_ZONES={com.vehicleedge.Zones:work:path}/...;
    the file need not exist yet (the daemon's zones watcher loads it when it appears)."""
    zones = tmp_path / "com.vehicleedge.Zones" / "zones.geojson"  # not created
    env = {"AWS_IOT_THING_NAME": THING, "VEHICLE_EDGE_ZONES": str(zones)}
    mine = tmp_path / "mine.geojson"

    async def body() -> None:
        applied = Applied()
        # rules.zones null, as in the rendered DefaultConfiguration
        start = {**BASE_CONFIG, "rules": {"zones": None, "poi": {"max_per_hour": 2}}}
        async with server(sock_dir, configuration=start) as srv:
            async with GreengrassConfigWatcher(
                on_config=applied, ipc_socket=str(srv.path), authtoken=srv.svcuid, env=env,
                base=tmp_path,
            ) as w:
                assert w.config.rules.zones == zones
                assert w.config.rules.poi.max_per_hour == 2
                # a deployment that names its own zones file wins over the component's
                await srv.update_configuration({**BASE_CONFIG,
                                                "rules": {"zones": "mine.geojson"}})
                async with asyncio.timeout(5):
                    await applied.event.wait()
                assert w.config.rules.zones == mine
                report = await srv.validate_configuration(
                    {**BASE_CONFIG, "rules": {"zones": None}}, deployment_id="dep-z")
                assert report["status"] == "ACCEPTED"

    run(body)
    # and without the recipe's variable nothing is invented
    cfg = config_from_component(BASE_CONFIG, base=tmp_path, env={"AWS_IOT_THING_NAME": THING})
    assert cfg.rules.zones is None
    d = component_config_to_dict({"thing": "x", "rules": {"zones": None}}, env=env)
    assert d == {"thing": "x", "rules": {"zones": str(zones)}}


class Applied:
    def __init__(self) -> None:
        self.configs: list[Config] = []
        self.event = asyncio.Event()

    def __call__(self, cfg: Config) -> None:
        self.configs.append(cfg)
        self.event.set()


async def wait_for(pred: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll a condition that changes on another thread (awscrt) or inside the watcher."""
    async with asyncio.timeout(within_s):
        while not pred():
            await asyncio.sleep(0.02)


def watcher_for(srv: GgIpcServer, applied: Applied, **kw: Any) -> GreengrassConfigWatcher:
    return GreengrassConfigWatcher(
        on_config=applied, ipc_socket=str(srv.path), authtoken=srv.svcuid,
        env={"AWS_IOT_THING_NAME": THING}, base=Path("/tmp"), **kw,
    )


def test_config_at_start_and_valid_update_calls_back(sock_dir: Path) -> None:
    async def body() -> None:
        applied = Applied()
        async with server(sock_dir, configuration=BASE_CONFIG) as srv:
            async with watcher_for(srv, applied) as w:
                assert w.config.thing == THING
                assert srv.subscribers("SubscribeToConfigurationUpdate") == 1
                new = {**BASE_CONFIG, "telemetry": {"interval_s": 5, "batch_max": 30}}
                await srv.update_configuration(new)
                async with asyncio.timeout(5):
                    await applied.event.wait()
                assert applied.configs[-1].telemetry.interval_s == 5.0
                assert w.config.telemetry.batch_max == 30
                assert changed_sections(applied.configs[0], w.config) == frozenset()
                assert w.health()["updates_applied"] == 1

    run(body)


def test_invalid_update_rejected_old_kept_and_reported(sock_dir: Path) -> None:
    async def body() -> None:
        applied = Applied()
        async with server(sock_dir, configuration=BASE_CONFIG) as srv:
            async with watcher_for(srv, applied, update_state_on_reject=True) as w:
                old = w.config
                bad = {**BASE_CONFIG, "telemetry": {"interval_s": -1}}
                await srv.update_configuration(bad)
                await wait_for(lambda: w.health()["updates_rejected"] == 1)
                assert w.config == old and applied.configs == []
                h = w.health()
                assert "telemetry.interval_s" in h["last_rejected_reason"]
                await wait_for(lambda: srv.states == ["ERRORED"])
                # a later valid update still applies
                await srv.update_configuration({**BASE_CONFIG, "log": {"level": "debug"}})
                async with asyncio.timeout(5):
                    await applied.event.wait()
                assert w.config.log.level == "debug"

    run(body)


def test_deployment_validation_reports_accept_and_reject(sock_dir: Path) -> None:
    async def body() -> None:
        applied = Applied()
        async with server(sock_dir, configuration=BASE_CONFIG) as srv:
            async with watcher_for(srv, applied) as w:
                assert srv.subscribers("SubscribeToValidateConfigurationUpdates") == 1
                bad = {**BASE_CONFIG, "outbox": {"max_mb": 0}}
                report = await srv.validate_configuration(bad, deployment_id="dep-bad")
                assert report["status"] == "REJECTED"
                assert "outbox.max_mb" in report["message"]
                ok = await srv.validate_configuration(BASE_CONFIG, deployment_id="dep-ok")
                assert ok["status"] == "ACCEPTED"
                h = w.health()
                assert h["deployments_rejected"] == 1 and h["deployments_accepted"] == 1
                assert "dep-bad" in h["last_rejected_reason"]
                assert applied.configs == []  # validation never applies anything

    run(body)


def test_invalid_config_at_start_is_config_error(sock_dir: Path) -> None:
    async def body() -> None:
        bad = {**BASE_CONFIG, "gnss": {"baud": -5}}
        async with server(sock_dir, configuration=bad) as srv:
            with pytest.raises(ConfigError, match=r"gnss\.baud"):
                async with watcher_for(srv, Applied()):
                    pass

    run(body)


@contextlib.asynccontextmanager
async def restartable_server(sock_dir: Path) -> AsyncIterator[GgIpcServer]:
    """A nucleus with BASE_CONFIG that the test may stop and start again; stopped at the
    end in any case."""
    srv = server(sock_dir, configuration=BASE_CONFIG)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def run_logged(body: Callable[[list[dict[str, Any]]], Awaitable[None]]
               ) -> list[dict[str, Any]]:
    """``run(body)`` with structlog's events captured; ``body`` may watch them as they come."""
    with structlog.testing.capture_logs() as logs:
        run(lambda: body(logs))
    return logs


def test_watcher_reconnects_and_rereads_after_nucleus_restart(sock_dir: Path) -> None:
    async def body() -> None:
        applied = Applied()
        async with restartable_server(sock_dir) as srv, \
                watcher_for(srv, applied, reconnect_max_s=0.5) as w:
            await srv.stop()
            await wait_for(lambda: not w.health()["connected"])
            srv.configuration = {**BASE_CONFIG, "log": {"level": "warning"}}
            await srv.start()
            async with asyncio.timeout(10):
                await applied.event.wait()
            assert w.config.log.level == "warning"
            assert w.health()["reconnects"] >= 1

    run(body)


def test_watcher_logs_a_repeated_fault_at_warning_once_then_debug(sock_dir: Path) -> None:
    """A nucleus that stays away and the same invalid update twice: each fault is one
    WARNING line (with its reason), its repeats DEBUG; health counts every one."""
    async def body(logs: list[dict[str, Any]]) -> None:
        async with restartable_server(sock_dir) as srv, \
                watcher_for(srv, Applied(), reconnect_max_s=0.2) as w:
            bad = {**BASE_CONFIG, "telemetry": {"interval_s": -1}}
            for n in (1, 2):
                await srv.update_configuration(bad)
                await wait_for(lambda n=n: w.health()["updates_rejected"] == n)
            await srv.stop()
            await wait_for(lambda: sum(e["event"] == "ggconfig_reconnect_failed"
                                       for e in logs) >= 3)
            await srv.start()
            await wait_for(lambda: w.health()["reconnects"] == 1, within_s=10)

    logs = run_logged(body)
    rejected = [e for e in logs if e["event"] == "ggconfig_rejected"]
    # (re-read after the reconnect, the nucleus' configuration is still the bad one)
    assert rejected[0]["log_level"] == "warning" and len(rejected) >= 2
    assert {e["log_level"] for e in rejected[1:]} == {"debug"}
    assert "telemetry.interval_s" in rejected[0]["reason"]
    failed = [e for e in logs if e["event"] == "ggconfig_reconnect_failed"]
    assert failed[0]["log_level"] == "warning" and failed[0]["reason"]
    assert {e["log_level"] for e in failed[1:]} == {"debug"}
    assert [e["event"] for e in logs].count("ggconfig_reconnected") == 1


def test_watcher_waits_the_longest_backoff_after_a_refused_token(sock_dir: Path) -> None:
    """The nucleus comes back with another SVCUID (refused: retrying soon cannot help):
    the next attempt waits the capped delay, not the short one an absent socket gets."""
    async def body(logs: list[dict[str, Any]]) -> None:
        async with restartable_server(sock_dir) as srv, \
                watcher_for(srv, Applied(), reconnect_max_s=4.0) as w:
            token = srv.svcuid
            await srv.stop()
            await wait_for(lambda: any(e["event"] == "ggconfig_reconnect_failed"
                                       for e in logs))
            srv.svcuid = "rotated"
            await srv.start()
            await wait_for(lambda: "SVCUID" in str(w.health()["last_error"]), within_s=5)
            srv.svcuid = token  # accepted again: the watcher comes back, after the wait
            await wait_for(lambda: w.health()["reconnects"] == 1, within_s=10)

    logs = run_logged(body)
    failed = [e for e in logs if e["event"] == "ggconfig_reconnect_failed"]
    refused = [e for e in failed if "SVCUID" in e["reason"]]
    assert failed[0]["retry_in_s"] <= 0.5  # socket gone: the short first step
    assert refused and all(e["retry_in_s"] >= 2.0 for e in refused)  # cap 4 s, jittered
