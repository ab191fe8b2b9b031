"""File uplink: every publish is one JSON line ``{"topic": ..., "payload": {...}}``.

What ``edge replay`` writes, and a way to run the daemon with no broker at all. A
publish counts as acknowledged once the line is written and flushed. No IoT Core
quota applies (``iot_quota`` is false) and the connection is never lost.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from edge.errors import UplinkError
from edge.uplinks.base import UplinkBase


def format_line(topic: str, payload: bytes) -> str:
    body = json.loads(payload)
    return json.dumps({"topic": topic, "payload": body}, separators=(",", ":")) + "\n"


class FileUplink(UplinkBase):
    name = "file"
    iot_quota = False

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._fh: IO[str] | None = None
        # publishes arrive from several forwarder workers: one write at a time, in the
        # order they were asked for (asyncio.Lock wakes its waiters first come, first
        # served), so the file keeps publish order
        self._order = asyncio.Lock()

    async def _connect(self) -> None:
        try:
            # what is published says where the car went: a new file (and folder) is
            # private; an existing path (a FIFO, /dev/stdout) is used as it is
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")
        except OSError as exc:
            raise UplinkError(f"cannot open {self.path}: {exc}") from exc

    async def _disconnect(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    async def _publish(self, topic: str, payload: bytes, qos: int,
                       user_properties: Sequence[tuple[str, str]]) -> None:
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
