"""AWS IoT Core uplink: awscrt MQTT 5 with mutual TLS (any MQTT 5 broker that takes
client certificates works the same way, which is how the tests run it).

* Built with ``awsiot.mqtt5_client_builder.mtls_from_path``; on port 443 the builder
  sets ALPN ``x-amzn-mqtt-ca`` (IoT Core's MQTT-over-443). Client id = the thing name.
* awscrt runs its own event-loop threads: every callback and every publish future
  reaches asyncio through ``loop.call_soon_threadsafe``.
* ``publish`` waits for the PUBACK; a reason code >= 0x80 (0x87 not authorized,
  0x95 too large, ...) raises ``PublishRejected``; 0x97 quota exceeded (throttling)
  and other codes are transient (``UplinkError``). Success codes include 0x10
  "no matching subscribers".
* awscrt reconnects by itself; we do not let it: the first disconnect or connection
  failure ends this connection (``lost`` is set, pending publishes fail with
  ``UplinkError``) and the daemon's reconnect loop decides when to try again.
* awscrt and awsiot are imported only when this uplink is entered, so a daemon with
  another uplink kind never loads them (RSS).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from edge.errors import UplinkAuthError, UplinkError
from edge.uplinks.base import UplinkBase, check_puback, fail, resolve
from edge.uplinks.mqtt import check_key_file

if TYPE_CHECKING:
    from edge.config import UplinkConfig

log = structlog.get_logger()

# CONNACK reason codes retrying soon will not fix (bad credentials, not authorized,
# banned, bad authentication method).
_AUTH_CONNACK = {0x86, 0x87, 0x8A, 0x8C}


class IotCoreUplink(UplinkBase):
    name = "iotcore"
    user_properties = True  # MQTT 5

    def __init__(self, config: UplinkConfig, *, client_id: str) -> None:
        super().__init__()
        self.config = config
        self.client_id = config.client_id or client_id
        self._client: Any = None
        self._connected: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()

    @property
    def port(self) -> int:
        return self.config.broker_port

    # ---- connect / disconnect

    async def _connect(self) -> None:
        if self._client is not None:
            raise RuntimeError("IotCoreUplink is already connected")
        cfg = self.config
        if cfg.cert is None or cfg.key is None:
            raise UplinkAuthError("uplink.cert and uplink.key are required for iotcore")
        check_key_file(cfg.key)
        try:
            from awscrt import mqtt5
            from awscrt.exceptions import AwsCrtError
            from awsiot import mqtt5_client_builder
        except ImportError as exc:
            raise UplinkError(f"uplink.kind = 'iotcore' needs awsiotsdk: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._connected = loop.create_future()
        self._stopped = loop.create_future()
        try:
            client = mqtt5_client_builder.mtls_from_path(
                endpoint=cfg.endpoint,
                port=self.port,
                cert_filepath=str(cfg.cert),
                pri_key_filepath=str(cfg.key),
                ca_filepath=str(cfg.ca) if cfg.ca else None,
                client_id=self.client_id,
                keep_alive_interval_sec=cfg.keepalive_s,
                session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
                offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
                connack_timeout_ms=int(cfg.connect_timeout_s * 1000),
                ack_timeout_sec=max(10, cfg.keepalive_s),
                enable_metrics_collection=False,
                on_lifecycle_connection_success=self._on_success,
                on_lifecycle_connection_failure=self._on_failure,
                on_lifecycle_disconnection=self._on_disconnection,
                on_lifecycle_stopped=self._on_stopped,
            )
        except (AwsCrtError, OSError, ValueError, TypeError) as exc:
            # unreadable or malformed certificate / key / CA
            raise UplinkAuthError(f"TLS setup failed: {exc}") from exc
        self._client = client
        client.start()
        try:
            # awscrt reports a refused TLS handshake late (10-30 s): the deadline is ours
            async with asyncio.timeout(cfg.connect_timeout_s):
                await self._connected
        except TimeoutError as exc:
            await self._stop()
            raise UplinkError(
                f"no CONNACK from {cfg.endpoint}:{self.port} within {cfg.connect_timeout_s:g} s"
            ) from exc
        except UplinkError:
            await self._stop()
            raise

    async def _disconnect(self) -> None:
        await self._stop()

    async def _stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        from awscrt import mqtt5

        client.stop(mqtt5.DisconnectPacket())
        if self._stopped is not None:
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(self._stopped)
            except TimeoutError:
                log.debug("iotcore client did not report stopped in 2 s")
        self._fail_pending(UplinkError("disconnected"))

    def _fail_pending(self, err: UplinkError) -> None:
        pending, self._pending = self._pending, set()
        for fut in pending:
            fail(fut, err)

    # ---- lifecycle callbacks: awscrt's threads

    def _on_success(self, data: Any) -> None:
        if self._connected is not None:
            self._post(resolve, self._connected, None)

    def _on_failure(self, data: Any) -> None:
        connack = getattr(data, "connack_packet", None)
        code = getattr(getattr(connack, "reason_code", None), "value", None)
        exc = getattr(data, "exception", None)
        if code is not None and code in _AUTH_CONNACK:
            err: UplinkError = UplinkAuthError(f"broker refused the connection (reason {code:#x})")
        elif code is not None:
            err = UplinkError(f"broker refused the connection (reason {code:#x})")
        elif exc is not None and "TLS" in str(getattr(exc, "name", "")).upper():
            err = UplinkAuthError(f"TLS handshake failed: {exc}")
        else:
            err = UplinkError(f"connect to {self.config.endpoint}:{self.port} failed: {exc}")
        if self._connected is not None:
            self._post(fail, self._connected, err)
        self._post(self._set_lost, err)

    def _on_disconnection(self, data: Any) -> None:
        exc = getattr(data, "exception", None)
        self._post(self._set_lost, UplinkError(f"connection lost: {exc}"))

    def _on_stopped(self, data: Any) -> None:
        if self._stopped is not None:
            self._post(resolve, self._stopped, None)

    def _set_lost(self, err: UplinkError) -> None:
        # runs on the event loop
        self._lost.set()
        self._fail_pending(err)

    # ---- the interface

    async def _publish(self, topic: str, payload: bytes, qos: int,
                       user_properties: Sequence[tuple[str, str]]) -> None:
        client = self._client
        if client is None or self._lost.is_set():
            raise UplinkError("not connected")
        from awscrt import mqtt5
        from awscrt.exceptions import AwsCrtError

        packet = mqtt5.PublishPacket(
            topic=topic,
            payload=payload,
            qos=mqtt5.QoS.AT_LEAST_ONCE if qos == 1 else mqtt5.QoS.AT_MOST_ONCE,
            user_properties=[mqtt5.UserProperty(name=k, value=v) for k, v in user_properties]
            or None,
        )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.add(fut)
        try:
            crt_future: concurrent.futures.Future[Any] = client.publish(packet)
        except AwsCrtError as exc:
            self._pending.discard(fut)
            raise UplinkError(f"{topic}: publish failed: {exc}") from exc

        def done(cf: concurrent.futures.Future[Any]) -> None:  # awscrt's thread
            exc = cf.exception()
            if exc is not None:
                self._post(fail, fut, UplinkError(f"{topic}: publish failed: {exc}"))
            else:
                self._post(resolve, fut, cf.result())

        crt_future.add_done_callback(done)
        try:
            async with asyncio.timeout(max(10.0, self.config.keepalive_s) + 5.0):
                result = await fut
        except TimeoutError as exc:
            raise UplinkError(f"{topic}: no PUBACK") from exc
        finally:
            self._pending.discard(fut)
        if qos == 0:
            return
        puback = getattr(result, "puback", None)
        code = int(getattr(getattr(puback, "reason_code", 0), "value", 0) or 0)
        check_puback(topic, code)
