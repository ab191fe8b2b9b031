"""Log output: console lines on a terminal, JSON lines elsewhere; ``Once`` warns once."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from edge.logconf import Once, configure

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """``configure`` is global: give the rest of the session back what it had."""
    saved = structlog.get_config()
    yield
    structlog.reset_defaults()
    structlog.configure(**saved)


def _read_all(fd: int) -> str:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO once the other side is closed
            break
        if not chunk:
            break
        out += chunk
    return out.decode()


def _log_lines(stream: Any, level: str = "info") -> None:
    configure(level, "auto", stream=stream)
    log = structlog.get_logger()
    log.debug("too.fine", n=0)
    log.info("gnss.open", port="/dev/ttyACM0", n=1)
    log.warning("uplink.lost", reason="timeout", n=2)


def test_auto_on_a_terminal_gives_console_lines() -> None:
    master, slave = os.openpty()
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, master)
        tty = stack.enter_context(os.fdopen(slave, "w"))
        assert tty.isatty()
        _log_lines(tty)
        text = _read_all(master)
    lines = [ANSI.sub("", ln) for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 2, lines  # debug filtered out at level info
    for ln in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(ln)
    info, warn = lines
    assert "gnss.open" in info and "port=/dev/ttyACM0" in info and "info" in info
    assert "uplink.lost" in warn and "reason=timeout" in warn and "warning" in warn
    # a terminal gets colours
    assert "\x1b[" in text


def test_auto_elsewhere_gives_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "edge.log"
    with path.open("w") as f:  # a file, as under systemd/journald or docker: not a TTY
        assert not f.isatty()
        _log_lines(f)
    text = path.read_text()
    assert "\x1b[" not in text
    records = [json.loads(ln) for ln in text.splitlines()]
    assert [r["event"] for r in records] == ["gnss.open", "uplink.lost"]
    info, warn = records
    assert info["level"] == "info" and info["port"] == "/dev/ttyACM0" and info["n"] == 1
    assert warn["level"] == "warning" and warn["reason"] == "timeout"
    assert all(r["timestamp"].endswith("Z") for r in records)  # ISO 8601, UTC


def test_explicit_format_wins_over_the_stream(tmp_path: Path) -> None:
    master, slave = os.openpty()
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, master)
        tty = stack.enter_context(os.fdopen(slave, "w"))
        configure("warning", "json", stream=tty)
        structlog.get_logger().warning("can.bus_lost", where="slcan:/dev/ttyACM0")
        text = _read_all(master)
    rec = json.loads(text.strip())
    assert rec["event"] == "can.bus_lost" and rec["level"] == "warning"


def test_once_warns_the_first_time_and_debugs_after() -> None:
    structlog.reset_defaults()  # no level filter: the DEBUG repeats must reach the capture
    once = Once()
    with capture_logs() as logs:
        log = structlog.get_logger()
        for _ in range(3):
            once(log, "gnss:/dev/ttyACM0", "gnss.bad_sentence", reason="checksum")
        once(log, "can:slcan", "can.bus_lost", reason="hang-up")
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("gnss.bad_sentence", "warning"),
        ("gnss.bad_sentence", "debug"),
        ("gnss.bad_sentence", "debug"),
        ("can.bus_lost", "warning"),  # another key has its own first time
    ]
    assert all(e["reason"] for e in logs)
    assert "repeat" not in logs[0] and logs[1]["repeat"] is True


def test_once_warns_again_after_clear() -> None:
    structlog.reset_defaults()
    once = Once()
    with capture_logs() as logs:
        log = structlog.get_logger()
        once(log, "uplink", "uplink.lost", reason="timeout")
        once(log, "uplink", "uplink.lost", reason="timeout")
        once.clear("uplink")  # the problem went away
        once(log, "uplink", "uplink.lost", reason="timeout")  # and came back
    assert [e["log_level"] for e in logs] == ["warning", "debug", "warning"]
