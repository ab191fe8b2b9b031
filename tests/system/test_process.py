"""How a real ``edge run`` process runs (``edge.process``): started over once as
``python -OO`` in the same pid with its bytecode cached privately, on asyncio's loop
unless ``VEHICLE_EDGE_EVENT_LOOP=uvloop``; a wrong knob is refused naming it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tty
from pathlib import Path
from typing import Any

import pytest

from edge.process import (
    LOOP_ENV,
    OPTIMIZE_ENV,
    _interpreter_options,
    _new_command,
    check_environment,
    event_loop_name,
    optimize_wanted,
)
from tests.support.daemon import run_until_health, zones_file_uplink_config

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **knobs: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (OPTIMIZE_ENV, LOOP_ENV, "PYTHONPYCACHEPREFIX",
                        "PYTHONDONTWRITEBYTECODE", "PYTHONOPTIMIZE")}
    return env | {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)} | knobs


def _run(tmp_path: Path, env: dict[str, str], launcher: tuple[str, ...] = (),
         command: tuple[str, ...] = ("run",)) -> tuple[dict[str, Any], str, int]:
    """A real ``edge run`` (GNSS pty, the city zones, a file uplink) until its first
    health file: the health, the process's command line as the kernel has it, its pid."""
    master, slave = os.openpty()
    tty.setraw(slave)
    health = tmp_path / "health.json"
    cfg = zones_file_uplink_config(tmp_path, "car-process-1", os.ttyname(slave),
                                   f'[outbox]\npath = "{tmp_path / "o.db"}"\n')
    try:
        return run_until_health([*(launcher or (sys.executable, "-m", "edge")), *command,
                                 "--config", str(cfg)], env=env, cwd=tmp_path, health=health)
    finally:
        os.close(master)
        os.close(slave)


def test_edge_run_starts_over_as_python_OO_in_the_same_pid_on_asyncios_loop(
    tmp_path: Path,
) -> None:
    body, cmdline, pid = _run(tmp_path, _env(tmp_path))
    assert body["pid"] == pid  # execve: what systemd or the nucleus started is the daemon
    assert body["process"] == {"optimize": 2, "event_loop": "asyncio"}
    # edge run's daemon without the command line's parser (edge.daemon.start)
    assert f"{sys.executable} -OO -P -m edge.daemon --config {tmp_path / 'edge.toml'}" in cmdline
    # the -OO bytecode is cached in a private folder the daemon's user owns
    cache = tmp_path / "cache" / "vehicle-edge" / "bytecode"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    cached = list(cache.rglob("*.opt-2.pyc"))
    assert any(p.name.startswith("engine.") for p in cached), cached[:5]


def test_the_installed_edge_command_starts_over_the_same_way(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "edge"  # the console script pip wrote
    if not script.exists():
        pytest.skip(f"no {script}")
    body, cmdline, pid = _run(tmp_path, _env(tmp_path), launcher=(str(script),))
    assert body["pid"] == pid and body["process"]["optimize"] == 2
    assert cmdline.startswith(f"{sys.executable} -OO -P -m edge.daemon --config"), cmdline


def test_a_python_file_in_the_working_directory_is_not_imported(tmp_path: Path) -> None:
    """systemd and Greengrass run the daemon in a folder it can write: what is left
    there must not shadow edge or the stdlib once it starts over (``-P``)."""
    script = Path(sys.executable).parent / "edge"
    if not script.exists():
        pytest.skip(f"no {script}")
    for name in ("edge", "tomllib"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise SystemExit('{name} shadowed')\n")
    body, cmdline, _ = _run(tmp_path, _env(tmp_path), launcher=(str(script),))
    assert body["process"]["optimize"] == 2 and " -P -m edge.daemon " in cmdline


def test_the_daemon_entry_started_directly_starts_over_as_it_is(tmp_path: Path) -> None:
    body, cmdline, _ = _run(tmp_path, _env(tmp_path), launcher=(sys.executable, "-m",
                                                                "edge.daemon"), command=())
    assert body["process"]["optimize"] == 2
    assert cmdline.startswith(f"{sys.executable} -OO -P -m edge.daemon --config"), cmdline


def test_a_wrapper_or_interpreter_options_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    py = "/venv/bin/python"
    monkeypatch.chdir(tmp_path)  # a daemon's working directory, not the checkout
    assert _interpreter_options([py, "-m", "edge", "run"]) == []
    assert _interpreter_options([py, "-X", "importtime", "-u", "-m", "edge"]) == [
        "-X", "importtime", "-u"]
    assert _interpreter_options([py, "/venv/bin/edge", "run"]) == []
    # a -c wrapper (the tests' module dump) or another module starts over as it is
    assert _interpreter_options([py, "-c", "import runpy", "run"]) is None
    assert _interpreter_options([py, "-m", "edge.daemon", "--config", "x"]) is None
    assert _interpreter_options([py, "/usr/bin/other", "run"]) is None
    # -O gives way to -OO (not -OO -O: optimize 3, no opt-2 bytecode); -P unless edge is
    # imported from the working directory (a checkout run as it is)
    ran = _new_command([py, "-O", "-u", "-m", "edge", "run", "--config", "c"],
                       ["--config", "c"])
    assert ran == [sys.executable, "-OO", "-u", "-P", "-m", "edge.daemon", "--config", "c"]
    assert _new_command([py, "-c", "code", "x"], None) == [sys.executable, "-OO", "-P",
                                                           "-c", "code", "x"]
    monkeypatch.chdir(ROOT)
    assert _new_command([py, "-m", "edge", "sim"], None) == [sys.executable, "-OO", "-m",
                                                             "edge", "sim"]


def test_knobs_turn_off_the_restart_and_choose_uvloop(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    body, cmdline, _ = _run(tmp_path, _env(tmp_path, **{OPTIMIZE_ENV: "0", LOOP_ENV: "uvloop"}))
    assert body["process"] == {"optimize": 0, "event_loop": "uvloop"}
    assert "-OO" not in cmdline
    assert not (tmp_path / "cache" / "vehicle-edge" / "bytecode").exists()


@pytest.mark.parametrize(("knob", "value", "says"), [
    (LOOP_ENV, "tokio", "must be one of asyncio, uvloop, got 'tokio'"),
    (OPTIMIZE_ENV, "yes", "must be 1 (run under python -OO, the default) or 0, got 'yes'"),
])
def test_a_wrong_knob_is_refused_naming_it_before_anything_starts(
    tmp_path: Path, knob: str, value: str, says: str,
) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'thing = "car-process-2"\n[outbox]\npath = "{tmp_path / "o.db"}"\n'
                   f'[uplink]\nkind = "file"\npath = "{tmp_path / "out.jsonl"}"\n')
    r = subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(cfg)],
                       env=_env(tmp_path, **{knob: value}), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"edge: invalid configuration: {knob}: {says}"
    assert not (tmp_path / "o.db").exists()


def test_knob_values() -> None:
    assert optimize_wanted({}) is True
    assert optimize_wanted({OPTIMIZE_ENV: " 0 "}) is False
    assert event_loop_name({}) == "asyncio"
    assert event_loop_name({LOOP_ENV: "AsyncIO"}) == "asyncio"
    assert event_loop_name({LOOP_ENV: ""}) == "asyncio"
    check_environment({OPTIMIZE_ENV: "1", LOOP_ENV: "asyncio"})
