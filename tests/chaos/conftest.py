"""Chaos suite options: ``--chaos-full`` runs every case at full scale (``make chaos``).

Without the option the same cases run scaled down and unmarked, so they are part of
``make test``; with it every test here gets the ``chaos`` marker (``-m chaos``). The
session ends with one ledger line summed over every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.chaos import Tally

_TALLIES: list[Tally] = []


@dataclass(frozen=True, slots=True, kw_only=True)
class Scale:
    full: bool
    kills: int  # kill -9 of the daemon during a replay
    outage_drive_s: float  # broker unreachable, in seconds of drive time
    flaps: int  # broker down/up cycles, each half of flap_s
    flap_s: float
    period: float  # wall seconds per drive epoch (1 s of drive time)


FULL = Scale(full=True, kills=50, outage_drive_s=600.0, flaps=12, flap_s=5.0, period=0.02)
QUICK = Scale(full=False, kills=5, outage_drive_s=300.0, flaps=3, flap_s=5.0, period=0.02)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos-full", action="store_true", default=False,
                     help="run the chaos suite at full scale (50 kills, 10 min outage, ...)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: full-scale fault injection (make chaos)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--chaos-full", default=False):
        return
    for item in items:
        if "tests/chaos/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.chaos)


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> Scale:
    return FULL if request.config.getoption("--chaos-full", default=False) else QUICK


@pytest.fixture
def record_tally() -> list[Tally]:
    return _TALLIES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TALLIES:
        return
    for t in _TALLIES:
        terminalreporter.write_line(t.line())
    acc = sum(t.accepted for t in _TALLIES)
    got = sum(t.delivered for t in _TALLIES)
    lost = sum(len(t.lost) for t in _TALLIES)
    inv = sum(len(t.invented) for t in _TALLIES)
    tail = f", {inv} invented" if inv else ""
    terminalreporter.write_line(
        f"ledger: {acc} alerts accepted, {got} delivered, {lost} lost{tail}")
