"""File uplink: every publish is one JSON line ``{"topic": ..., "payload": {...}}``.

What ``edge replay`` writes, and a way to run the daemon with no broker at all. A
publish counts as acknowledged once the line is written and flushed.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from edge.errors import UplinkError
from edge.uplinks.base import MAX_PAYLOAD, check_publish


def format_line(topic: str, payload: bytes) -> str:
    body = json.loads(payload)
    return json.dumps({"topic": topic, "payload": body}, separators=(",", ":")) + "\n"


class FileUplink:
    name = "file"
    max_payload = MAX_PAYLOAD

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh: IO[str] | None = None
        # publishes arrive from several forwarder workers: one write at a time, in the
        # order they were asked for (asyncio.Lock wakes its waiters first come, first
        # served), so the file keeps publish order
        self._order = asyncio.Lock()

    async def __aenter__(self) -> Self:
        try:
            # what is published says where the car went: a new file (and folder) is
            # private; an existing path (a FIFO, /dev/stdout) is used as it is
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")
        except OSError as exc:
            raise UplinkError(f"cannot open {self.path}: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None:
        check_publish(topic, payload, qos, self.max_payload)
        if self._fh is None:
            raise UplinkError("file uplink is not open")
        line = format_line(topic, payload)
        try:
            async with self._order:
                await asyncio.to_thread(self._write, line)
        except OSError as exc:
            raise UplinkError(f"write to {self.path} failed: {exc}") from exc

    def _write(self, line: str) -> None:
        assert self._fh is not None
        self._fh.write(line)
        self._fh.flush()
