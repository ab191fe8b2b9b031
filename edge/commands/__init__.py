"""Subcommand implementations, imported lazily by ``edge.cli``."""

from __future__ import annotations

import os
import sys

from edge.errors import ExitCode


def reader_went_away() -> int:
    """stdout's reader closed the pipe (``edge decode ... | head``): not an error. Point
    stdout at /dev/null so that the interpreter's final flush stays quiet; exit 0."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return ExitCode.OK


def out_folder_error(out: os.PathLike[str] | str) -> str | None:
    """Why ``--out`` cannot be written (its folder is missing or not a folder), or None.
    Every ``--out`` is checked this way: a clear message, no traceback, no silent mkdir."""
    from pathlib import Path

    path = Path(out)
    if str(path) == "-":
        return None
    parent = path.parent
    if not parent.exists():
        return f"the folder {parent} does not exist (create it first)"
    if not parent.is_dir():
        return f"{parent} is not a folder"
    if path.is_dir():
        return f"{path} is a folder, not a file"
    return None


def out_refused(command: str, out: os.PathLike[str] | str) -> bool:
    """True, with the one message on stderr, when ``command`` cannot write ``--out``."""
    why = out_folder_error(out)
    if why is not None:
        print(f"{command}: cannot write {out}: {why}", file=sys.stderr)
    return why is not None
