"""One IPC connection to the nucleus for the component's configuration.

``ConfigIpc`` opens the connection, subscribes to configuration updates (and, when
asked, to deployment validation), and makes the few calls the configuration watcher
needs: GetConfiguration, SendConfigurationValidityReport, UpdateState. It converts
awsiotsdk's errors and time-outs into ``UplinkError`` at the boundary.

awsiotsdk calls back on awscrt threads; every callback here only hands over to the
asyncio loop with ``call_soon_threadsafe``: ``on_update()``, ``on_validate(config,
deployment_id)`` and ``on_lost()`` always run on the loop. awsiotsdk is imported lazily.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from edge.errors import EdgeError, UplinkError
from edge.greengrass.uplink import map_ipc_error, open_ipc_connection

log = structlog.get_logger()

OnValidate = Callable[[dict[str, Any], str | None], None]


class ConfigIpc:
    """The configuration calls over one IPC connection (``open`` once, ``close`` once)."""

    def __init__(
        self,
        *,
        on_update: Callable[[], None],
        on_lost: Callable[[], None],
        on_validate: OnValidate | None = None,
        ipc_socket: str | None = None,
        authtoken: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        """``on_validate`` given: subscribe to deployment validation too."""
        self._on_update = on_update
        self._on_lost = on_lost
        self._on_validate = on_validate
        self._ipc_socket = ipc_socket
        self._authtoken = authtoken
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self.lost = False
        self.validation_supported = on_validate is not None

    async def open(self) -> None:
        """Connect and subscribe (raises ``UplinkError``; closed again on any failure)."""
        from awsiot.greengrasscoreipc.client import GreengrassCoreIPCClient
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

        self._loop = asyncio.get_running_loop()
        conn, fut = open_ipc_connection(
            ipc_socket=self._ipc_socket,
            authtoken=self._authtoken,
            on_disconnect=lambda reason: self._threadsafe(self._disconnected),
        )
        try:
            await self._call(fut, "connect")
        except BaseException:
            conn.close()
            raise
        self._client = GreengrassCoreIPCClientV2(client=GreengrassCoreIPCClient(conn),
                                                 executor=None)
        try:
            sub, _op = self._client.subscribe_to_configuration_update_async(
                key_path=[],
                on_stream_event=lambda ev: self._threadsafe(self._on_update),
                on_stream_error=lambda err: False,  # keep the stream open
            )
            await self._call(sub, "SubscribeToConfigurationUpdate")
            if self._on_validate is not None:
                await self._subscribe_validation(self._on_validate)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(executor_wait=False)

    async def get_configuration(self) -> dict[str, Any]:
        resp = await self._call(self._require().get_configuration_async(key_path=[]),
                                "GetConfiguration")
        return dict(resp.value or {})

    async def report_validity(self, deployment_id: str | None, *, accepted: bool,
                              message: str) -> None:
        from awsiot.greengrasscoreipc import model

        status = model.ConfigurationValidityStatus
        report = model.ConfigurationValidityReport(
            status=status.ACCEPTED if accepted else status.REJECTED,
            deployment_id=deployment_id, message=message)
        await self._call(self._require().send_configuration_validity_report_async(
            configuration_validity_report=report), "SendConfigurationValidityReport")

    async def report_errored(self) -> None:
        from awsiot.greengrasscoreipc import model

        await self._call(self._require().update_state_async(
            state=model.ReportedLifecycleState.ERRORED), "UpdateState")

    # -- internals -----------------------------------------------------------------

    def _require(self) -> Any:
        if self._client is None:
            raise UplinkError("ggconfig: not connected")
        return self._client

    def _disconnected(self) -> None:
        self.lost = True
        self._on_lost()

    def _threadsafe(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn)

    async def _call(self, cfut: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await asyncio.wrap_future(cfut)
        except TimeoutError as exc:
            raise UplinkError(f"ggconfig: {what} timed out") from exc
        except EdgeError:
            raise
        except Exception as exc:
            raise map_ipc_error(exc, f"ggconfig: {what}") from exc

    async def _subscribe_validation(self, on_validate: OnValidate) -> None:
        def on_event(ev: Any) -> None:  # awscrt thread
            inner = getattr(ev, "validate_configuration_update_event", None)
            if inner is None:
                return
            cfg = dict(inner.configuration or {})
            dep = inner.deployment_id
            self._threadsafe(lambda: on_validate(cfg, dep))

        try:
            sub, _op = self._client.subscribe_to_validate_configuration_updates_async(
                on_stream_event=on_event, on_stream_error=lambda err: False
            )
            await self._call(sub, "SubscribeToValidateConfigurationUpdates")
            self.validation_supported = True
        except UplinkError as exc:
            if self.lost:
                raise
            # e.g. a nucleus without the operation: post-apply checks still protect us
            self.validation_supported = False
            log.warning("ggconfig_validation_unavailable", reason=str(exc))
