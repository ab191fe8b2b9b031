"""Starting the daemon: its config loaded (or a clear error and exit status 2), logging
configured, and ``python -m edge.daemon``, the daemon without the command line's parser.

``edge`` parses its command line with argparse; the process that then runs the daemon
for days keeps argparse, gettext and ``edge.cli`` imported for nothing: 0.3-0.4 MB of the
encrypted CAN daemon's resident memory (bench, under -OO: 66.6 -> 66.2-66.3 MB, medians
of 3 sets of 3 alternating rounds). ``python -m edge.daemon --config FILE`` (or
``--greengrass``) runs what ``edge run`` runs, from arguments ``edge run`` has already
checked: the form for a command that starts the daemon in a process of its own (a
re-exec under ``python -OO``, a service unit). Anything else is a usage error that
points at ``edge run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import ConfigError, ExitCode, describe, exit_code, guarded

if TYPE_CHECKING:
    from edge.config import Config

USAGE = ("usage: python -m edge.daemon (--config FILE | --greengrass): the daemon of"
         " `edge run`, whose --help tells the options")


def load_config_or_exit(path: Path) -> Config:
    """The config in ``path``; an invalid one is the one line naming the field on stderr
    and ``SystemExit`` with status 2."""
    from edge.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(describe(exc, config=f"config {path}"), file=sys.stderr)
        raise SystemExit(exit_code(exc)) from None


def configure_logging(cfg: Config | None, *, quiet: bool = False) -> None:
    """Logging as ``cfg`` says (without a config: info, or warnings when ``quiet``)."""
    from edge.logconf import configure

    if cfg is None:
        configure("warning" if quiet else "info")
    else:
        configure("warning" if quiet else cfg.log.level, cfg.log.format)


def run(config: Path | None) -> int:
    """``edge run --config FILE`` (``config``), or ``edge run --greengrass`` (None)."""
    if config is None:
        configure_logging(None)
        from edge.app import run_greengrass

        return run_greengrass()
    cfg = load_config_or_exit(config)
    configure_logging(cfg)
    from edge.app import run_daemon

    return run_daemon(cfg)


def main(argv: Sequence[str]) -> int:
    """``python -m edge.daemon``: exactly ``--config FILE`` or ``--greengrass``."""
    args = list(argv)
    if len(args) == 2 and args[0] in ("--config", "-c"):
        config: Path | None = Path(args[1])
    elif args == ["--greengrass"]:
        config = None
    else:
        print(USAGE, file=sys.stderr)
        return ExitCode.USAGE

    def command() -> int:
        from edge.process import check_environment, restart_optimized

        check_environment()
        restart_optimized()  # started directly: the same command line under -OO
        return run(config)

    return guarded(command)
