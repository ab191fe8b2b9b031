"""A Greengrass IPC server for tests: the nucleus side of eventstream RPC on a unix socket.

It speaks enough of the protocol for awsiotsdk's real ``GreengrassCoreIPCClientV2`` to
connect (SVCUID checked in the CONNECT payload) and to call PublishToIoTCore,
GetConfiguration, SubscribeToConfigurationUpdate, SubscribeToValidateConfigurationUpdates,
SendConfigurationValidityReport and UpdateState. Written from the wire format:

    message  = prelude | prelude_crc | headers | payload | message_crc
    prelude  = total_length:u32 | headers_length:u32          (big-endian)
    crc      = CRC32 (zlib) of everything before it
    header   = name_len:u8 | name | type:u8 | value
RPC headers: ``:message-type`` (i32), ``:message-flags`` (i32), ``:stream-id`` (i32),
``operation`` (string, first message of a stream), ``service-model-type`` and
``:content-type`` (string) on application messages. Payloads are JSON shapes.

Runs on the test's asyncio loop (``asyncio.start_unix_server``); the awscrt client runs
on its own threads, so both sides are real.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# message types and flags (aws-c-event-stream event_stream_rpc.h)
APPLICATION_MESSAGE = 0
APPLICATION_ERROR = 1
PING = 2
PING_RESPONSE = 3
CONNECT = 4
CONNECT_ACK = 5
PROTOCOL_ERROR = 6
INTERNAL_ERROR = 7
CONNECTION_ACCEPTED = 0x1
TERMINATE_STREAM = 0x2

NS = "aws.greengrass#"

# header value types
_TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)


class FrameError(Exception):
    pass


def encode_headers(headers: dict[str, Any]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        n = name.encode()
        out += struct.pack(">B", len(n)) + n
        if isinstance(value, bool):
            out += struct.pack(">B", _TRUE if value else _FALSE)
        elif isinstance(value, int):
            out += struct.pack(">Bi", _I32, value)
        elif isinstance(value, bytes):
            out += struct.pack(">BH", _BYTES, len(value)) + value
        else:
            v = str(value).encode()
            out += struct.pack(">BH", _STRING, len(v)) + v
    return bytes(out)


def decode_headers(data: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    i = 0
    while i < len(data):
        (nlen,) = struct.unpack_from(">B", data, i)
        i += 1
        name = data[i : i + nlen].decode()
        i += nlen
        (typ,) = struct.unpack_from(">B", data, i)
        i += 1
        value: Any
        if typ == _TRUE:
            value = True
        elif typ == _FALSE:
            value = False
        elif typ == _BYTE:
            (value,) = struct.unpack_from(">b", data, i)
            i += 1
        elif typ == _I16:
            (value,) = struct.unpack_from(">h", data, i)
            i += 2
        elif typ == _I32:
            (value,) = struct.unpack_from(">i", data, i)
            i += 4
        elif typ in (_I64, _TIMESTAMP):
            (value,) = struct.unpack_from(">q", data, i)
            i += 8
        elif typ in (_BYTES, _STRING):
            (vlen,) = struct.unpack_from(">H", data, i)
            i += 2
            raw = data[i : i + vlen]
            i += vlen
            value = raw.decode() if typ == _STRING else raw
        elif typ == _UUID:
            value = uuid.UUID(bytes=data[i : i + 16])
            i += 16
        else:
            raise FrameError(f"unknown header type {typ}")
        headers[name] = value
    return headers


def encode_frame(headers: dict[str, Any], payload: bytes = b"") -> bytes:
    h = encode_headers(headers)
    total = 12 + len(h) + len(payload) + 4
    prelude = struct.pack(">II", total, len(h))
    head = prelude + struct.pack(">I", zlib.crc32(prelude))
    body = head + h + payload
    return body + struct.pack(">I", zlib.crc32(body))


async def read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    headers, payload, _ = await read_frame_sized(reader)
    return headers, payload


async def read_frame_sized(reader: asyncio.StreamReader
                           ) -> tuple[dict[str, Any], bytes, int]:
    """A frame's headers, payload and total length on the wire."""
    head = await reader.readexactly(12)
    total, hlen, pcrc = struct.unpack(">III", head)
    if zlib.crc32(head[:8]) != pcrc:
        raise FrameError("prelude CRC mismatch")
    rest = await reader.readexactly(total - 12)
    (mcrc,) = struct.unpack(">I", rest[-4:])
    if zlib.crc32(head + rest[:-4]) != mcrc:
        raise FrameError("message CRC mismatch")
    return decode_headers(rest[:hlen]), rest[hlen:-4], total


@dataclass
class Published:
    topic: str
    payload: bytes
    qos: str
    user_properties: list[tuple[str, str]]
    frame_size: int = 0  # bytes of the eventstream frame that carried it


