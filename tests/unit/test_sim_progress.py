"""`edge sim` progress (sim.run.Progress): a bar in place on a terminal, 25 % lines in a
log file or pipe, silence for short replays."""

from __future__ import annotations

import asyncio
import io
import os
import select
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from sim.device_replay import Replayer
from sim.drive import load_drive
from sim.run import Progress


@pytest.fixture
def terminal() -> Iterator[tuple[TextIO, int]]:
    """A real pty: (the slave as a text stream, as the sim sees stderr; the master fd)."""
    master, slave = os.openpty()
    stream = open(slave, "w", encoding="utf-8", closefd=True)
    try:
        yield stream, master
    finally:
        stream.close()
        os.close(master)


def _read_all(master: int) -> str:
    out = b""
    while select.select([master], [], [], 0.2)[0]:
        chunk = os.read(master, 65536)
        if not chunk:
            break
        out += chunk
    return out.decode()


def _can_drive(tmp_path: Path, seconds: float, name: str = "d") -> Path:
    """A CAN-only drive: one speed frame every 0.1 s for ``seconds``."""
    d = tmp_path / name
    d.mkdir()
    t0 = 1_700_000_000.0
    lines = [f"({t0 + i * 0.1:.6f}) can0 3E9#D007010000000000\n"
             for i in range(int(seconds * 10) + 1)]
    (d / "can.log").write_text("".join(lines))
    return d


def test_not_a_terminal_writes_plain_lines_at_quarter_steps() -> None:
    out = io.StringIO()
    assert not out.isatty()
    bar = Progress(out, label="sim city")
    for done in range(0, 121):  # a 2-minute drive, reported every second
        bar(float(done), 120.0)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split(":")[1].split()[0] for line in lines] == ["0%", "25%", "50%", "75%",
                                                                  "100%"]
    assert all(line.startswith("sim city: ") and "of 02:00" in line for line in lines)


def test_not_a_terminal_skips_quarters_it_never_saw_and_never_repeats() -> None:
    out = io.StringIO()
    bar = Progress(out, label="x")
    bar(0.0, 60.0)
    bar(59.0, 60.0)  # 98 %: the 75 % line, once
    bar(59.5, 60.0)
    bar(60.0, 60.0)
    bar(60.0, 60.0)
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["0%", "75%", "100%"]


def test_terminal_updates_one_line_in_place(terminal: tuple[TextIO, int]) -> None:
    stream, master = terminal
    assert stream.isatty()
    bar = Progress(stream, label="sim faults")
    for done in (0.0, 40.0, 80.0, 120.0, 160.0):
        bar(done, 160.0)
    text = _read_all(master)
    frames = [f for f in text.split("\r") if f.strip()]
    assert len(frames) == 5  # every call redraws the same line
    assert text.count("\n") == 1 and text.endswith("\n")  # one newline, at 100 %
    assert frames[0].startswith("sim faults [") and "  0.0%" in frames[0]
    assert " 50.0% 01:20/02:40" in frames[2]
    assert "100.0% 02:40/02:40" in frames[-1]


def test_short_totals_print_nothing(terminal: tuple[TextIO, int]) -> None:
    stream, master = terminal
    plain = io.StringIO()
    for s in (stream, plain):
        bar = Progress(s, label="short")
        for done in (0.0, 1.0, 2.0, 4.9):
            bar(done, 4.9)
    assert plain.getvalue() == ""
    assert _read_all(master) == ""


def test_a_short_replay_prints_nothing_and_a_long_one_reaches_100(tmp_path: Path) -> None:
    short, long_ = io.StringIO(), io.StringIO()
    for stream, seconds, name in ((short, 3.0, "short"), (long_, 30.0, "long")):
        drive = load_drive(_can_drive(tmp_path, seconds, name))
        bar = Progress(stream, label=f"sim {name}")
        r = Replayer(drive, rate=None, progress=bar)
        asyncio.run(r.run())
        assert r.stats.drive_s == pytest.approx(seconds)
    assert short.getvalue() == ""
    lines = long_.getvalue().splitlines()
    assert lines[0].startswith("sim long: 0% of 00:30")
    assert lines[-1].startswith("sim long: 100% of 00:30")
