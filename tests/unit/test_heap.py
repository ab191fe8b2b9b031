"""The daemon's heap trims: when they happen, and that a trim hands freed memory back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge.daemon.heap import TRIM_AFTER_PUBLISHED, TRIM_EVERY_S, TrimSchedule, _libc


def test_trims_at_the_first_tick_not_only_after_the_first_period() -> None:
    """Start-up's garbage (modules compiled from source, the argument parser) goes back
    at the first tick: the RSS the bench samples in the first 10 s is the working set."""
    s = TrimSchedule()
    assert s.due(100.0, 0, False)
    assert not s.due(101.0, 0, False)
    assert not s.due(100.0 + TRIM_EVERY_S - 0.1, 0, False)
    assert s.due(100.0 + TRIM_EVERY_S, 0, False)


def test_trims_when_the_uplink_connects_for_the_first_time_only() -> None:
    s = TrimSchedule()
    assert s.due(0.0, 0, False)
    assert not s.due(1.0, 0, False)
    assert s.due(2.0, 0, True)  # the MQTT library and the TLS context are set up
    assert not s.due(3.0, 0, True)
    assert not s.due(4.0, 0, False)  # a reconnect is no start-up
    assert not s.due(5.0, 0, True)
    assert s.due(2.0 + TRIM_EVERY_S, 0, True)


def test_trims_after_a_burst_of_publishes() -> None:
    s = TrimSchedule()
    assert s.due(0.0, 0, True)
    assert not s.due(1.0, TRIM_AFTER_PUBLISHED, True)
    assert s.due(2.0, TRIM_AFTER_PUBLISHED + 1, True)
    assert not s.due(3.0, TRIM_AFTER_PUBLISHED + 2, True)  # counted from the last trim


@pytest.mark.skipif(_libc("malloc_trim") is None, reason="needs glibc's malloc_trim")
def test_a_trim_hands_freed_heap_back_to_the_os() -> None:
    """30 MB in 2 KiB blocks (malloc's heap, not mmap), all freed but the last block
    (which pins the top of the heap): the RSS stays until ``trim_heap``."""
    code = (
        "from edge.daemon.heap import trim_heap\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status')"
        " if l.startswith('VmRSS')).split()[1])\n"
        "blocks = [bytearray(2048) for _ in range(15000)]\n"
        "keep = blocks[-1]\n"
        "del blocks\n"
        "before = rss()\n"
        "trim_heap()\n"
        "print(before - rss())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, timeout=60)
    assert int(r.stdout) > 20 * 1024, r.stdout  # KiB handed back
