"""How a daemon's process runs: under ``python -OO``, and on which event loop.

Two process-wide knobs, in the environment like ``MALLOC_ARENA_MAX`` (they act before a
configuration is read, and under Greengrass before the nucleus has sent one):

``VEHICLE_EDGE_OPTIMIZE`` = ``1`` (default) | ``0``
    ``edge run`` and ``edge sim`` start over once as ``python -OO`` (``execve``: the same
    pid and environment; ``edge run --config FILE`` as ``python -OO -m edge.daemon
    --config FILE``, without the command line's parser, ``edge.daemon.start``): the
    docstrings of the ~540 modules a daemon loads are not kept in memory (3.1 MB of
    resident memory on the bench's encrypted daemon, its bytecode compiled ahead).
    ``-OO`` also drops ``assert`` statements; edge's only narrow types. The bytecode
    compiled for ``-OO`` is cached in ``${XDG_CACHE_HOME:-~/.cache}/vehicle-edge/bytecode``
    (a private folder) unless ``PYTHONPYCACHEPREFIX`` names another place, so a venv or a
    system Python the daemon's user cannot write is compiled once, not at every start (the
    Greengrass install step fills it ahead). With ``PYTHONDONTWRITEBYTECODE`` there is no
    cache folder: the ``-OO`` bytecode next to the sources is loaded (``make venv`` and the
    install step write it). The new process runs with ``-P`` (``_new_command``).
``VEHICLE_EDGE_EVENT_LOOP`` = ``asyncio`` (default) | ``uvloop``
    asyncio's own event loop, or uvloop's. The daemon's event rate (tens of NMEA
    sentences, a few hundred CAN frames a second) does not need uvloop: its CPU time on
    the bench drive differs by ~5 %, while uvloop's library costs ~2 MB of resident memory.

A wrong value is refused at start, naming the variable (exit 2).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge.errors import ConfigError, EdgeError

OPTIMIZE_ENV = "VEHICLE_EDGE_OPTIMIZE"
LOOP_ENV = "VEHICLE_EDGE_EVENT_LOOP"
LOOPS = ("asyncio", "uvloop")
# set for the process that was started over, so it never starts over again
_RESTARTED_ENV = "VEHICLE_EDGE_RESTARTED_OPTIMIZED"


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/vehicle-edge``: what the daemon may recompute."""
    e = os.environ if env is None else env
    base = e.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vehicle-edge"


def bytecode_dir(env: Mapping[str, str] | None = None) -> Path:
    return cache_root(env) / "bytecode"


def optimize_wanted(env: Mapping[str, str] | None = None) -> bool:
    e = os.environ if env is None else env
    value = e.get(OPTIMIZE_ENV, "1").strip() or "1"
    if value not in ("0", "1"):
        raise ConfigError(OPTIMIZE_ENV, f"must be 1 (run under python -OO, the default) or 0,"
                                        f" got {value!r}")
    return value == "1"


def event_loop_name(env: Mapping[str, str] | None = None) -> str:
    """The event loop the environment asks for (``LOOPS``); uvloop must be installed."""
    e = os.environ if env is None else env
    value = e.get(LOOP_ENV, "asyncio").strip().lower() or "asyncio"
    if value not in LOOPS:
        raise ConfigError(LOOP_ENV, f"must be one of {', '.join(LOOPS)}, got {value!r}")
    if value == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError(LOOP_ENV, "uvloop is not installed (pip install uvloop), or unset"
                                    " the variable for asyncio's own loop")
    return value


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Refuse a wrong value of either knob before anything starts."""
    optimize_wanted(env)
    event_loop_name(env)


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``sys.orig_argv`` without the interpreter: (its options, what it ran: ``-m MOD
    ...``, ``-c CODE ...`` or ``SCRIPT ...``)."""
    rest = list(argv[1:])
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("-X", "-W"):  # an option with a value
            i += 2
        elif a.startswith("-c") or a.startswith("-m") or not a.startswith("-"):
            break
        else:
            i += 1
    return rest[:i], rest[i:]


def _plain(ran: Sequence[str]) -> bool:
    """Whether what the interpreter ran (``_split``) is edge's command line as is:
    ``-m edge ...`` or the ``edge`` script."""
    return list(ran[:2]) == ["-m", "edge"] or (
        bool(ran) and not ran[0].startswith("-") and Path(ran[0]).name == "edge")


def _interpreter_options(argv: Sequence[str]) -> list[str] | None:
    """The interpreter's options of ``argv`` (``sys.orig_argv``) when it ran edge's
    command line plainly, else None (``-c`` wrappers, other modules: started over as
    they are)."""
    opts, ran = _split(argv)
    return opts if _plain(ran) else None


def _new_command(argv: Sequence[str], daemon_args: Sequence[str] | None) -> list[str]:
    """The command line to start over with: ``-OO`` in place of any ``-O``, and ``-P``
    (no working directory or script folder on ``sys.path``: a daemon whose working
    directory it may write, as under systemd or Greengrass, must not import a ``.py`` left
    there) unless edge itself is imported from the working directory (a checkout run as
    it is)."""
    opts, ran = _split(argv)
    opts = [o for o in opts if o not in ("-O", "-OO")]
    edge_root = Path(__file__).resolve().parent.parent
    if edge_root != Path.cwd().resolve() and "-P" not in opts:
        opts.append("-P")
    if daemon_args is not None and _plain(ran):
        ran = ["-m", "edge.daemon", *daemon_args]
    return [sys.executable, "-OO", *opts, *ran]


def restart_optimized(env: Mapping[str, str] | None = None,
                      daemon_args: Sequence[str] | None = None) -> None:
    """Start this process over as ``python -OO``, unless it runs optimized already or
    ``VEHICLE_EDGE_OPTIMIZE=0``: with the same command line, or, for ``edge run``
    (``daemon_args``: ``--config FILE`` or ``--greengrass``, checked by its parser), as
    ``python -OO -m edge.daemon DAEMON_ARGS``, which leaves the command line's parser
    (argparse, gettext, ``edge.cli``: 0.3-0.4 MB) out of a process that runs for days.
    Returns only when it does not start over (or cannot: the reason on stderr, and the
    daemon runs as it is)."""
    e = dict(os.environ if env is None else env)
    if e.pop(_RESTARTED_ENV, None) is not None:
        os.environ.pop(_RESTARTED_ENV, None)  # not inherited by what this process starts
        return
    if sys.flags.optimize >= 2 or not optimize_wanted(e):
        return
    argv = list(getattr(sys, "orig_argv", ()))
    if not argv or not sys.executable:
        return
    if "PYTHONPYCACHEPREFIX" not in e and not sys.dont_write_bytecode:
        from edge.private import private_dir

        cache = bytecode_dir(e)
        try:
            e["PYTHONPYCACHEPREFIX"] = str(private_dir(cache))
        except (OSError, EdgeError) as exc:
            print(f"edge: bytecode cache {cache} unusable ({exc}); modules are compiled"
                  " at each start", file=sys.stderr)
    e[_RESTARTED_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, _new_command(argv, daemon_args), e)
    except OSError as exc:
        print(f"edge: could not start over as python -OO ({exc}); running unoptimized",
              file=sys.stderr)
