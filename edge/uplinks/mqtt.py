"""MQTT uplink to any broker with paho-mqtt 2.x (MQTT 5 or 3.1.1, optional mutual TLS).

paho's network loop runs on its own thread (``loop_start``); every callback hands its
result to the event loop with ``call_soon_threadsafe``. ``publish`` waits for the
PUBACK: a permanent reason code (0x87 "not authorized" from an ACL, ...) raises
``PublishRejected``; 0x10 "no matching subscribers" is a success.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from edge.config import UplinkConfig
from edge.errors import UplinkAuthError, UplinkError
from edge.uplinks.base import UplinkBase, check_puback, fail, key_problem, resolve

log = structlog.get_logger()

# CONNACK reason codes that retrying soon will not fix.
_AUTH_CODES = {0x86, 0x87, 0x8C, 0x95, 4, 5}


def check_key_file(key: Path) -> None:
    """Refuse a private key other users can read (raises ``UplinkAuthError``)."""
    why = key_problem(key)
    if why:
        raise UplinkAuthError(f"uplink.key {why}")


class MqttUplink(UplinkBase):
    name = "mqtt"

    def __init__(self, config: UplinkConfig, *, client_id: str) -> None:
        super().__init__()
        self.config = config
        # MQTT 5 carries user properties (content-encoding of compressed batches)
        self.user_properties = config.protocol == 5
        self.client_id = config.client_id or client_id
        self._client: Any = None
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._early: dict[int, int] = {}
        self._connected: asyncio.Future[None] | None = None

    @property
    def tls(self) -> bool:
        return self.config.uses_tls

    @property
    def port(self) -> int:
        return self.config.broker_port

    async def _connect(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if self._client is not None:
            raise RuntimeError("MqttUplink is already connected")
        self._connected = asyncio.get_running_loop().create_future()
        v5 = self.config.protocol == 5
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        if self.tls:
            if self.config.key is not None:
                check_key_file(self.config.key)
            try:
                ctx = ssl.create_default_context(
                    cafile=str(self.config.ca) if self.config.ca else None
                )
                if self.config.cert and self.config.key:
                    ctx.load_cert_chain(str(self.config.cert), str(self.config.key))
            except (OSError, ssl.SSLError) as exc:
                raise UplinkAuthError(f"TLS setup failed: {exc}") from exc
            client.tls_set_context(ctx)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(1000)
        self._client = client
        try:
            client.connect_async(
                self.config.endpoint, self.port, keepalive=self.config.keepalive_s
            )
            client.loop_start()
            async with asyncio.timeout(self.config.connect_timeout_s):
                await self._connected
        except TimeoutError as exc:
            self._teardown()
            raise UplinkError(
                f"no CONNACK from {self.config.endpoint}:{self.port} within "
                f"{self.config.connect_timeout_s:g} s"
            ) from exc
        except UplinkError:
            self._teardown()
            raise
        except (OSError, ValueError) as exc:
            self._teardown()
            raise UplinkError(f"connect to {self.config.endpoint}:{self.port}: {exc}") from exc

    async def _disconnect(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.disconnect()
        except Exception:  # best effort on the way out
            pass
        await asyncio.to_thread(self._teardown)

    def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.loop_stop()
        with self._lock:
            pending, self._pending = self._pending, {}
            self._early.clear()
        for fut in pending.values():
            self._post(fail, fut, UplinkError("disconnected"))

    # ---- callbacks: paho's thread

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        code = int(getattr(rc, "value", rc))
        assert self._connected is not None
        fut = self._connected
        if code == 0:
            self._post(resolve, fut, None)
            return
        err_cls = UplinkAuthError if code in _AUTH_CODES else UplinkError
        err = err_cls(f"broker refused the connection: {rc} (code {code})")
        self._post(fail, fut, err)
        client.disconnect()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any
    ) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            pending, self._pending = self._pending, {}
        err = UplinkError(f"connection lost: {rc}")
        for fut in pending.values():
            self._post(fail, fut, err)
        if self._connected is not None:
            self._post(fail, self._connected, err)
        self._post(self._lost.set)

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        code = int(getattr(rc, "value", rc))
        with self._lock:
            fut = self._pending.pop(mid, None)
            if fut is None:
                self._early[mid] = code
                return
        self._post(resolve, fut, code)

    # ---- the interface

    async def _publish(self, topic: str, payload: bytes, qos: int,
                       user_properties: Sequence[tuple[str, str]]) -> None:
        client = self._client
        if client is None or self._lost.is_set():
            raise UplinkError("not connected")
        props = None
        if self.config.protocol == 5 and user_properties:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = list(user_properties)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        # Never hold our lock while calling into paho: its network thread holds paho's
        # own lock while it calls _on_publish, which takes ours (a deadlock seen under
        # load). A PUBACK that arrives before the future is registered waits in _early.
        info = client.publish(topic, payload, qos=qos, properties=props)
        if info.rc != 0:
            raise UplinkError(f"publish failed locally: rc={info.rc}")
        if qos == 0:
            return
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = fut
        if early is None and self._lost.is_set():
            with self._lock:
                self._pending.pop(info.mid, None)
            raise UplinkError("connection lost")
        if early is not None:
            code = early
        else:
            try:
                async with asyncio.timeout(max(10.0, self.config.keepalive_s)):
                    code = await fut
            except TimeoutError as exc:
                with self._lock:
                    self._pending.pop(info.mid, None)
                raise UplinkError(f"{topic}: no PUBACK within the keepalive") from exc
        check_puback(topic, code)
