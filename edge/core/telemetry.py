"""Telemetry sampling (one record per interval of event time) and batching under the
AWS IoT Core payload limit. Signal names follow COVESA VSS where one exists."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from edge.core.envelope import uuid7
from edge.model import Event, Fix, SignalSample, SpeedSample

SIGNAL_MAX_AGE_S = 10.0

FIX_TYPES = {0: "NONE", 2: "TWO_D", 3: "THREE_D"}


class TelemetrySampler:
    """Emits one telemetry event per ``interval_s`` of event time, carrying the
    latest fix and the arbitrated speed."""

    def __init__(self, *, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._next: float | None = None
        self._fix: Fix | None = None
        self._speed: SpeedSample | None = None
        # other signals (OBD-II engine speed, coolant) by VSS name: (bus time, value)
        self._signals: dict[str, tuple[float, float]] = {}

    def on_signal(self, sample: SignalSample) -> None:
        self._signals[sample.name] = (sample.time, sample.value)

    def on_speed(self, sample: SpeedSample) -> None:
        self._speed = sample

    def on_fix(self, fix: Fix) -> Event | None:
        self._fix = fix
        if fix.time is None:
            return None
        return self.sample(fix.time, clock="gnss" if fix.valid else "system")

    def sample(self, time: float, *, clock: str = "gnss") -> Event | None:
        if self._next is not None and time < self._next:
            if time >= self._next - 10 * self.interval_s:
                return None
            # the clock stepped back (system clock replaced by GNSS time): start over
        # align to the interval grid so that records are evenly spaced
        self._next = (time // self.interval_s + 1) * self.interval_s
        return Event(kind="telemetry", time=time, body=self.record(time), clock=clock)

    def record(self, time: float | None = None) -> dict[str, Any]:
        """The current record; at ``time``, signals older than SIGNAL_MAX_AGE_S are left
        out (an ECU that stopped answering is not reported forever)."""
        body: dict[str, Any] = {
            name: round(value, 1) for name, (t, value) in self._signals.items()
            if time is None or time - t <= SIGNAL_MAX_AGE_S}
        s = self._speed
        if s is not None:
            body["Vehicle.Speed"] = round(s.speed_kmh, 2)
            body["speed_source"] = s.source
        f = self._fix
        if f is not None and f.lat is not None and f.lon is not None:
            body["Vehicle.CurrentLocation.Latitude"] = round(f.lat, 7)
            body["Vehicle.CurrentLocation.Longitude"] = round(f.lon, 7)
            if f.alt_m is not None:
                body["Vehicle.CurrentLocation.Altitude"] = round(f.alt_m, 1)
            if f.course_deg is not None:
                body["Vehicle.CurrentLocation.Heading"] = round(f.course_deg, 1)
            body["Vehicle.CurrentLocation.GNSSReceiver.FixType"] = FIX_TYPES.get(f.mode, "NONE")
            body["gnss"] = {"valid": f.valid, "hdop": f.hdop, "sats": f.sats}
            if f.reason:
                body["gnss"]["reason"] = f.reason
        return body


def batch_payload(thing: str, records: Sequence[bytes], ids: Sequence[str] | None = None
                  ) -> bytes:
    """One telemetry publish holding several envelopes (each keeps its own id, ts, seq).

    The wrapper is an envelope too: ``id`` is a UUIDv7 on the first record's time whose
    random bits are a hash of the records' ids -- the same batch sent again after a lost
    PUBACK carries the same id; ``ts`` and ``seq`` are the first record's. ``ids`` are
    the records' ids when the caller has them (the outbox does), which saves parsing
    every record."""
    head = json.loads(records[0])
    if ids is None:
        ids = [str(json.loads(r)["id"]) for r in records]
    key = ",".join(ids)
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=10).digest())
    bid = uuid7(int(head["ts"]), lambda bits: _take_bits(digest, bits))
    return (
        b'{"id":"' + bid.encode() + b'","thing":' + json.dumps(thing).encode()
        + b',"type":"telemetry_batch","ts":' + str(int(head["ts"])).encode()
        + b',"seq":' + str(int(head["seq"])).encode()
        + b',"count":' + str(len(records)).encode()
        + b',"records":[' + b",".join(records) + b"]}"
    )


def _take_bits(digest: int, bits: int) -> int:
    # 12 bits for rand_a, then 62 for rand_b, from one 80-bit digest
    return (digest >> (62 if bits == 12 else 0)) & ((1 << bits) - 1)


def split_batches(records: Sequence[bytes], *, max_records: int, max_bytes: int,
                  overhead: int = 256) -> list[list[int]]:
    """Indices of ``records`` grouped so that no batch exceeds either bound."""
    out: list[list[int]] = []
    cur: list[int] = []
    size = overhead
    for i, rec in enumerate(records):
        n = len(rec) + 1
        if cur and (len(cur) >= max_records or size + n > max_bytes):
            out.append(cur)
            cur, size = [], overhead
        cur.append(i)
        size += n
    if cur:
        out.append(cur)
    return out
