"""Encryption at rest for the outbox (``edge.seal``): what goes in sealed, comes out open.

Payloads and state documents are sealed as they go in and opened as they come out.
The sealed value holds the real topic; the ``topic`` column keeps a template with the
thing's segment as ``+`` (``vehicles/+/events/overspeed``), so the lane, kind and size
stay plain and the thing name is not on disk. A row that no configured key opens is
never deleted: the outbox sets it aside (``State.HELD``, counted as ``undecryptable``)
and the next open offers it again (with the right key back).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from edge.logconf import Once
from edge.model import Envelope, Lane
from edge.outbox.schema import Row

if TYPE_CHECKING:
    from edge.config import OutboxConfig
    from edge.seal import Sealer

log = structlog.get_logger()

# a row as inserted: (id, lane, topic, payload, created)
Insert = tuple[str, int, str, bytes, float]
# a state document as written: (key, value, updated)
Doc = tuple[str, str | bytes, float]


def sealer_for(cfg: OutboxConfig) -> Sealer | None:
    """The sealer ``[outbox]`` asks for (``KeyFileError`` naming a bad key file)."""
    if cfg.encryption == "none" or cfg.key_file is None:
        return None
    from edge.seal import Sealer  # imports cryptography: only when encryption is on

    return Sealer(cfg.key_file, cfg.old_key_files)


def topic_template(topic: str, thing: str) -> str:
    """``topic`` with the thing's segment as ``+``: what a sealed row keeps in plain."""
    return "/".join("+" if part == thing else part for part in topic.split("/"))


def row_ad(mid: str, lane: int) -> bytes:
    """Associated data of a sealed row: its envelope id and lane (rows do not swap)."""
    return f"{mid}\0{int(lane)}".encode()


class Codec:
    """Envelopes and state documents to what is stored, and stored rows back."""

    def __init__(self, sealer: Sealer | None, *, path: Path, once: Once) -> None:
        self.sealer = sealer
        self.path = path
        self.unreadable: list[str] = []  # sealed values no key opened (why, per value)
        self._once = once

    def rows(self, envelopes: Sequence[Envelope], now: float) -> list[Insert]:
        if self.sealer is None:
            return [(e.id, int(e.lane), e.topic, e.to_bytes(), now) for e in envelopes]
        seal = self.sealer.seal
        return [(e.id, int(e.lane), topic_template(e.topic, e.thing),
                 seal(e.topic.encode() + b"\n" + e.to_bytes(), row_ad(e.id, e.lane)), now)
                for e in envelopes]

    def docs(self, state: Mapping[str, Any] | None, now: float) -> list[Doc]:
        docs: list[Doc] = [(k, json.dumps(v, separators=(",", ":")), now)
                           for k, v in (state or {}).items()]
        if self.sealer is not None:
            docs = [(k, self.sealer.seal(str(v).encode(), b"state\0" + k.encode()), t)
                    for k, v, t in docs]
        return docs

    def state(self, got: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
        """Stored state documents, opened and parsed (one no key opens is left out)."""
        out: dict[str, Any] = {}
        for key, value in got:
            if isinstance(value, bytes):
                value = self.open_value(value, b"state\0" + str(key).encode(), f"state {key}")
                if value is None:
                    continue
            with contextlib.suppress(ValueError):
                out[str(key)] = json.loads(value)
        return out

    def open_value(self, blob: bytes, ad: bytes, what: str) -> bytes | None:
        """A sealed value opened, or None (logged once) when no key here opens it."""
        from edge.seal import Unsealable

        try:
            if self.sealer is None:
                raise Unsealable("sealed, but [outbox] encryption is off")
            return self.sealer.open(blob, ad)
        except Unsealable as exc:
            self._once(log, f"unsealable:{what.split()[0]}", "outbox: a sealed value does"
                       " not open: kept, not used", path=str(self.path), what=what,
                       reason=str(exc))
            if len(self.unreadable) < 100:
                self.unreadable.append(f"{what}: {exc}")
            return None

    def opened(self, got: Sequence[Any]) -> tuple[list[Row], list[int]]:
        """Rows as read, sealed ones opened (real topic and payload); the seqs of
        those that do not open are returned apart."""
        rows: list[Row] = []
        bad: list[int] = []
        from edge.seal import is_sealed

        for s, i, ln, tp, p, a in got:
            payload = bytes(p)
            if is_sealed(payload):  # a plain row was stored before sealing: as it is
                plain = self.open_value(payload, row_ad(i, ln), f"row {s}")
                if plain is None:
                    bad.append(int(s))
                    continue
                topic, _, payload = plain.partition(b"\n")
                tp = topic.decode()
            rows.append(Row(s, i, Lane(ln), tp, payload, a))
        return rows, bad
