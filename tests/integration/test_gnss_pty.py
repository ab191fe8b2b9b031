"""GnssSource end to end over real ptys, with unplug and replug.

Replug is simulated the way udev does it for a USB receiver: the configured port is a
symlink (like ``/dev/serial/by-id/...``). Unplugging closes the pty master (the source's
read gets EIO, the slave node disappears) and removes the symlink, as udev removes the
by-id link; replugging creates a new pty and points the symlink at it. The source must
notice, back off, and reopen the same configured path.

The link must not outlive the unplug: a dangling ``/dev/pts/N`` is a name the kernel
hands to the next pty anyone on the machine opens, and the source's retries would then
open that stranger's pty (an extra open, a disconnect when it goes away).
"""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge.config import GnssConfig
from edge.model import Fix
from edge.sources.gnss import GnssSource


def nmea(body: str) -> bytes:
    x = 0
    for ch in body.encode():
        x ^= ch
    return f"${body}*{x:02X}\r\n".encode()


def epoch(second: int) -> bytes:
    t = f"1234{second:02d}.00"
    return (nmea(f"GPRMC,{t},A,5230.9780,N,01322.6620,E,0.0,90.0,170524,,,A")
            + nmea(f"GPGGA,{t},5230.9780,N,01322.6620,E,1,10,0.9,35.2,M,39.6,M,,"))


class Receiver:
    """A fake receiver behind a symlink, like /dev/serial/by-id/..."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # what pyserial will set anyway; no echo of what we write
        name = os.ttyname(slave)
        os.close(slave)
        tmp = self.link.with_suffix(".new")
        os.symlink(name, tmp)
        os.replace(tmp, self.link)  # atomic re-point
        self.master = master

    def unplug(self) -> None:
        assert self.master is not None
        os.close(self.master)
        self.master = None
        self.link.unlink()  # udev removes the by-id link with the device

    def write(self, data: bytes) -> None:
        assert self.master is not None
        os.write(self.master, data)


async def wait_for(cond: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Poll what a user would look at (health, the received fixes) until it holds."""
    async with asyncio.timeout(limit_s):
        while not cond():
            await asyncio.sleep(0.01)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path / "gps0")
    yield r
    if r.master is not None:
        r.unplug()


def test_fixes_flow_then_unplug_replug(receiver: Receiver) -> None:
    asyncio.run(_fixes_flow_then_unplug_replug(receiver))


async def _fixes_flow_then_unplug_replug(receiver: Receiver) -> None:
    receiver.plug()
    src = GnssSource(GnssConfig(port=str(receiver.link), reopen_max_s=0.3))
    fixes: list[Fix] = []
    with capture_logs() as logs:
        task = asyncio.create_task(src.run(fixes.append))
        await wait_for(lambda: src.health()["connected"])
        for s in range(3):
            receiver.write(epoch(s))
        await wait_for(lambda: len(fixes) >= 2)
        assert all(f.valid for f in fixes)

        receiver.unplug()  # the pending epoch (second 2) is flushed when the port goes
        await wait_for(lambda: src.health()["disconnects"] == 1)
        await wait_for(lambda: len(fixes) == 3)
        assert not src.health()["connected"]
        await asyncio.sleep(0.5)  # a few failed reopen attempts on the vanished path
        assert src.health()["open_failures"] >= 1

        receiver.plug()  # a new pty behind the same path
        await wait_for(lambda: src.health()["connected"], limit_s=3.0)
        for s in range(3, 6):
            receiver.write(epoch(s))
        await wait_for(lambda: len(fixes) >= 5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert [f.time for f in fixes] == sorted({f.time for f in fixes})
    assert all(f.valid for f in fixes)
    h = src.health()
    assert h["opens"] == 2
    assert h["disconnects"] == 1
    assert h["last_valid_fix_age_s"] is not None
    # the fixture dates are in 2024: the system clock is ahead by the difference
    assert h["clock_skew_s"] > 3600
    lost = [e for e in logs if e["event"] == "gnss.port_lost"]
    assert lost[0]["log_level"] == "warning"
    assert all(e["log_level"] == "debug" for e in lost[1:])
    assert len(lost) >= 2


def test_port_absent_at_start_then_appears(receiver: Receiver) -> None:
    asyncio.run(_port_absent_at_start_then_appears(receiver))


async def _port_absent_at_start_then_appears(receiver: Receiver) -> None:
    src = GnssSource(GnssConfig(port=str(receiver.link), reopen_max_s=0.2))
    fixes: list[Fix] = []
    with capture_logs() as logs:
        task = asyncio.create_task(src.run(fixes.append))
        await wait_for(lambda: src.health()["open_failures"] >= 3)
        receiver.plug()
        await wait_for(lambda: src.health()["connected"], limit_s=3.0)
        receiver.write(epoch(0) + epoch(1))
        await wait_for(lambda: len(fixes) >= 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    warnings = [e for e in logs if e["log_level"] == "warning" and e["event"] == "gnss.port_lost"]
    assert len(warnings) == 1
    assert "cannot open" in warnings[0]["reason"]


def test_garbage_on_the_line_is_counted_not_raised(receiver: Receiver) -> None:
    asyncio.run(_garbage_on_the_line_is_counted_not_raised(receiver))


async def _garbage_on_the_line_is_counted_not_raised(receiver: Receiver) -> None:
    receiver.plug()
    src = GnssSource(GnssConfig(port=str(receiver.link), reopen_max_s=0.2))
    fixes: list[Fix] = []
    with capture_logs() as logs:
        task = asyncio.create_task(src.run(fixes.append))
        await wait_for(lambda: src.health()["connected"])
        receiver.write(os.urandom(4000) + b"\r\n" + epoch(0) + b"\x00\xff$GPGGA,12"
                       + epoch(1) + b"$GPRMC,garbage*00\r\n" + epoch(2) + epoch(3))
        await wait_for(lambda: len(fixes) >= 3)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    h = src.health()
    assert h["framer_garbage_bytes"] > 1000
    assert h["bad_checksum"] >= 1
    assert [f.valid for f in fixes[-3:]] == [True, True, True]
    bad = [e for e in logs if e["event"] == "gnss.bad_input"]
    assert len({e["kind"] for e in bad}) == len(bad)  # each kind logged once
