"""Greengrass v2 uplink: PublishToIoTCore over the nucleus IPC socket.

Runs inside a Greengrass component (classic or lite). The nucleus gives the component
``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT`` and ``SVCUID``; the recipe's
accessControl must grant ``aws.greengrass#PublishToIoTCore`` on ``vehicles/{iot:thingName}/*``.

``publish`` returns only when the nucleus answered success. Nucleus classic then owns
delivery (its spooler); nucleus lite answers with an error at once when offline, which
becomes ``UplinkError`` so the row stays in our outbox and is retried.

awsiotsdk calls back on awscrt's event-loop thread; results reach the asyncio loop via
``asyncio.wrap_future`` (which uses ``call_soon_threadsafe``) and, for disconnects, an
explicit ``call_soon_threadsafe``. awsiotsdk is imported lazily, so the daemon runs
without it unless ``uplink.kind = "greengrass"``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog

from edge.errors import PublishRejected, UplinkAuthError, UplinkError
from edge.uplinks.base import MAX_PAYLOAD, check_publish

if TYPE_CHECKING:
    from edge.config import UplinkConfig

log = structlog.get_logger()

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV = "SVCUID"


def ipc_available(env: dict[str, str] | None = None) -> bool:
    """True when this process runs as a Greengrass component (IPC socket and token set)."""
    e = os.environ if env is None else env
    return bool(e.get(SOCKET_ENV)) and bool(e.get(TOKEN_ENV))


def open_ipc_connection(
    *,
    ipc_socket: str | None,
    authtoken: str | None,
    on_disconnect: Any = None,
) -> tuple[Any, concurrent.futures.Future[None]]:
    """Start an eventstream-RPC connection to the nucleus; returns (connection, connect future).

    Unlike ``awsiot.greengrasscoreipc.connect`` this does not block, so the caller can
    await it with a deadline and close the connection if the deadline passes.
    """
    from awscrt.io import (
        ClientBootstrap,
        DefaultHostResolver,
        EventLoopGroup,
        SocketDomain,
        SocketOptions,
    )
    from awsiot.eventstreamrpc import Connection, LifecycleHandler, MessageAmendment

    sock = ipc_socket or os.environ.get(SOCKET_ENV)
    token = authtoken or os.environ.get(TOKEN_ENV)
    if not sock:
        raise UplinkError(f"no Greengrass IPC socket: {SOCKET_ENV} is not set (not a component?)")
    if not token:
        raise UplinkAuthError(f"no Greengrass IPC token: {TOKEN_ENV} is not set")

    class _Lifecycle(LifecycleHandler):  # type: ignore[misc]
        def on_disconnect(self, reason: Exception | None) -> None:
            if on_disconnect is not None:
                on_disconnect(reason)

        def on_error(self, reason: Exception) -> bool:
            return True  # close the connection; the caller reconnects

    elg = EventLoopGroup(num_threads=1)
    bootstrap = ClientBootstrap(elg, DefaultHostResolver(elg))
    opts = SocketOptions()
    opts.domain = SocketDomain.Local
    conn = Connection(
        host_name=sock,
        port=0,
        bootstrap=bootstrap,
        socket_options=opts,
        connect_message_amender=MessageAmendment.create_static_authtoken_amender(token),
    )
    try:
        fut: concurrent.futures.Future[None] = conn.connect(_Lifecycle())
    except Exception as exc:  # awscrt raises at once for a missing socket file
        raise UplinkError(f"greengrass: cannot connect to IPC socket {sock}: {exc}") from exc
    return conn, fut


def map_ipc_error(exc: BaseException, what: str) -> UplinkError:
    """Translate an awsiotsdk / awscrt exception into the project's error tree."""
    from awsiot import eventstreamrpc
    from awsiot.greengrasscoreipc import model

    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, model.UnauthorizedError):
        return PublishRejected(f"{what}: not authorized by the nucleus: {text}")
    if isinstance(exc, model.InvalidArgumentsError):
        return PublishRejected(f"{what}: invalid arguments: {text}")
    if isinstance(exc, eventstreamrpc.AccessDeniedError):
        return UplinkAuthError(f"{what}: IPC connection refused (SVCUID): {text}")
    if isinstance(exc, model.ServiceError):
        return UplinkError(f"{what}: nucleus service error: {text}")
    return UplinkError(f"{what}: IPC failure: {type(exc).__name__}: {text}")


