"""``edge outbox stats | export | purge``."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from edge.config import Config
from edge.model import Lane
from edge.outbox import Outbox


def main(cfg: Config, action: str, *, out: TextIO, lanes: list[str] | None, yes: bool) -> int:
    if not cfg.outbox.path.exists():
        print(f"edge: no outbox at {cfg.outbox.path}", file=sys.stderr)
        return 1
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
        elif action == "purge":
            if not yes:
                print("edge: purge deletes undelivered messages; add --yes", file=sys.stderr)
                return 2
            n = ob.purge(chosen)
            print(f"purged {n} messages", file=sys.stderr)
    finally:
        ob.close()
    return 0
