"""The uplink supervisor: one connection at a time, an explicit state machine.

::

    DISCONNECTED ──connect──▶ CONNECTING ──ok──▶ CONNECTED ⇄ PUBLISH_FAILING
         ▲                        │                  │
         └──── backoff wait ◀─────┴── error ─────────┘

Backoff is the one capped, jittered ``edge.core.backoff.Backoff``: reset by a
connection, jumped to the cap by refused credentials (retrying soon will not fix them).
The first failure logs at WARNING, repeats at DEBUG until a connection succeeds. While
the broker's TCP port is closed the wait ends as soon as it opens (one SYN per
``uplink.probe_s``); a port that is open while connecting fails gets the full backoff.
A connection drains the outbox through ``edge.forwarder`` (alerts first, telemetry
batched, IoT Core quotas kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from edge.config import Config
from edge.core.backoff import Backoff
from edge.errors import EdgeError, OutboxError, UplinkAuthError, UplinkError
from edge.logconf import Once
from edge.uplinks.base import Uplink

from .ingest import Ingest

if TYPE_CHECKING:
    from edge.forwarder import Forwarder

log = structlog.get_logger()


class UplinkState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    PUBLISH_FAILING = "publish failing"  # connected, but publishes fail (nucleus offline)


def make_uplink(config: Config) -> Uplink:
    """Pick the uplink by ``uplink.kind``; optional libraries are imported only here."""
    kind = config.uplink.kind
    if kind == "mqtt":
        from edge.uplinks.mqtt import MqttUplink

        return MqttUplink(config.uplink, client_id=config.thing)
    if kind == "file":
        from edge.uplinks.file import FileUplink

        assert config.uplink.path is not None
        return FileUplink(config.uplink.path)
    if kind == "iotcore":
        from edge.uplinks.iotcore import IotCoreUplink

        return IotCoreUplink(config.uplink, client_id=config.thing)
    if kind == "greengrass":
        from edge.greengrass.uplink import GreengrassUplink

        return GreengrassUplink(config.uplink)
    raise EdgeError(f"unknown uplink kind {kind!r}")


class UplinkSupervisor:
    """Connects, drains, reconnects. ``config()`` is the daemon's current config."""

    def __init__(self, config: Callable[[], Config], ingest: Ingest, *,
                 once: Once | None = None) -> None:
        self._config = config
        self._ingest = ingest
        self._once = once or Once()
        self.state = UplinkState.DISCONNECTED
        self.last_error: str | None = None
        self.retry_delay_s: float | None = None  # the wait after the latest failure
        self.counters: dict[str, int] = {"uplink_errors": 0, "connects": 0}
        self.forwarder: Forwarder | None = None  # one per daemon: it owns its counters

    async def run(self) -> None:
        backoff = Backoff(base_s=0.5, cap_s=self._config().uplink.backoff_max_s)
        while True:
            await self._ingest.opened.wait()  # nothing to deliver from before that
            uplink = make_uplink(self._config())
            try:
                self.state = UplinkState.CONNECTING
                async with uplink:
                    self.state = UplinkState.CONNECTED
                    self.counters["connects"] += 1
                    backoff.reset()
                    self._once.clear("uplink")
                    log.info("uplink connected", kind=uplink.name)
                    await self._drain(uplink)
            except UplinkAuthError as exc:
                backoff.to_cap()
                self._failed(exc)
            except UplinkError as exc:
                self._failed(exc)
            self.state = UplinkState.DISCONNECTED
            self.retry_delay_s = backoff.next()
            await self._backoff_wait(self.retry_delay_s)

    def _failed(self, exc: Exception) -> None:
        self.counters["uplink_errors"] += 1
        self.last_error = str(exc)
        self._once(log, "uplink", "uplink unavailable, will retry", reason=str(exc))

    def _publish_error(self, reason: str | None) -> None:
        """Publishes fail on a working connection (``reason``), or work again (None)."""
        self.state = UplinkState.CONNECTED if reason is None else UplinkState.PUBLISH_FAILING
        if reason is not None:
            self.last_error = reason

    async def _backoff_wait(self, delay: float) -> None:
        """Sleep ``delay`` — but when the broker's TCP port was closed at the failure
        and opens during the wait, reconnect at once."""
        cfg = self._config().uplink
        target = self._probe_target()
        if target is None or cfg.probe_s <= 0 or await _port_open(*target):
            await asyncio.sleep(delay)
            return
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(cfg.probe_s, left))
            if await _port_open(*target):
                log.debug("uplink port open again, reconnecting now", host=target[0],
                          port=target[1])
                return

    def _probe_target(self) -> tuple[str, int] | None:
        cfg = self._config().uplink
        if cfg.kind not in ("mqtt", "iotcore"):
            return None
        return cfg.endpoint, cfg.broker_port

    async def _drain(self, uplink: Uplink) -> None:
        """Serve one connection (``edge.forwarder``): every claimed row settled."""
        from edge.forwarder import Forwarder

        outbox = self._ingest.outbox
        assert outbox is not None
        cfg = self._config()
        # a previous connection's drain may have failed to settle (full disk): nothing
        # else owns in-flight rows now, so they are ready again
        with contextlib.suppress(OutboxError):
            stuck = await asyncio.to_thread(outbox.recover_inflight)
            if stuck:
                log.info("outbox: rows left in flight are ready again", rows=stuck)
        if self.forwarder is None:
            self.forwarder = Forwarder(
                outbox, thing=cfg.thing, batch_max=cfg.telemetry.batch_max,
                compression=cfg.uplink.compression, window=cfg.uplink.window,
                once=self._once, retry=Backoff(base_s=0.5, cap_s=cfg.uplink.backoff_max_s),
                on_publish_error=self._publish_error,
            )
        await self.forwarder.run(uplink, self._ingest.new_rows)

    @property
    def published(self) -> int:
        """Messages the broker acknowledged (the forwarder's count)."""
        return self.forwarder.counters["published"] if self.forwarder is not None else 0

    def all_counters(self) -> dict[str, int]:
        """The supervisor's counters with the forwarder's (published, rejected, ...)."""
        from edge.forwarder import COUNTERS

        owned = self.forwarder.counters if self.forwarder is not None else {}
        return {**dict.fromkeys(COUNTERS, 0), **owned, **self.counters}

    def health(self) -> dict[str, Any]:
        return {"kind": self._config().uplink.kind, "state": str(self.state),
                "last_error": self.last_error}


async def _port_open(host: str, port: int, limit_s: float = 1.0) -> bool:
    try:
        async with asyncio.timeout(limit_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
