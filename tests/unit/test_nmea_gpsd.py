"""gpsd's regression logs (test/daemon/*.log of the Debian gpsd 3.22 source, BSD-2) run
through the NMEA reader: a robustness corpus of ~150 real receivers, some binary.

The logs are fetched by ``scripts/fetch_gpsd_logs.py`` into the cache; without them
these tests skip.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from edge.core.nmea import NmeaDecoder, iter_fixes

CACHE = Path(os.environ.get("VEHICLE_EDGE_CACHE") or Path.home() / ".cache" / "vehicle-edge")
LOGS = CACHE / "gpsd-3.22" / "daemon"
FILES = sorted(LOGS.glob("*.log")) if LOGS.is_dir() else []

pytestmark = pytest.mark.skipif(
    not FILES, reason=f"gpsd logs not in {LOGS}: run scripts/fetch_gpsd_logs.py")

LOW = dt.datetime(1980, 1, 6, tzinfo=dt.UTC).timestamp()
HIGH = dt.datetime(2040, 1, 1, tzinfo=dt.UTC).timestamp()


def decode(path: Path, **kw: object) -> tuple[list, dict[str, int]]:  # type: ignore[type-arg]
    dec = NmeaDecoder(**kw)  # type: ignore[arg-type]
    with path.open("rb") as fh:
        fixes = list(iter_fixes(fh, decoder=dec))
    return fixes, dec.stats


def test_every_log_decodes_with_sane_counts() -> None:
    total: dict[str, int] = {}
    for path in FILES:
        fixes, stats = decode(path)
        assert all(v >= 0 for v in stats.values()), path.name
        assert stats["fixes"] == len(fixes) <= stats["sentences"], path.name
        assert stats["valid_fixes"] + stats["invalid_fixes"] == stats["fixes"], path.name
        for f in fixes:
            if f.valid:
                assert f.lat is not None and f.lon is not None, path.name
                assert -90 <= f.lat <= 90 and -180 <= f.lon <= 180, path.name
                # no second clock: each receiver's date as sent (1980 .. 2040)
                assert f.time is not None and LOW <= f.time < HIGH, path.name
            else:
                assert f.reason, path.name
        for k, v in stats.items():
            total[k] = total.get(k, 0) + v
    assert len(FILES) > 100
    assert total["framer_sentences"] > 20_000
    assert total["valid_fixes"] > 2_000
    assert total["bad_checksum"] < total["framer_sentences"] / 100
    assert total["parse_error"] < total["framer_sentences"] / 100
    assert total["framer_ubx"] > 100  # the binary logs are recognised, not parsed as text
    assert total["framer_rtcm3"] > 100


def test_gpsd_week_rollover_capture() -> None:
    # A GPS-320FW spoofed to just after the 2019 rollover reports 1999-08-22 (week 0).
    path = LOGS / "gp-320fw-2019-04-07-coldboot.log"
    if not path.exists():
        pytest.skip("log not in this gpsd version")
    # its header dates it 2019-04-07: that is the second clock gpsd's .chk agrees with
    fixes, stats = decode(path, reference_date=dt.date(2019, 4, 7))
    assert stats["rollover_corrected"] > 0
    days = {dt.datetime.fromtimestamp(f.time, dt.UTC).date() for f in fixes
            if f.valid and f.time is not None}
    assert days and all(d >= dt.date(2019, 4, 7) for d in days)


def test_bundg_zeus_2018_date_is_kept() -> None:
    # gpsd's .chk keeps this receiver's 2018-08-20 as it is: so do we, with or without
    # a reference that agrees with it
    path = LOGS / "bundg_zeus_9.log"
    if not path.exists():
        pytest.skip("log not in this gpsd version")
    for kw in ({}, {"reference_date": dt.date(2018, 8, 20)}):
        fixes, stats = decode(path, **kw)
        days = {dt.datetime.fromtimestamp(f.time, dt.UTC).date() for f in fixes
                if f.time is not None}
        assert days == {dt.date(2018, 8, 20)}
        assert stats["rollover_corrected"] == 0


def test_ublox8_all_fixes_valid() -> None:
    path = LOGS / "ublox-8.log"
    if not path.exists():
        pytest.skip("log not in this gpsd version")
    fixes, _ = decode(path)
    assert len(fixes) > 50
    assert all(f.valid for f in fixes)


def test_positions_match_gpsd_answer_keys() -> None:
    # Distinct mode >= 2 positions (1e-6 deg) against gpsd's .chk TPVs over every NMEA
    # log: recall and precision both >= 0.97 (0.98 / 0.973 when written).
    from bench.gpsd_parity import parity

    p = parity(LOGS)
    if not p.logs:
        pytest.skip("no .chk answer keys: run scripts/fetch_gpsd_logs.py --force")
    assert p.logs > 90
    assert p.recall >= 0.97, p.worst
    assert p.precision >= 0.97, p.worst
    # the receiver that reports GGA at t and RMC at t+1: both positions are ours too
    bundg = next(r for r in p.worst if r[0] == "bundg_zeus_9.log")
    assert bundg[3] >= 0.97 * bundg[1]


def test_a_fix_from_no_satellite_is_no_fix() -> None:
    # hemi.log: GGA quality 1 with 00 satellites in use for seconds: gpsd reports none
    path = LOGS / "hemi.log"
    if not path.exists():
        pytest.skip("log not in this gpsd version")
    fixes, stats = decode(path)
    zero = [f for f in fixes if f.sats == 0 and f.lat is not None]
    assert zero and all(f.mode == 0 and not f.valid for f in zero)
    named = [f for f in zero if f.reason == "no_satellites"]
    assert len(named) >= len(zero) - 1  # the first also has a VTG saying N (faa_mode)
    assert stats["invalid_no_satellites"] == len(named)


def test_status_void_is_no_fix_whatever_gsa_says() -> None:
    # garmin-geko201: RMC status V with a stale GSA "3D": gpsd reports no position
    path = LOGS / "garmin-geko201.log"
    if not path.exists():
        pytest.skip("log not in this gpsd version")
    fixes, _ = decode(path)
    void = [f for f in fixes if f.reason == "status_void"]
    assert void and all(f.mode == 0 for f in void)
