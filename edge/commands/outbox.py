"""``edge outbox stats | export | purge | keygen``.

With ``[outbox] encryption`` on, ``stats`` and ``export`` read through the config's
key files; a row that none of them opens is an error naming them (exit 1), after
everything that did open was exported."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from edge.config import Config
from edge.errors import ExitCode
from edge.model import Lane
from edge.outbox import Outbox


def main(cfg: Config, action: str, *, out: TextIO, lanes: list[str] | None, yes: bool) -> int:
    if not cfg.outbox.path.exists():
        print(f"edge: no outbox at {cfg.outbox.path}", file=sys.stderr)
        return ExitCode.FAILED
    chosen = [Lane[name.upper()] for name in lanes] if lanes else None
    ob = Outbox.from_config(cfg.outbox, recover=False)
    try:
        if action == "stats":
            json.dump(ob.stats(), out, indent=2)
            out.write("\n")
        elif action == "export":
            for row in ob.iter_rows():
                if chosen is not None and row.lane not in chosen:
                    continue
                out.write(json.dumps({"topic": row.topic, "lane": row.lane.name.lower(),
                                      "payload": json.loads(row.payload)},
                                     separators=(",", ":")) + "\n")
            if ob.unreadable:
                print(f"edge: {len(ob.unreadable)} sealed row(s) of {cfg.outbox.path} not"
                      f" exported: {ob.unreadable[0]}", file=sys.stderr)
                return ExitCode.FAILED
        elif action == "purge":
            if not yes:
                print("edge: purge deletes undelivered messages; add --yes", file=sys.stderr)
                return ExitCode.USAGE
            n = ob.purge(chosen)
            print(f"purged {n} messages", file=sys.stderr)
    finally:
        ob.close()
    return ExitCode.OK


def keygen(out: Path) -> int:
    """A new 32-byte key for ``[outbox] key_file`` (0600; an existing file is kept)."""
    from edge.commands import out_refused
    from edge.seal import keygen as make

    if out_refused("edge outbox keygen", out):
        return ExitCode.USAGE
    try:
        kid = make(out)
    except FileExistsError:
        print(f"edge: {out} exists: not overwritten (a key in use must not be lost;"
              " move it to old_key_files first)", file=sys.stderr)
        return ExitCode.FAILED
    except OSError as exc:
        print(f"edge: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.FAILED
    print(f"{out}: new AES-256 key, id {kid.hex()}", file=sys.stderr)
    return ExitCode.OK
