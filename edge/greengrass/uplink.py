"""Greengrass v2 uplink: PublishToIoTCore over the nucleus IPC socket.

Runs inside a Greengrass component (classic or lite). The nucleus gives the component
``AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT`` and ``SVCUID``; the recipe's
accessControl must grant ``aws.greengrass#PublishToIoTCore`` on ``vehicles/{iot:thingName}/*``.

``publish`` returns only when the nucleus answered success. Nucleus classic then owns
delivery (its spooler); nucleus lite answers with ServiceError at once when offline,
which becomes ``PublishFailed``: the row stays in our outbox and the forwarder retries it
after a capped, jittered backoff on the same connection (reconnecting would not help).

Nucleus lite caps an IPC message at 10,000 bytes (``GGL_IPC_MAX_MSG_LEN``: the
eventstream frame after its 12-byte prelude, the payload base64-encoded inside JSON;
measured on 2.6.0 to the byte) and resets the connection above it, without an error
reply. On lite ``max_payload`` is therefore ~7 kB (what fits
with any legal topic; the forwarder sizes telemetry batches by it) and ``publish``
computes the exact frame size first (``ipc_message_size``): a message that cannot fit is
``PublishRejected``, never sent. Lite is recognised by its socket (``gg-ipc.socket``;
classic's is ``ipc.socket``), which only changes the limit.

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
from typing import TYPE_CHECKING, Any

import structlog

from edge.errors import PublishFailed, PublishRejected, UplinkAuthError, UplinkError
from edge.uplinks.base import MAX_PAYLOAD, UplinkBase, check_publish

if TYPE_CHECKING:
    from edge.config import UplinkConfig

log = structlog.get_logger()

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
TOKEN_ENV = "SVCUID"

# nucleus lite: the largest IPC message it accepts (headers + payload + CRC: the frame
# after its prelude; measured on 2.6.0: a 7,293 B payload on vehicles/<thing>/telemetry
# with a 36-byte topic passes, 7,294 B resets the connection)
LITE_MAX_MESSAGE = 10_000
PRELUDE = 12
LITE_SOCKET_NAME = "gg-ipc.socket"
_OPERATION = "aws.greengrass#PublishToIoTCore"
_MODEL = "aws.greengrass#PublishToIoTCoreRequest"
# an application message's frame around its JSON payload: prelude (12) + message CRC (4)
# + the headers awsiotsdk sends on a stream's first message: :message-type,
# :message-flags, :stream-id (int32), operation, :content-type, service-model-type
FRAME_OVERHEAD = 16 + sum(
    1 + len(name) + 1 + size for name, size in (
        (":message-type", 4), (":message-flags", 4), (":stream-id", 4),
        ("operation", 2 + len(_OPERATION)), (":content-type", 2 + len("application/json")),
        ("service-model-type", 2 + len(_MODEL))))
# the request's JSON keys and punctuation around topic and payload (qos 1, no properties)
_JSON_OVERHEAD = len('{"topicName": "", "qos": "1", "payload": ""}')
# raw payload that fits one lite message with any topic IoT Core accepts (<= 256 bytes)
LITE_MAX_PAYLOAD = (LITE_MAX_MESSAGE + PRELUDE - FRAME_OVERHEAD - _JSON_OVERHEAD - 256) // 4 * 3


def ipc_message_size(topic: str, payload: bytes, qos: int = 1,
                     user_properties: Sequence[tuple[str, str]] = ()) -> int:
    """Bytes of the eventstream frame awsiotsdk writes for this PublishToIoTCore (the
    JSON request built by the SDK's own serializer, payload base64-encoded inside)."""
    import json

    from awsiot.greengrasscoreipc import model

    req = model.PublishToIoTCoreRequest(
        topic_name=topic, qos=model.QOS.AT_LEAST_ONCE if qos == 1 else model.QOS.AT_MOST_ONCE,
        payload=payload,
        user_properties=[model.UserProperty(key=k, value=v) for k, v in user_properties]
        or None)
    return FRAME_OVERHEAD + len(json.dumps(req._to_payload()).encode())


def is_nucleus_lite(ipc_socket: str | None) -> bool:
    """Nucleus lite's IPC socket is ``.../gg-ipc.socket``; classic's ``.../ipc.socket``.
    Unknown (no socket): treated as lite, the stricter one."""
    return not ipc_socket or os.path.basename(ipc_socket) != "ipc.socket"


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


class GreengrassUplink(UplinkBase):
    """``Uplink`` over Greengrass IPC (``GreengrassCoreIPCClientV2.publish_to_iot_core``).

    ``user_properties`` is false: the forwarder does not compress through the nucleus
    (as before the Uplink protocol declared it)."""

    name = "greengrass"

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
        super().__init__()
        self._ipc_socket = ipc_socket
        self._authtoken = authtoken
        if connect_timeout_s is None:
            connect_timeout_s = config.connect_timeout_s if config is not None else 10.0
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        sock = ipc_socket or os.environ.get(SOCKET_ENV)
        self.lite = is_nucleus_lite(sock)
        # on lite the IPC message cap, not IoT Core's 128 KiB, bounds a publish
        self.max_message = LITE_MAX_MESSAGE if self.lite else None
        self.max_payload = LITE_MAX_PAYLOAD if self.lite else MAX_PAYLOAD
        self._client: Any = None  # GreengrassCoreIPCClientV2 while connected
        self._lost_reason: str | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._lost.is_set()

    async def _connect(self) -> None:
        if self._client is not None:
            raise RuntimeError("GreengrassUplink is already entered")
        try:
            from awsiot.greengrasscoreipc.client import GreengrassCoreIPCClient
            from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
        except ImportError as exc:
            raise UplinkError("uplink.kind = 'greengrass' needs the awsiotsdk package") from exc

        lost = self._lost
        self._lost_reason = None

        def on_disconnect(reason: Exception | None) -> None:  # awscrt thread
            def mark() -> None:
                self._lost_reason = repr(reason) if reason else "closed"
                lost.set()

            self._post(mark)

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
        # executor=None: no callbacks of ours run on the executor; avoids a thread pool.
        self._client = GreengrassCoreIPCClientV2(
            client=GreengrassCoreIPCClient(conn), executor=None
        )
        log.info("uplink_connected", uplink=self.name)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            closed = client.close(executor_wait=False)
            async with asyncio.timeout(2.0):
                await asyncio.wrap_future(closed)
        except Exception as err:  # closing a dead connection: nothing left to do
            log.debug("uplink_close_error", uplink=self.name, error=repr(err))

    def check(self, topic: str, payload: bytes, qos: int,
              user_properties: Sequence[tuple[str, str]]) -> None:
        """IoT Core's limits, and on lite the exact IPC message size."""
        check_publish(topic, payload, qos, MAX_PAYLOAD)
        if self.max_message is not None:
            size = ipc_message_size(topic, payload, qos, user_properties) - PRELUDE
            if size > self.max_message:
                raise PublishRejected(
                    f"{topic}: payload {len(payload)} B is a {size} B IPC message, over "
                    f"nucleus lite's {self.max_message} B")

    async def _publish(self, topic: str, payload: bytes, qos: int,
                       user_properties: Sequence[tuple[str, str]]) -> None:
        client = self._client
        if client is None:
            raise UplinkError("greengrass: not connected")
        if self._lost.is_set():
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
        """Wait for an IPC future, failing fast if the connection drops meanwhile.

        However this ends (also cancelled), the IPC future's outcome is consumed: when
        the connection closes later, awsiotsdk fails it with StreamClosedError, which
        would otherwise be logged as "Future exception was never retrieved"."""
        fut = asyncio.wrap_future(cfut)
        fut.add_done_callback(_consume)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {fut, lost}, timeout=self._publish_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            if not fut.done():
                fut.cancel()
        if fut in done and not fut.cancelled():
            try:
                return fut.result()
            except Exception as exc:
                from awsiot.greengrasscoreipc import model

                if isinstance(exc, model.ServiceError):  # e.g. lite offline: not the link
                    text = getattr(exc, "message", None) or str(exc) or "ServiceError"
                    raise PublishFailed(f"{what}: nucleus service error: {text}") from exc
                raise map_ipc_error(exc, what) from exc
        fut.cancel()
        if lost in done:
            raise UplinkError(f"greengrass: IPC connection lost during {what}: {self._lost_reason}")
        raise UplinkError(f"greengrass: {what} timed out after {self._publish_timeout_s:g} s")


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
