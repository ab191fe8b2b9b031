"""A fake slcan (Lawicel) USB-CAN adapter on a real pseudo-terminal.

The daemon opens ``adapter.path`` exactly as it would open ``/dev/ttyACM0`` of a CANable
or USBtin (python-can ``interface="slcan"``). This side is the device: a thread answers
the commands python-can sends on open (``C``, ``S0``-``S8``, ``s..``, ``O``/``L``, ``V``,
``v``, ``N``, ``F``, ``Z0``/``Z1``) with ``\\r`` (``\\a`` for unknown ones), records the
frames the host transmits (``t``/``T``/``r``/``R``/``d``/``D``/``b``/``B``, answered with
``z``/``Z``) and hands them to ``on_frame`` (a fake ECU can answer OBD requests that way).

``send()`` streams a received-from-the-bus frame to the host, but only while the channel
is open (``O``), as a real adapter does; it is safe from any thread or from asyncio
(the master side is non-blocking; a frame that does not fit the tty buffer is dropped
and counted, like an adapter overflow). ``unplug()`` closes the master (the host sees a
hang-up); ``replug()`` makes a new pty and points the stable ``link`` path at it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

FrameCallback = Callable[[int, bytes, bool], None]


class SlcanPtyAdapter:
    def __init__(
        self,
        *,
        link: Path | str | None = None,
        timestamps: bool = False,
        version: str = "1013",
        serial_number: str = "A123",
        on_frame: FrameCallback | None = None,
        autostart: bool = True,
    ) -> None:
        self._tmpdir: str | None = None
        if link is None:  # a stable path across unplug/replug, as udev gives a real one
            self._tmpdir = tempfile.mkdtemp(prefix="slcan-")
            link = Path(self._tmpdir) / "ttyACM0"
        self.link = Path(link)
        self.timestamps = timestamps
        self.version = version
        self.serial_number = serial_number
        self.on_frame = on_frame
        self.opened = threading.Event()  # set while the host has the channel open
        self.commands: list[str] = []  # every command line the host sent, in order
        self.received: list[tuple[int, bytes, bool]] = []  # frames the host transmitted
        self.bitrate_cmd: str | None = None
        self.sent = 0
        self.written_units = 0  # bytes of frames written whole (with pending(): read position)
        self.dropped = 0
        self._master = -1
        self._slave = -1
        self._tty = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._ms = 0
        if autostart:
            self.start()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Plug in: a new pty, the link pointed at it (no-op when already plugged)."""
        if self._master >= 0:
            return self
        master, slave = os.openpty()
        tty.setraw(slave)  # no CR->NL translation, no echo, before anyone opens it
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._tty = os.ttyname(slave)
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(self._tty, tmp)
        os.replace(tmp, self.link)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(master,), name="slcan-adapter", daemon=True
        )
        self._thread.start()
        return self

    @property
    def path(self) -> str:
        """What the host opens (as ``can.channel``): a link that survives replug."""
        return str(self.link)

    @property
    def tty_path(self) -> str:
        return self._tty

    @property
    def plugged(self) -> bool:
        return self._master >= 0

    def unplug(self) -> None:
        """Pull the adapter out: the host's reads fail (EIO/hang-up)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        with self._lock:
            for fd in (self._master, self._slave):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._master = self._slave = -1
        self.opened.clear()
        # as udev does when a USB adapter is pulled: the by-id link goes with the device,
        # so a retrying host never opens whatever pty reuses the freed name
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()

    def replug(self) -> Self:
        self.unplug()
        return self.start()

    def close(self) -> None:
        self.unplug()
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        if self._tmpdir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._tmpdir)
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_open(self, timeout: float = 5.0) -> bool:
        return self.opened.wait(timeout)

    def pending(self) -> int:
        """Bytes sent to the host that it has not read yet (0 when unplugged)."""
        with self._lock:
            if self._slave < 0:
                return 0
            try:
                buf = fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0")
            except OSError:
                return 0
        return int(struct.unpack("i", buf)[0])

    # ------------------------------------------------------------------ to the host
    def send(
        self,
        arbitration_id: int,
        data: bytes,
        extended: bool = False,
        *,
        remote: bool = False,
    ) -> bool:
        """Stream one bus frame to the host. False when closed/unplugged or overflowing."""
        if not self.opened.is_set():
            return False
        if len(data) > 8:  # slcan (Lawicel) carries classic CAN only
            self.dropped += 1
            return False
        if extended:
            head = f"{'R' if remote else 'T'}{arbitration_id:08X}{len(data)}"
        else:
            head = f"{'r' if remote else 't'}{arbitration_id:03X}{len(data)}"
        line = head + ("" if remote else data.hex().upper())
        if self.timestamps:
            self._ms = (self._ms + 1) % 60000
            line += f"{self._ms:04X}"
        return self.send_raw((line + "\r").encode())

    def send_raw(self, raw: bytes, *, wait_s: float = 1.0) -> bool:
        """Write bytes as they are (for malformed lines and other abuse). When the pty is
        full the rest waits up to ``wait_s`` for the host to read, as an adapter's FIFO
        would: a slow host gets every frame whole; one that stops reading gets a
        truncated line (a real overrun), counted in ``dropped``."""
        view = memoryview(raw)
        sent = 0
        deadline = None
        while sent < len(view):
            with self._lock:
                if self._master < 0:
                    return False
                try:
                    sent += os.write(self._master, view[sent:])
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    self.dropped += 1
                    return False
                master = self._master
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + wait_s
            if now >= deadline:
                break
            with contextlib.suppress(OSError, ValueError):
                select.select([], [master], [], min(0.01, deadline - now))
        self.written_units += sent
        if sent != len(view):
            self.dropped += 1
            return False
        self.sent += 1
        return True

    # ------------------------------------------------------------------ device loop
    def _reply(self, raw: bytes) -> None:
        with self._lock:
            if self._master >= 0:
                with contextlib.suppress(OSError):
                    os.write(self._master, raw)

    def _serve(self, master: int) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # nobody has the slave open right now
                    self._stop.wait(0.02)
                    continue
                return
            if not chunk:
                self._stop.wait(0.02)
                continue
            buf.extend(chunk)
            while True:
                cut = buf.find(b"\r")
                if cut < 0:
                    break
                line = bytes(buf[:cut]).decode("ascii", "replace").strip("\n")
                del buf[: cut + 1]
                self._command(line)

    def _command(self, line: str) -> None:
        self.commands.append(line)
        if not line:
            self._reply(b"\r")
            return
        c = line[0]
        if c in "OL":
            self.opened.set()
            self._reply(b"\r")
        elif c == "C":
            self.opened.clear()
            self._reply(b"\r")
        elif c in "Ss":
            self.bitrate_cmd = line
            self._reply(b"\r")
        elif c in "YMmX":  # data bitrate, acceptance mask/code, auto-poll
            self._reply(b"\r")
        elif c == "V":
            self._reply(f"V{self.version}\r".encode())
        elif c == "v":
            self._reply(b"vSLCANPTY\r")
        elif c == "N":
            self._reply(f"N{self.serial_number}\r".encode())
        elif c == "F":
            self._reply(b"F00\r")
        elif c == "Z":
            self.timestamps = line[1:2] == "1"
            self._reply(b"\r")
        elif c in "tTrRdDbB":
            self._host_frame(line)
        else:
            self._reply(b"\a")

    def _host_frame(self, line: str) -> None:
        c = line[0]
        extended = c in "TRDB"
        id_len = 8 if extended else 3
        try:
            arb = int(line[1 : 1 + id_len], 16)
            dlc = int(line[1 + id_len], 16)
            if c in "rR":
                data = b""
            else:
                data = bytes.fromhex(line[2 + id_len : 2 + id_len + 2 * dlc])
        except (ValueError, IndexError):
            self._reply(b"\a")
            return
        if not self.opened.is_set():
            self._reply(b"\a")  # a closed channel cannot transmit
            return
        self.received.append((arb, data, extended))
        self._reply(b"Z\r" if extended else b"z\r")
        cb = self.on_frame
        if cb is not None:
            cb(arb, data, extended)