@dataclass
class _Stream:
    conn: _Conn
    stream_id: int
    operation: str
    key_path: list[str] = field(default_factory=list)


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.authed = False

    def send(self, headers: dict[str, Any], payload: bytes = b"") -> None:
        if not self.writer.is_closing():
            self.writer.write(encode_frame(headers, payload))

    def reply(
        self,
        stream_id: int,
        model: str,
        body: dict[str, Any],
        *,
        error: bool = False,
        terminate: bool = False,
    ) -> None:
        self.send(
            {
                ":message-type": APPLICATION_ERROR if error else APPLICATION_MESSAGE,
                ":message-flags": TERMINATE_STREAM if (terminate or error) else 0,
                ":stream-id": stream_id,
                ":content-type": "application/json",
                "service-model-type": NS + model,
            },
            json.dumps(body).encode(),
        )


def thing_topic_policy(thing: str) -> Callable[[str], bool]:
    """The recipe's mqttproxy policy: PublishToIoTCore only on ``vehicles/{thing}/*``."""
    prefix = f"vehicles/{thing}/"
    return lambda topic: topic.startswith(prefix) and len(topic) > len(prefix)


class GgIpcServer:
    """The nucleus side. Use as ``async with GgIpcServer(path, svcuid=...) as srv``."""

    def __init__(
        self,
        path: Path,
        *,
        svcuid: str = "test-svcuid",
        component: str = "com.vehicleedge.Daemon",
        configuration: dict[str, Any] | None = None,
        may_publish: Callable[[str], bool] = lambda topic: True,
    ) -> None:
        self.path = Path(path)
        self.svcuid = svcuid
        self.component = component
        self.configuration: dict[str, Any] = dict(configuration or {})
        self.may_publish = may_publish
        self.published: list[Published] = []
        self.validity_reports: list[dict[str, Any]] = []
        self.states: list[str] = []
        self.operations: list[str] = []
        self.publish_service_error: str | None = None  # e.g. "offline" (nucleus lite)
        self.publish_delay_s = 0.0
        # like nucleus lite (GGL_IPC_MAX_MSG_LEN): a frame longer than this after its
        # 12-byte prelude resets the connection, no error reply; None: no limit
        self.max_message: int | None = None
        self.resets = 0
        self.connects = 0  # accepted CONNECTs
        self._frame_size = 0
        self._conns: set[_Conn] = set()
        self._streams: list[_Stream] = []
        self._server: asyncio.base_events.Server | None = None
        self._reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connected = asyncio.Event()

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT": str(self.path),
            "SVCUID": self.svcuid,
        }

    async def __aenter__(self) -> GgIpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def stop(self) -> None:
        """Stop listening and drop every client connection (the nucleus went away)."""
        if self._server is not None:
            self._server.close()
        self.drop_connections()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.path.unlink(missing_ok=True)

    def drop_connections(self) -> None:
        for conn in list(self._conns):
            conn.writer.close()
        self._conns.clear()
        self._streams.clear()
        self.connected.clear()

    # ------------------------------------------------------------------ test controls

    async def update_configuration(self, value: dict[str, Any]) -> None:
        """Apply a new component configuration and notify SubscribeToConfigurationUpdate."""
        self.configuration = value
        for s in list(self._streams):
            if s.operation == "SubscribeToConfigurationUpdate":
                s.conn.reply(
                    s.stream_id,
                    "ConfigurationUpdateEvents",
                    {
                        "configurationUpdateEvent": {
                            "componentName": self.component,
                            "keyPath": s.key_path,
                        }
                    },
                )
                await s.conn.writer.drain()

    async def validate_configuration(
        self, value: dict[str, Any], *, deployment_id: str, within_s: float = 5.0
    ) -> dict[str, Any]:
        """Ask validators about ``value`` (a deployment); return the component's report."""
        for s in list(self._streams):
            if s.operation == "SubscribeToValidateConfigurationUpdates":
                s.conn.reply(
                    s.stream_id,
                    "ValidateConfigurationUpdateEvents",
                    {
                        "validateConfigurationUpdateEvent": {
                            "componentName": self.component,
                            "configuration": value,
                            "deploymentId": deployment_id,
                        }
                    },
                )
                await s.conn.writer.drain()
        async with asyncio.timeout(within_s):
            while True:
                report = await self._reports.get()
                if report.get("deploymentId") == deployment_id:
                    return report

    def subscribers(self, operation: str) -> int:
        return sum(1 for s in self._streams if s.operation == operation)

    # ------------------------------------------------------------------ protocol

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        try:
            while True:
                headers, payload, size = await read_frame_sized(reader)
                if self.max_message is not None and size - 12 > self.max_message:
                    self.resets += 1
                    break
                self._frame_size = size
                await self._on_frame(conn, headers, payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, FrameError):
            pass
        finally:
            self._conns.discard(conn)
            self._streams = [s for s in self._streams if s.conn is not conn]
            writer.close()

    async def _on_frame(self, conn: _Conn, headers: dict[str, Any], payload: bytes) -> None:
        mtype = headers.get(":message-type")
        sid = headers.get(":stream-id", 0)
        if mtype == CONNECT:
            try:
                token = json.loads(payload or b"{}").get("authToken")
            except ValueError:
                token = None
            ok = token == self.svcuid
            conn.authed = ok
            conn.send(
                {
                    ":message-type": CONNECT_ACK,
                    ":message-flags": CONNECTION_ACCEPTED if ok else 0,
                    ":stream-id": 0,
                }
            )
            if ok:
                self.connects += 1
                self.connected.set()
            return
        if mtype == PING:
            conn.send({":message-type": PING_RESPONSE, ":message-flags": 0, ":stream-id": 0})
            return
        if not conn.authed:
            conn.send({":message-type": PROTOCOL_ERROR, ":message-flags": 0, ":stream-id": 0})
            conn.writer.close()
            return
        if mtype != APPLICATION_MESSAGE:
            return
        flags = headers.get(":message-flags", 0)
        op = headers.get("operation")
        if op is None:  # a follow-up on an existing stream: only TERMINATE matters here
            if flags & TERMINATE_STREAM:
                self._streams = [
                    s for s in self._streams if not (s.conn is conn and s.stream_id == sid)
                ]
            return
        name = str(op).removeprefix(NS)
        self.operations.append(name)
        body = json.loads(payload or b"{}")
        handler = getattr(self, f"_op_{name}", None)
        if handler is None:
            conn.reply(sid, "ServiceError", {"message": f"{name} not implemented"}, error=True)
            return
        await handler(conn, sid, body)

    async def _op_PublishToIoTCore(self, conn: _Conn, sid: int, body: dict[str, Any]) -> None:
        topic = body.get("topicName", "")
        if not self.may_publish(topic):
            conn.reply(
                sid,
                "UnauthorizedError",
                {"message": f"Principal {self.component} is not authorized to publish to {topic}"},
                error=True,
            )
            return
        if self.publish_service_error:
            conn.reply(sid, "ServiceError", {"message": self.publish_service_error}, error=True)
            return
        if self.publish_delay_s:
            await asyncio.sleep(self.publish_delay_s)
        props = [(p["key"], p["value"]) for p in body.get("userProperties", [])]
        self.published.append(
            Published(
                topic=topic,
                payload=base64.b64decode(body.get("payload", "")),
                qos=str(body.get("qos", "")),
                user_properties=props,
                frame_size=self._frame_size,
            )
        )
        conn.reply(sid, "PublishToIoTCoreResponse", {}, terminate=True)

    async def _op_GetConfiguration(self, conn: _Conn, sid: int, body: dict[str, Any]) -> None:
        value: Any = self.configuration
        for key in body.get("keyPath") or []:
            if not isinstance(value, dict) or key not in value:
                conn.reply(sid, "ResourceNotFoundError", {"message": f"no key {key}"}, error=True)
                return
            value = value[key]
        if not isinstance(value, dict):
            value = {body["keyPath"][-1]: value}
        conn.reply(
            sid,
            "GetConfigurationResponse",
            {"componentName": body.get("componentName") or self.component, "value": value},
            terminate=True,
        )

    async def _op_SubscribeToConfigurationUpdate(
        self, conn: _Conn, sid: int, body: dict[str, Any]
    ) -> None:
        self._streams.append(
            _Stream(conn, sid, "SubscribeToConfigurationUpdate", list(body.get("keyPath") or []))
        )
        conn.reply(sid, "SubscribeToConfigurationUpdateResponse", {})

    async def _op_SubscribeToValidateConfigurationUpdates(
        self, conn: _Conn, sid: int, body: dict[str, Any]
    ) -> None:
        self._streams.append(_Stream(conn, sid, "SubscribeToValidateConfigurationUpdates"))
        conn.reply(sid, "SubscribeToValidateConfigurationUpdatesResponse", {})

    async def _op_SendConfigurationValidityReport(
        self, conn: _Conn, sid: int, body: dict[str, Any]
    ) -> None:
        report = dict(body.get("configurationValidityReport") or {})
        self.validity_reports.append(report)
        self._reports.put_nowait(report)
        conn.reply(sid, "SendConfigurationValidityReportResponse", {}, terminate=True)

    async def _op_UpdateState(self, conn: _Conn, sid: int, body: dict[str, Any]) -> None:
        self.states.append(str(body.get("state")))
        conn.reply(sid, "UpdateStateResponse", {}, terminate=True)
