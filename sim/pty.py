"""A fake serial device: a pseudo-terminal whose slave side a daemon opens as its port.

``PtySerial`` owns the master side. Bytes written with ``write`` arrive on the slave
(``.path``, e.g. ``/dev/pts/7``) exactly as a USB GNSS receiver would deliver them.
The slave is put in raw mode (no echo, no line editing) and one slave descriptor is
held open for the pty's lifetime, so the device does not hang up while the daemon
closes and reopens it. Whatever the daemon writes to the port is read and discarded
(counted), so it can never fill the pty and stall the daemon.

Back-pressure: when the daemon does not read, the pty buffer fills and ``write`` waits
for room up to ``write_timeout_s`` (None: as long as it takes); after that the rest of
that chunk is dropped and counted in ``dropped_bytes`` (a UART overrun on a real device).
``pending()`` tells how many written bytes nobody has read yet, so a replay can wait
until the daemon is actually reading (``wait_drained``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios
import tty
from types import TracebackType
from typing import Self


class PtySerial:
    def __init__(self, *, write_timeout_s: float | None = 1.0) -> None:
        self.write_timeout_s = write_timeout_s
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self._master, False)
        self.path: str = os.ttyname(self._slave)
        self.written_bytes = 0
        self.written_units = 0  # = written_bytes (the name the replay's clock reads)
        self.dropped_bytes = 0
        self.received_bytes = 0  # written by the daemon towards the "device"
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"PtySerial(path={self.path!r})"

    @property
    def master_fd(self) -> int:
        return self._master

    # The daemon may write to the device (receiver configuration): read and discard it.
    def _discard(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self.received_bytes += len(data)

    def _ensure_reader(self) -> None:
        if self._reader_loop is None:
            loop = asyncio.get_running_loop()
            loop.add_reader(self._master, self._discard)
            self._reader_loop = loop

    async def write(self, data: bytes) -> int:
        """Write ``data`` to the device; return how many bytes were delivered."""
        if self._closed:
            raise OSError(errno.EBADF, "pty closed")
        self._ensure_reader()
        view = memoryview(data)
        sent = 0
        loop = asyncio.get_running_loop()
        timeout = self.write_timeout_s
        deadline = loop.time() + (timeout if timeout is not None else float("inf"))
        while sent < len(view):
            try:
                sent += os.write(self._master, view[sent:])
                continue
            except BlockingIOError:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            ready: asyncio.Future[None] = loop.create_future()

            def _writable(f: asyncio.Future[None] = ready) -> None:
                if not f.done():
                    f.set_result(None)

            loop.add_writer(self._master, _writable)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready, min(remaining, 0.05))
            finally:
                loop.remove_writer(self._master)
        self.written_bytes += sent
        self.written_units = self.written_bytes
        self.dropped_bytes += len(view) - sent
        return sent

    def pending(self) -> int:
        """Bytes written to the device that no reader has consumed yet."""
        buf = fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until everything written was read (someone has the port open)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending() > 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader_loop is not None:
            with contextlib.suppress(Exception):
                self._reader_loop.remove_reader(self._master)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
