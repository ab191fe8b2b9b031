"""Fuzzing the NMEA reader: random bytes and mutated sentences never raise, and no fix
that breaks a validity rule is ever marked valid."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.core.nmea import NmeaDecoder
from edge.model import Fix

DATA = Path(__file__).resolve().parents[1] / "data" / "nmea"
MAX_HDOP = 5.0

FUZZ = settings(max_examples=10_000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
MUTATE = settings(max_examples=1_500, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])


def seed_sentences() -> list[bytes]:
    out: list[bytes] = []
    for name in ("multi_constellation.nmea", "dead_reckoning.nmea", "rmc_only.nmea",
                 "gga_only/gnss.nmea"):
        for line in (DATA / name).read_bytes().splitlines():
            if line.startswith((b"$", b"!")):
                out.append(line.strip())
    return out


SEEDS = seed_sentences()


def nmea(body: bytes) -> bytes:
    x = 0
    for ch in body:
        x ^= ch
    return b"$" + body + b"*%02X" % x


def check_valid_fixes(fixes: list[Fix], *, rewinds: int = 0) -> None:
    last: float | None = None
    for f in fixes:
        if not f.valid:
            assert f.reason
            continue
        assert f.reason is None
        assert f.time is not None and math.isfinite(f.time)
        assert f.lat is not None and f.lon is not None
        assert -90.0 <= f.lat <= 90.0 and -180.0 <= f.lon <= 180.0
        assert (f.lat, f.lon) != (0.0, 0.0)
        assert f.quality not in (0, 6, 8)
        assert f.hdop is None or f.hdop <= MAX_HDOP
        assert f.speed_mps is None or f.speed_mps >= 0
        if last is not None and not rewinds:  # a confirmed clock rewind may go back
            assert f.time > last
        last = f.time


def decode(chunks: list[bytes]) -> list[Fix]:
    dec = NmeaDecoder(max_hdop=MAX_HDOP)
    fixes: list[Fix] = []
    for i, c in enumerate(chunks):
        fixes += dec.feed(c, float(i))
    fixes += dec.flush()
    check_valid_fixes(fixes, rewinds=dec.stats.get("time_rewinds", 0))
    return fixes


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_random_bytes_never_raise(chunks: list[bytes]) -> None:
    decode(chunks)


@MUTATE
@given(st.data())
def test_mutated_sentences(data: st.DataObject) -> None:
    picks = data.draw(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=30))
    out: list[bytes] = []
    for s in picks:
        op = data.draw(st.sampled_from(["keep", "flip", "cut", "insert", "field", "field"]))
        if op == "flip" and len(s) > 1:
            i = data.draw(st.integers(1, len(s) - 1))
            s = s[:i] + bytes([data.draw(st.integers(0, 255))]) + s[i + 1:]
        elif op == "cut":
            s = s[:data.draw(st.integers(0, len(s)))]
        elif op == "insert":
            i = data.draw(st.integers(0, len(s)))
            s = s[:i] + data.draw(st.binary(max_size=8)) + s[i:]
        elif op == "field":
            # change one field and fix the checksum, so the mutation reaches the merger
            body = s[1:].split(b"*")[0]
            fields = body.split(b",")
            i = data.draw(st.integers(0, len(fields) - 1))
            fields[i] = data.draw(st.sampled_from(
                [b"", b"0", b"V", b"A", b"N", b"E", b"6", b"8", b"99.9", b"-1", b"nan",
                 b"inf", b"235960", b"9999.99", b"000000", b"311299", b"1e308"]))
            s = nmea(b",".join(fields))
        out.append(s)
    sep = data.draw(st.sampled_from([b"\r\n", b"\n", b"\r\r\n"]))
    decode([sep.join(out) + sep])


@MUTATE
@given(
    status=st.sampled_from(["A", "V", ""]),
    mode=st.sampled_from(["A", "D", "N", "E", "V", "S", "M", ""]),
    quality=st.sampled_from(["0", "1", "2", "4", "5", "6", "8", ""]),
    hdop=st.sampled_from(["0.8", "4.9", "5.1", "99.99", ""]),
)
def test_no_invalid_fix_marked_valid(status: str, mode: str, quality: str, hdop: str) -> None:
    rmc = nmea(f"GPRMC,123456,{status},5230.9780,N,01322.6620,E,1.0,90.0,170524,,,{mode}"
               .encode())
    gga = nmea(f"GPGGA,123456,5230.9780,N,01322.6620,E,{quality},08,{hdop},35.0,M,,M,,"
               .encode())
    fixes = decode([rmc + b"\r\n" + gga + b"\r\n"])
    assert len(fixes) == 1
    should = (status == "A" and mode not in ("N", "E", "V", "S", "M")
              and quality not in ("0", "6", "8") and (hdop == "" or float(hdop) <= MAX_HDOP))
    assert fixes[0].valid == should, fixes[0]
