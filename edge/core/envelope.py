"""Envelopes: ids, sequence numbers and topics for every published message.

``id`` is a UUIDv7 (RFC 9562): 48 bits of ms timestamp then random bits, so ids sort by
time and are the consumer's dedup key. The random source is injectable: a replay seeds
it so that its output is byte-identical run after run.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable

from edge.model import EVENT_LANES, Envelope, Event, Lane

EVENT_KINDS = frozenset({"overspeed", "geofence", "poi", "trip", "diagnostic"})


def topic_for(thing: str, kind: str) -> str:
    if kind in EVENT_KINDS:
        return f"vehicles/{thing}/events/{kind}"
    if kind in ("telemetry", "health"):
        return f"vehicles/{thing}/{kind}"
    raise ValueError(f"unknown message kind {kind!r}")


def uuid7(ms: int, rand: Callable[[int], int]) -> str:
    """A UUIDv7 string from a millisecond timestamp and a source of random bits."""
    ms &= (1 << 48) - 1
    rand_a = rand(12)
    rand_b = rand(62)
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


class EnvelopeFactory:
    """Turns core events into envelopes with a per-boot ``seq`` counter."""

    def __init__(self, thing: str, *, seed: int | None = None) -> None:
        self.thing = thing
        self.seq = 0
        if seed is None:
            self._rand: Callable[[int], int] = lambda bits: int.from_bytes(
                os.urandom((bits + 7) // 8)
            ) & ((1 << bits) - 1)
        else:
            self._rand = random.Random(seed).getrandbits

    def make(self, event: Event) -> Envelope:
        self.seq += 1
        ts = round(event.time * 1000)
        body: dict[str, object] = dict(event.body)
        if event.lat is not None and "lat" not in body:
            body["lat"] = round(event.lat, 7)
        if event.lon is not None and "lon" not in body:
            body["lon"] = round(event.lon, 7)
        if event.clock != "gnss":
            body["clock"] = event.clock
        return Envelope(
            id=uuid7(ts, self._rand),
            thing=self.thing,
            type=event.kind,
            ts=ts,
            seq=self.seq,
            topic=topic_for(self.thing, event.kind),
            lane=EVENT_LANES.get(event.kind, Lane.TELEMETRY),
            body=body,
        )
