"""Publish units: one MQTT publish and the outbox rows it carries; the stage they wait on.

An alert, a trip edge or a health report is a unit of its own. Telemetry rows are
packed ``batch_max`` at a time into one ``telemetry_batch`` of at most the uplink's
``max_payload`` bytes before compression (split by bytes, not only by count). With
``compression`` gzip or zstd (only on an uplink that carries MQTT 5 user properties)
the batch is compressed and declared with the user property ``content-encoding``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from edge.core.telemetry import batch_payload, split_batches
from edge.errors import OutboxError
from edge.forwarder.lease import Lease
from edge.model import Lane
from edge.outbox import Row
from edge.uplinks.base import MAX_PAYLOAD

URGENT = (Lane.ALERT, Lane.TRIP)
CONTENT_ENCODING = "content-encoding"
# rows claimed per worker-thread hop: urgent lanes / telemetry
CLAIM_ROWS = 256
CLAIM_TELEMETRY_ROWS = 1024  # ~0.5 MB of payloads in memory; 10 hops/s cover the quota


@dataclass(frozen=True, slots=True, kw_only=True)
class Unit:
    topic: str
    payload: bytes
    seqs: tuple[int, ...]
    lane: Lane
    user_properties: tuple[tuple[str, str], ...] = ()

    @property
    def urgent(self) -> bool:
        return self.lane in URGENT


def compress(data: bytes, method: str) -> bytes:
    if method == "gzip":
        import gzip  # only when the uplink compresses: the daemon does not load it otherwise

        return gzip.compress(data, compresslevel=6, mtime=0)
    if method == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor(level=3).compress(data))
    raise ValueError(f"unknown compression {method!r}")


def decompress(data: bytes, method: str) -> bytes:
    """The consumer's side (tests, tools): undo ``compress``."""
    if method == "gzip":
        import gzip

        return gzip.decompress(data)
    if method == "zstd":
        import zstandard

        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=16 * MAX_PAYLOAD)
        return bytes(out)
    if method in ("", "identity", "none"):
        return data
    raise ValueError(f"unknown content-encoding {method!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Packer:
    """Rows (lane-ordered, as claimed) into units, for one connection."""

    thing: str
    batch_max: int
    max_payload: int = MAX_PAYLOAD
    compression: str = "none"  # "none" also when the uplink cannot declare it

    def claim(self, lease: Lease, want: int, *, urgent_only: bool = False) -> list[Unit]:
        """Claim the rows of up to ``want`` units, best lane first (a worker thread).

        Raises ``OutboxError`` only when nothing could be claimed."""
        units = self.units(lease.claim(min(want, CLAIM_ROWS), URGENT))
        if urgent_only or len(units) >= want:
            return units
        room = want - len(units)
        try:
            rows = lease.claim(min(room * self.batch_max, CLAIM_TELEMETRY_ROWS),
                               (Lane.TELEMETRY,))
            if not rows:
                rows = lease.claim(room, (Lane.HEALTH,))
        except OutboxError:
            if units:
                return units  # what was claimed goes out; the rest waits
            raise
        return units + self.units(rows)

    def units(self, rows: Sequence[Row]) -> list[Unit]:
        telemetry = [r for r in rows if r.lane == Lane.TELEMETRY]
        out = [single(r) for r in rows if r.lane in URGENT]
        if telemetry:
            out += self._batches(telemetry)
        return out + [single(r) for r in rows if r.lane == Lane.HEALTH]

    def _batches(self, rows: Sequence[Row]) -> list[Unit]:
        units = []
        groups = split_batches([r.payload for r in rows], max_records=self.batch_max,
                               max_bytes=self.max_payload)
        for g in groups:
            payload = batch_payload(self.thing, [rows[i].payload for i in g],
                                    [rows[i].id for i in g])
            props: tuple[tuple[str, str], ...] = ()
            if self.compression != "none":
                payload = compress(payload, self.compression)
                props = ((CONTENT_ENCODING, self.compression),)
            units.append(Unit(topic=rows[g[0]].topic, payload=payload,
                              seqs=tuple(rows[i].seq for i in g), lane=Lane.TELEMETRY,
                              user_properties=props))
        return units


class Stage(deque[Unit]):
    """Units claimed and not yet published, in the order they go out."""

    def add(self, units: Sequence[Unit]) -> None:
        """Urgent units after the urgent ones already staged, the rest at the back."""
        at = 0
        for u in units:
            if u.urgent:
                while at < len(self) and self[at].urgent:
                    at += 1
                self.insert(at, u)
                at += 1
            else:
                self.append(u)

    def put_back(self, unit: Unit) -> None:
        """A unit that failed goes back in its lane order, ahead of later claims."""
        key = (unit.lane, unit.seqs[0])
        at = 0
        while at < len(self) and (self[at].lane, self[at].seqs[0]) < key:
            at += 1
        self.insert(at, unit)


def single(r: Row) -> Unit:
    return Unit(topic=r.topic, payload=r.payload, seqs=(r.seq,), lane=r.lane)