class GreengrassUplink:
    """``Uplink`` over Greengrass IPC (``GreengrassCoreIPCClientV2.publish_to_iot_core``)."""

    name = "greengrass"
    max_payload = MAX_PAYLOAD

    def __init__(
        self,
        config: UplinkConfig | None = None,
        *,
        ipc_socket: str | None = None,
        authtoken: str | None = None,
        connect_timeout_s: float | None = None,
        publish_timeout_s: float = 30.0,
    ) -> None:
        """``config`` (``[uplink]``) only contributes ``connect_timeout_s``: the socket and
        token come from the nucleus' environment unless given here (tests)."""
        self._ipc_socket = ipc_socket
        self._authtoken = authtoken
        if connect_timeout_s is None:
            connect_timeout_s = config.connect_timeout_s if config is not None else 10.0
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._client: Any = None  # GreengrassCoreIPCClientV2 while connected
        self._conn: Any = None
        self._lost: asyncio.Event | None = None
        self._lost_reason: str | None = None
        self._entered = False

    @property
    def connected(self) -> bool:
        return self._client is not None and not (self._lost is not None and self._lost.is_set())

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("GreengrassUplink is already entered")
        try:
            from awsiot.greengrasscoreipc.client import GreengrassCoreIPCClient
            from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
        except ImportError as exc:
            raise UplinkError("uplink.kind = 'greengrass' needs the awsiotsdk package") from exc

        loop = asyncio.get_running_loop()
        lost = asyncio.Event()
        self._lost = lost
        self._lost_reason = None

        def on_disconnect(reason: Exception | None) -> None:  # awscrt thread
            def mark() -> None:
                self._lost_reason = repr(reason) if reason else "closed"
                lost.set()

            try:
                loop.call_soon_threadsafe(mark)
            except RuntimeError:  # loop already closed
                pass

        conn, fut = open_ipc_connection(
            ipc_socket=self._ipc_socket, authtoken=self._authtoken, on_disconnect=on_disconnect
        )
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await asyncio.wrap_future(fut)
        except TimeoutError as exc:
            conn.close()
            raise UplinkError(
                f"greengrass: IPC connect timed out after {self._connect_timeout_s:g} s"
            ) from exc
        except Exception as exc:
            conn.close()
            raise map_ipc_error(exc, "greengrass connect") from exc
        self._conn = conn
        # executor=None: no callbacks of ours run on the executor; avoids a thread pool.
        self._client = GreengrassCoreIPCClientV2(
            client=GreengrassCoreIPCClient(conn), executor=None
        )
        self._entered = True
        log.info("uplink_connected", uplink=self.name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        self._conn = None
        self._entered = False
        if client is None:
            return
        try:
            closed = client.close(executor_wait=False)
            async with asyncio.timeout(2.0):
                await asyncio.wrap_future(closed)
        except Exception as err:  # closing a dead connection: nothing left to do
            log.debug("uplink_close_error", uplink=self.name, error=repr(err))

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None:
        check_publish(topic, payload, qos, self.max_payload)
        client = self._client
        if client is None:
            raise UplinkError("greengrass: not connected")
        if self._lost is not None and self._lost.is_set():
            raise UplinkError(f"greengrass: IPC connection lost: {self._lost_reason}")

        from awsiot.greengrasscoreipc import model

        props = [model.UserProperty(key=k, value=v) for k, v in user_properties] or None
        try:
            cfut = client.publish_to_iot_core_async(
                topic_name=topic,
                qos=model.QOS.AT_LEAST_ONCE if qos == 1 else model.QOS.AT_MOST_ONCE,
                payload=payload,
                user_properties=props,
            )
        except Exception as exc:  # closed connection: awscrt raises synchronously
            raise map_ipc_error(exc, "publish") from exc
        await self._await(cfut, "publish")

    async def _await(self, cfut: concurrent.futures.Future[Any], what: str) -> Any:
        """Wait for an IPC future, failing fast if the connection drops meanwhile."""
        assert self._lost is not None
        fut = asyncio.wrap_future(cfut)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {fut, lost}, timeout=self._publish_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
        if fut in done:
            try:
                return fut.result()
            except Exception as exc:
                raise map_ipc_error(exc, what) from exc
        fut.cancel()
        if lost in done:
            raise UplinkError(f"greengrass: IPC connection lost during {what}: {self._lost_reason}")
        raise UplinkError(f"greengrass: {what} timed out after {self._publish_timeout_s:g} s")
