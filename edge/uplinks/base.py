"""The one interface every uplink implements (iotcore, greengrass, mqtt, file).

An uplink is an async context manager: entering connects (raising ``UplinkError`` or
``UplinkAuthError``), leaving disconnects. It can be entered again after it was left,
never twice at once. The reconnect loop belongs to the caller (``edge.app``).

``Uplink`` declares everything the forwarder asks of an uplink: its ``name``, the
largest payload of one publish (``max_payload``), whether it carries MQTT 5 user
properties (``user_properties``: a compressed batch declares its content-encoding in
one), whether AWS IoT Core's per-connection quotas apply (``iot_quota``), and ``lost``,
an event set when the connection dropped. ``UplinkBase`` is the shell the four
implementations share: the context manager around ``_connect`` / ``_disconnect``, the
IoT Core checks before ``_publish``, ``lost``, and handing a result from a library's
thread to the event loop (``_post``).

``publish`` returns only once the far side acknowledged the message (MQTT PUBACK with a
reason code < 0x80, Greengrass IPC success, a flushed line in a file). It raises
``PublishRejected`` when this message will never be accepted as it is (ACL denied,
payload too large, bad topic) and ``UplinkError`` when the connection failed; library
exceptions never leak out.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from edge.errors import PublishRejected, UplinkError
from edge.private import exposure

# AWS IoT Core hard limits, enforced by every uplink so that a message that passes
# locally also passes in the cloud.
MAX_PAYLOAD = 128 * 1024
MAX_TOPIC_SLASHES = 7
MAX_PUBLISH_PER_S = 100
MAX_BYTES_PER_S = 512 * 1024


class Uplink(Protocol):
    name: str
    max_payload: int
    user_properties: bool
    iot_quota: bool

    @property
    def lost(self) -> asyncio.Event: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None: ...


def check_topic(topic: str) -> str | None:
    """Why ``topic`` may not be published to AWS IoT Core, or None when it may."""
    if not topic or len(topic.encode()) > 256:
        return "topic empty or longer than 256 bytes"
    if topic.startswith("$"):
        return "reserved topic ($...)"
    if "+" in topic or "#" in topic:
        return "wildcards are not allowed in a publish topic"
    if topic.count("/") > MAX_TOPIC_SLASHES:
        return f"topic has more than {MAX_TOPIC_SLASHES} slashes"
    return None


def key_problem(key: Path) -> str | None:
    """Why a client private key may not be used (everyone can read it), or None. The
    group may read it (a Greengrass key is often root:ggc_group 0640)."""
    if not key.exists():
        return f"{key}: No such file or directory"
    return exposure(key, 0o004, owner=False)


def check_publish(topic: str, payload: bytes, qos: int, max_payload: int = MAX_PAYLOAD) -> None:
    """Raise ``PublishRejected`` for what AWS IoT Core would refuse: every uplink calls
    this first, so a message that passes here passes in the cloud too."""
    why = check_topic(topic)
    if why:
        raise PublishRejected(f"{topic}: {why}")
    if len(payload) > max_payload:
        raise PublishRejected(f"{topic}: payload {len(payload)} B over {max_payload} B")
    if qos not in (0, 1):
        raise PublishRejected(f"{topic}: QoS {qos} not supported (0 or 1)")


# PUBACK reason codes that mean "this message, as it is, will never be accepted": the
# row is dropped (counted). Every other failure code (0x80 unspecified, 0x83
# implementation specific, 0x97 quota exceeded -- how AWS IoT Core throttles) is
# transient: the row goes back to ready and is sent again after a backoff.
PERMANENT_PUBACK = {
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x95: "packet too large",
    0x99: "payload format invalid",
}


def check_puback(topic: str, code: int) -> None:
    """Turn a PUBACK reason code into the project's errors (nothing for success)."""
    if code < 0x80:
        return
    if code in PERMANENT_PUBACK:
        raise PublishRejected(
            f"{topic}: broker rejected the publish: {PERMANENT_PUBACK[code]} ({code:#x})",
            reason_code=code,
        )
    raise UplinkError(f"{topic}: broker refused the publish for now (reason {code:#x})")


class UplinkBase:
    """The shell every uplink shares (see the module's docstring). A subclass sets
    ``name`` and implements ``_connect``, ``_disconnect`` and ``_publish``; ``check``
    may add limits of its own (it runs before every publish)."""

    name = "uplink"
    max_payload = MAX_PAYLOAD
    user_properties = False
    iot_quota = True

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lost = asyncio.Event()
        # what a library's thread hands the loop (``_post``): run in order, one wake-up
        # for all that arrived while the loop was busy
        self._posted: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._post_lock = threading.Lock()
        self._post_scheduled = False

    @property
    def lost(self) -> asyncio.Event:
        """Set when the connection dropped; the caller leaves the context and retries."""
        return self._lost

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._lost = asyncio.Event()
        await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._disconnect()

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.check(topic, payload, qos, user_properties)
        await self._publish(topic, payload, qos, user_properties)

    def check(self, topic: str, payload: bytes, qos: int,
              user_properties: Sequence[tuple[str, str]]) -> None:
        """Raise ``PublishRejected`` for what may not be published (IoT Core's limits)."""
        check_publish(topic, payload, qos, self.max_payload)

    async def _connect(self) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    async def _publish(self, topic: str, payload: bytes, qos: int,
                       user_properties: Sequence[tuple[str, str]]) -> None:
        raise NotImplementedError

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop (from a library's thread), after what was
        posted before it; nothing once the loop is closed. PUBACKs arrive in bursts while
        a backlog drains: one loop wake-up (``call_soon_threadsafe``, a write to the
        loop's self-pipe) serves every call posted until the loop runs them, not one
        each (+17 % drain throughput on asyncio's loop)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._post_lock:
            self._posted.append((fn, args))
            if self._post_scheduled:
                return
            self._post_scheduled = True
        try:
            loop.call_soon_threadsafe(self._run_posted)
        except RuntimeError:  # closed meanwhile: nothing will run them
            with self._post_lock:
                self._posted.clear()
                self._post_scheduled = False

    def _run_posted(self) -> None:
        with self._post_lock:
            batch, self._posted = self._posted, collections.deque()
            self._post_scheduled = False
        for fn, args in batch:
            try:
                fn(*args)
            except Exception as exc:  # as the loop does for one callback: report, go on
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"{self.name}: a posted callback failed", "exception": exc})


def resolve(fut: asyncio.Future[Any], value: Any) -> None:
    """``fut``'s result, unless it is done already (cancelled, failed)."""
    if not fut.done():
        fut.set_result(value)


def fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    """``fut``'s exception, unless it is done already."""
    if not fut.done():
        fut.set_exception(exc)
