"""NMEA framing, merging and validity (edge.core.nmea) and `edge decode nmea`."""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
from pathlib import Path

import pytest

from edge.commands import decode_nmea
from edge.core.nmea import FixAssembler, NmeaDecoder, iter_fixes
from edge.core.nmeadate import GPS_ROLLOVER_2019, correct_week_rollover
from edge.core.nmeaframe import NmeaFramer, _crc24q
from edge.model import Fix

DATA = Path(__file__).resolve().parents[1] / "data" / "nmea"
DAY = dt.date(2024, 5, 17)
T0 = dt.datetime(2024, 5, 17, 12, 34, 56, tzinfo=dt.UTC).timestamp()


def nmea(body: str) -> bytes:
    """A sentence with a correct checksum, without line ending."""
    x = 0
    for ch in body.encode():
        x ^= ch
    return f"${body}*{x:02X}".encode()


def rmc(hhmmss: str, *, status: str = "A", lat: str = "5230.9780,N",
        lon: str = "01322.6620,E", knots: str = "29.160", date: str = "170524",
        mode: str = "A", talker: str = "GP") -> bytes:
    return nmea(f"{talker}RMC,{hhmmss},{status},{lat},{lon},{knots},90.0,{date},,,{mode}")


def gga(hhmmss: str, *, q: int = 1, lat: str = "5230.9780,N", lon: str = "01322.6620,E",
        hdop: str = "0.9", sats: str = "10", alt: str = "35.2", talker: str = "GP") -> bytes:
    return nmea(f"{talker}GGA,{hhmmss},{lat},{lon},{q},{sats},{hdop},{alt},M,39.6,M,,")


def lon_at(metres_east: float) -> str:
    """An NMEA longitude string `metres_east` east of 13.3777E at 52.5163N."""
    import math

    deg = 13.3777 + metres_east / (111_320 * math.cos(math.radians(52.5163)))
    d = int(deg)
    return f"{d:03d}{(deg - d) * 60:07.4f},E"


def run(lines: list[bytes], **kw: object) -> tuple[list[Fix], dict[str, int]]:
    dec = NmeaDecoder(**kw)  # type: ignore[arg-type]
    fixes = list(iter_fixes([line + b"\r\n" for line in lines], decoder=dec))
    return fixes, dec.stats


def capture(name: str, **kw: object) -> tuple[list[Fix], dict[str, int]]:
    dec = NmeaDecoder(**kw)  # type: ignore[arg-type]
    with (DATA / name).open("rb") as fh:
        fixes = list(iter_fixes(fh, decoder=dec))
    return fixes, dec.stats


def iso(fix: Fix) -> str | None:
    return fix.to_json()["time"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- framer


def test_framer_same_sentences_whatever_the_chunking() -> None:
    stream = b"".join(gga(f"1234{s:02d}") + b"\r\n" for s in range(10))
    whole = NmeaFramer().feed(stream)
    assert len(whole) == 10
    f = NmeaFramer()
    bytewise = [s for i in range(len(stream)) for s in f.feed(stream[i:i + 1])]
    assert bytewise == whole
    assert f.pending == 0


def test_framer_garbage_nul_and_line_endings() -> None:
    a, b, c = gga("123456"), gga("123457"), gga("123458")
    f = NmeaFramer()
    out = f.feed(b"\x00\x00\xff\xfegarbage" + a + b"\r\r\n" + b + b"\n\x00" + c + b"\r")
    assert out == [a, b, c]
    assert f.stats["garbage_bytes"] == 4 + 7 + 1


def test_framer_restarts_at_dollar_mid_sentence() -> None:
    good = gga("123456")
    f = NmeaFramer()
    assert f.feed(b"$GPGGA,1234" + good + b"\r\n") == [good]
    assert f.stats["restarts"] == 1


def test_framer_non_ascii_aborts_the_sentence() -> None:
    good = gga("123456")
    f = NmeaFramer()
    assert f.feed(b"$GPGGA,12\xe934\r\n" + good + b"\r\n") == [good]
    assert f.stats["aborted"] == 1


def test_framer_drops_overlong_sentence_and_bounds_its_buffer() -> None:
    good = gga("123456")
    f = NmeaFramer()
    out = f.feed(b"$GPTXT," + b"A" * 300)
    assert out == []
    assert f.pending <= 128
    out = f.feed(b"*00\r\n" + good + b"\r\n")
    assert out == [good]
    assert f.stats["too_long"] == 1


def ubx(payload: bytes) -> bytes:
    body = b"\x01\x07" + struct.pack("<H", len(payload)) + payload
    a = b = 0
    for x in body:
        a = (a + x) & 0xFF
        b = (b + a) & 0xFF
    return b"\xb5\x62" + body + bytes([a, b])


def rtcm3(payload: bytes) -> bytes:
    head = bytes([0xD3, len(payload) >> 8, len(payload) & 0xFF]) + payload
    return head + _crc24q(head).to_bytes(3, "big")


def test_crc24q_check_value() -> None:
    assert _crc24q(b"123456789") == 0xCDE703


def test_framer_skips_binary_frames_even_with_nmea_inside() -> None:
    trap = rmc("000000", lat="0000.000,N", lon="00000.000,E") + b"\r\n"
    good = gga("123456")
    stream = ubx(b"$" + trap) + good + b"\r\n" + rtcm3(b"\x3e\xd0" + trap) + good + b"\r\n"
    for chunk in (len(stream), 1, 7):
        f = NmeaFramer()
        out = [s for i in range(0, len(stream), chunk) for s in f.feed(stream[i:i + chunk])]
        assert out == [good, good]
        assert f.stats["ubx"] == 1
        assert f.stats["rtcm3"] == 1


def test_framer_broken_binary_header_does_not_swallow_nmea() -> None:
    good = gga("123456")
    f = NmeaFramer()
    out = f.feed(b"\xb5\x62\x01\x07\x10\x00xyz" + b"\x00" * 20 + good + b"\r\n")
    assert out == [good]
    assert f.stats["binary_bad"] == 1


# --------------------------------------------------------------------------- captures


def test_multi_constellation_capture() -> None:
    fixes, stats = capture("multi_constellation.nmea")
    assert len(fixes) == 8
    assert all(f.valid for f in fixes)
    assert iso(fixes[0]) == "2024-05-17T12:34:56.000Z"
    assert iso(fixes[-1]) == "2024-05-17T12:35:03.000Z"
    first = fixes[0]
    assert first.lat == pytest.approx(52.5163, abs=1e-6)
    assert first.lon == pytest.approx(13.3777, abs=1e-6)
    assert first.speed_mps == pytest.approx(15.0, abs=0.01)
    assert first.course_deg == 90.0
    assert (first.mode, first.sats, first.hdop, first.alt_m) == (3, 12, 0.8, 35.2)
    # 15 m/s east: consecutive fixes are ~15 m apart in longitude
    assert fixes[1].lon - fixes[0].lon == pytest.approx(15 / (111_320 * 0.6085), rel=0.01)
    assert stats["ignored"] == 8 * 7  # GSV x6 + TXT per epoch
    assert stats["bad_checksum"] == stats["parse_error"] == 0


def test_rmc_only_capture_empty_fields_are_none_not_zero() -> None:
    fixes, _ = capture("rmc_only.nmea")
    assert [f.valid for f in fixes] == [False, False, True, True, True, True, True]
    assert fixes[0].lat is None and fixes[0].lon is None
    assert fixes[0].reason == "no_position"
    assert fixes[0].mode == 0
    assert fixes[2].mode == 2  # RMC has no altitude
    assert fixes[2].speed_mps == pytest.approx(15.0, abs=0.01)


def test_gga_only_without_date_is_not_trusted() -> None:
    fixes, _ = capture("gga_only/gnss.nmea")
    assert len(fixes) == 6
    assert all(f.time is None and not f.valid and f.reason == "no_date" for f in fixes)


def test_gga_only_with_date_crosses_midnight() -> None:
    fixes, _ = capture("gga_only/gnss.nmea", date=DAY)
    assert [iso(f) for f in fixes] == [
        "2024-05-17T23:59:57.000Z", "2024-05-17T23:59:58.000Z", "2024-05-17T23:59:59.000Z",
        "2024-05-18T00:00:00.000Z", "2024-05-18T00:00:01.000Z", "2024-05-18T00:00:02.000Z",
    ]
    assert all(f.valid for f in fixes)


def test_dead_reckoning_capture() -> None:
    fixes, stats = capture("dead_reckoning.nmea")
    assert [f.valid for f in fixes] == [True, True, False, False, False, True, True]
    assert {f.reason for f in fixes[2:5]} == {"faa_mode"}
    assert stats["invalid_fixes"] == 3


def test_dead_reckoning_gga_quality_alone() -> None:
    fixes, _ = run([gga("123456", q=6), gga("123457", q=6)], date=DAY)
    assert [f.reason for f in fixes] == ["dead_reckoning", "dead_reckoning"]
    assert fixes[0].lat is not None  # kept for telemetry


def test_week_rollover_capture_is_corrected_against_a_reference() -> None:
    fixes, stats = capture("week_rollover.nmea", reference_date=dt.date(2024, 5, 17))
    assert iso(fixes[0]) == "2024-05-17T12:34:56.000Z"
    assert stats["rollover_corrected"] == 3
    # without a second clock a date cannot be told from history: kept as sent
    raw, raw_stats = capture("week_rollover.nmea")
    assert iso(raw[0]) == "2004-10-01T12:34:56.000Z"
    assert raw_stats["rollover_corrected"] == 0
    # live, without a plausible host clock: the floor of the last rollover
    live, _ = capture("week_rollover.nmea", rollover_floor=GPS_ROLLOVER_2019)
    assert iso(live[0]) == "2024-05-17T12:34:56.000Z"
    # and --no-rollover: verbatim even with a reference
    off, _ = capture("week_rollover.nmea", reference_date=dt.date(2024, 5, 17),
                     rollover=False)
    assert iso(off[0]) == "2004-10-01T12:34:56.000Z"


def test_week_rollover_heuristic() -> None:
    week0 = dt.date(1999, 8, 22)  # GPS week 0 of the 1999 epoch, what some receivers say
    assert correct_week_rollover(week0, floor=GPS_ROLLOVER_2019) == GPS_ROLLOVER_2019
    assert correct_week_rollover(week0) == week0  # no second clock: history
    assert correct_week_rollover(week0, reference=dt.date(2019, 4, 8)) == GPS_ROLLOVER_2019
    assert correct_week_rollover(dt.date(2024, 5, 17)) == dt.date(2024, 5, 17)
    # the 2038 rollover: only a trusted reference date can tell
    after = dt.date(2038, 12, 1)
    bugged = after - dt.timedelta(weeks=1024)
    assert correct_week_rollover(bugged) == bugged
    assert correct_week_rollover(bugged, reference=dt.date(2038, 11, 30)) == after


def test_a_2018_date_that_agrees_with_its_reference_is_history_not_a_rollover() -> None:
    # The symptom: $GNRMC,...,020818 decoded as 2038-03-18 ("579 rollovers corrected").
    day = dt.date(2018, 8, 2)
    for ref in (day, day + dt.timedelta(days=3), dt.date(2026, 11, 29)):
        assert correct_week_rollover(day, reference=ref) == day
        fixes, stats = run([rmc("161448.29", date="020818")], reference_date=ref)
        assert iso(fixes[0]) == "2018-08-02T16:14:48.290Z"
        assert stats["rollover_corrected"] == 0
    # no reference at all (a replay without a second clock): kept too
    fixes, _ = run([rmc("161448.29", date="020818")])
    assert iso(fixes[0]) == "2018-08-02T16:14:48.290Z"
    # a rollover-bugged receiver in a 2018 recording: its CAN clock sets it right
    bugged = day - dt.timedelta(weeks=1024)
    fixes, stats = run([rmc("161448.29", date=bugged.strftime("%d%m%y"))], reference_date=day)
    assert iso(fixes[0]) == "2018-08-02T16:14:48.290Z"
    assert stats["rollover_corrected"] == 1


def test_a_date_argument_older_than_the_floor_is_trusted() -> None:
    fixes, _ = run([rmc("123456", date="080710")], date=dt.date(2010, 7, 8))
    assert iso(fixes[0]) == "2010-07-08T12:34:56.000Z"


def test_mixed_binary_capture() -> None:
    fixes, stats = capture("mixed_binary.nmea")
    assert [iso(f) for f in fixes] == [
        "2024-05-17T12:34:56.000Z", "2024-05-17T12:34:57.000Z", "2024-05-17T12:34:58.000Z"]
    assert all(f.valid for f in fixes)
    assert all(f.lat != 0.0 for f in fixes)  # the NMEA inside binary frames never leaks
    assert stats["framer_ubx"] == 1
    assert stats["framer_rtcm3"] == 1
    assert stats["framer_binary_bad"] == 1
    assert stats["framer_too_long"] == 1
    assert stats["framer_restarts"] == 1
    assert stats["bad_checksum"] == 1


# --------------------------------------------------------------------------- parsing


def test_checksum_is_required() -> None:
    fixes, stats = run([b"$GPRMC,123456,A,5230.9780,N,01322.6620,E,29.1,90.0,170524,,,A",
                        rmc("123457")[:-1] + b"0"])
    assert fixes == []
    assert stats["bad_checksum"] == 2


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "QZ"])
def test_any_talker(talker: str) -> None:
    fixes, _ = run([rmc("123456", talker=talker), gga("123456", talker=talker)])
    assert len(fixes) == 1 and fixes[0].valid


def test_proprietary_unknown_and_ignored_are_counted() -> None:
    fixes, stats = run([
        nmea("PUBX,00,123456.00,5230.9780,N"), nmea("PGRME,15.0,M,45.0,M,25.0,M"),
        nmea("GPXYZ,1,2,3"), nmea("GPGSV,1,1,01,05,45,120,40"), b"!AIVDM,1,1,,A,15M67N,0*1D",
        nmea("GPRMC,1234"), rmc("123456"),
    ])
    assert stats["proprietary"] == 2
    assert stats["unknown"] == 1
    assert stats["ignored"] == 2
    assert stats["parse_error"] == 1
    assert len(fixes) == 1 and fixes[0].valid


def test_assembler_survives_any_bytes_pushed_directly() -> None:
    asm = FixAssembler()
    for junk in (b"", b"$", b"$GP", b"$GPRMC", b"$\xff\xfeRMC,1*00", b"$GPRMC,,,,,,,*7F",
                 nmea("GPGGA,999999,9999.9,N,99999.9,E,1,xx,yy,zz,M,,M,,"),
                 nmea("GPRMC,123456,A,9130.0000,N,18100.0000,E,,,170524,,,A"),
                 nmea("GPZDA,123456,32,13,2024,00,00")):
        asm.push(junk, 0.0)
    assert asm.flush() == [] or all(not f.valid for f in asm.flush())


def test_out_of_range_coordinates_are_no_position() -> None:
    fixes, _ = run([rmc("123456", lat="9130.0000,N"), rmc("123457", lon="18100.0000,E"),
                    rmc("123458", lat="5260.0000,N")])
    assert [f.reason for f in fixes] == ["no_position"] * 3


def test_empty_position_fields_never_become_null_island() -> None:
    fixes, _ = run([nmea("GPGGA,123456,,,,,1,05,1.0,,M,,M,,"), rmc("123457", lat=",", lon=",")],
                   date=DAY)
    assert all(f.lat is None and f.lon is None and not f.valid for f in fixes)


def test_zero_zero_is_rejected() -> None:
    fixes, _ = run([rmc("123456", lat="0000.0000,N", lon="00000.0000,E")])
    assert fixes[0].reason == "null_island"


# --------------------------------------------------------------------------- merging


def test_one_fix_per_epoch_merging_all_sentence_types() -> None:
    fixes, _ = run([
        nmea("GNGSA,A,3,05,13,15,,,,,,,,,,1.45,0.80,1.21"),
        rmc("123456", talker="GN"),
        nmea("GNVTG,91.0,T,,M,29.0,N,53.7,K,A"),
        gga("123456", talker="GN", hdop="0.8", sats="14", alt="40.5"),
        nmea("GNGLL,5230.9780,N,01322.6620,E,123456,A,A"),
        nmea("GNZDA,123456,17,05,2024,00,00"),
        rmc("123457", talker="GN"),
    ])
    assert len(fixes) == 2
    f = fixes[0]
    assert f.time == T0
    assert (f.mode, f.sats, f.hdop, f.alt_m, f.course_deg) == (3, 14, 0.8, 40.5, 90.0)
    assert f.valid


def test_zda_gives_the_date_for_gga_only_streams() -> None:
    fixes, _ = run([nmea("GPZDA,235958,17,05,2024,00,00"), gga("235958"), gga("235959"),
                    gga("000000"), gga("000001")])
    assert [iso(f) for f in fixes] == [
        "2024-05-17T23:59:58.000Z", "2024-05-17T23:59:59.000Z",
        "2024-05-18T00:00:00.000Z", "2024-05-18T00:00:01.000Z"]


def test_rmc_midnight_rollover() -> None:
    fixes, _ = run([rmc("235959.50", date="170524"), rmc("000000.50", date="180524")])
    assert [iso(f) for f in fixes] == ["2024-05-17T23:59:59.500Z", "2024-05-18T00:00:00.500Z"]
    assert all(f.valid for f in fixes)


def test_learned_cycle_end_emits_without_waiting_for_the_next_epoch() -> None:
    asm = FixAssembler()
    got: list[list[Fix]] = []
    for s in range(4):
        t = f"12345{s}"
        got.append(asm.push(rmc(t), float(s)))
        got.append(asm.push(gga(t), float(s)))
    # epochs 0 and 1 teach that GGA ends the cycle; from epoch 2 on it is emitted at GGA
    assert [len(x) for x in got] == [0, 0, 1, 0, 1, 1, 0, 1]
    assert got[-1][0].time == T0 - 6 + 3
    assert asm.flush() == []


def test_late_sentence_after_a_wrongly_learned_end_is_dropped() -> None:
    asm = FixAssembler()
    for s in range(3):
        asm.push(rmc(f"12345{s}"), 0.0)
        asm.push(gga(f"12345{s}"), 0.0)
    # now GGA ends a cycle; a receiver that adds a GLL after it
    asm.push(rmc("123453"), 0.0)
    assert len(asm.push(gga("123453"), 0.0)) == 1
    assert asm.push(nmea("GPGLL,5230.9780,N,01322.6620,E,123453,A,A"), 0.0) == []
    assert asm.stats["late_sentences"] == 1
    asm.push(rmc("123454"), 0.0)
    fixes = asm.push(gga("123455"), 0.0)
    assert len(fixes) == 1 and fixes[0].valid  # 12:34:54 is not a "stuck" fix


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([rmc("123456", status="V")], "status_void"),
        ([rmc("123456", mode="N")], "faa_mode"),
        ([rmc("123456", mode="E")], "faa_mode"),
        ([rmc("123456", mode="V")], "faa_mode"),
        ([rmc("123456"), gga("123456", q=0)], "gga_quality"),
        ([rmc("123456"), gga("123456", q=6)], "dead_reckoning"),
        ([rmc("123456"), gga("123456", q=8)], "simulator"),
        ([rmc("123456"), nmea("GPGSA,A,1,,,,,,,,,,,,,,,")], "gsa_no_fix"),
        ([rmc("123456"), gga("123456", hdop="7.5")], "hdop"),
        ([nmea("GPVTG,90.0,T,,M,29.0,N,53.7,K,N"), rmc("123456")], "faa_mode"),
    ],
)
def test_invalid_fixes_are_kept_with_a_reason(lines: list[bytes], reason: str) -> None:
    fixes, stats = run(lines)
    assert len(fixes) == 1
    assert not fixes[0].valid
    assert fixes[0].reason == reason
    assert fixes[0].lat is not None
    assert stats[f"invalid_{reason}"] == 1


def test_hdop_cap_is_configurable() -> None:
    fixes, _ = run([rmc("123456"), gga("123456", hdop="7.5")], max_hdop=10.0)
    assert fixes[0].valid


def test_non_advancing_timestamps_are_rejected() -> None:
    fixes, _ = run([rmc("123456"), rmc("123457"), rmc("123455"), rmc("123458")])
    assert [f.reason for f in fixes] == [None, None, "time_not_advancing", None]
    # a stuck receiver repeating its last epoch (once the cycle end is learned, each
    # RMC is an epoch of its own)
    fixes, _ = run([rmc("123456"), rmc("123457"), rmc("123458"), rmc("123458"),
                    rmc("123458"), rmc("123459")])
    assert [f.reason for f in fixes] == [None, None, None, "time_not_advancing",
                                         "time_not_advancing", None]


def test_jump_rejected_until_confirmed() -> None:
    far = lon_at(50_000)  # 50 km east in one second
    lines = [rmc("123456"), rmc("123457", lon=lon_at(15)),
             rmc("123458", lon=far), rmc("123459", lon=lon_at(50_015)),
             rmc("123500", lon=lon_at(50_030)), rmc("123501", lon=lon_at(50_045))]
    fixes, stats = run(lines)
    assert [f.reason for f in fixes] == [None, None, "jump", "jump", None, None]
    assert stats["jumps_rejected"] == 2 and stats["jumps_confirmed"] == 1


def test_single_glitch_is_rejected_and_the_track_continues() -> None:
    lines = [rmc("123456"), rmc("123457", lon=lon_at(15)), rmc("123458", lon=lon_at(9_000)),
             rmc("123459", lon=lon_at(45)), rmc("123500", lon=lon_at(60))]
    fixes, _ = run(lines)
    assert [f.valid for f in fixes] == [True, True, False, True, True]


def test_jump_confirmation_count_is_configurable() -> None:
    lines = [rmc("123456"), rmc("123457", lon=lon_at(50_000)), rmc("123458", lon=lon_at(50_015))]
    fixes, _ = run(lines, confirm_fixes=1)
    assert [f.valid for f in fixes] == [True, True, True]


def test_slow_gap_is_not_a_jump() -> None:
    # 10 minutes in a tunnel, 9 km further: 15 m/s, consistent
    fixes, _ = run([rmc("123456"), rmc("124456", lon=lon_at(9_000))])
    assert all(f.valid for f in fixes)


# --------------------------------------------------------------------------- decode


def test_decode_nmea_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert decode_nmea.main(DATA / "multi_constellation.nmea", date=None, out=out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(rows) == 8
    assert set(rows[0]) == {"time", "lat", "lon", "speed_mps", "course_deg", "alt_m", "mode",
                            "hdop", "sats", "valid"}
    assert rows[0]["time"] == "2024-05-17T12:34:56.000Z"
    assert rows[0]["mode"] == 3 and rows[0]["valid"] is True
    err = capsys.readouterr().err
    assert err.count("\n") == 2
    assert "week-rollover reference: none" in err
    assert "104 sentences" in err and "8 fixes" in err and "8 valid" in err


def _decode(path: Path, **kw: object) -> tuple[list[dict[str, object]], str, int]:
    out = io.StringIO()
    err = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(err):
        rc = decode_nmea.main(path, out=out, **{"date": None, **kw})  # type: ignore[arg-type]
    return [json.loads(x) for x in out.getvalue().splitlines()], err.getvalue(), rc


def test_decode_nmea_reference_and_no_rollover(tmp_path: Path) -> None:
    bugged = (dt.date(2018, 8, 2) - dt.timedelta(weeks=1024)).strftime("%d%m%y")
    f = tmp_path / "x.nmea"
    f.write_bytes(rmc("161448.29", date="020818") + b"\r\n"
                  + rmc("161449.29", date=bugged) + b"\r\n")
    rows, err, rc = _decode(f, reference_date="2018-08-05")
    assert rc == 0 and "reference: --reference-date 2018-08-05" in err
    assert [r["time"] for r in rows] == ["2018-08-02T16:14:48.290Z", "2018-08-02T16:14:49.290Z"]
    assert "1 week rollovers corrected" in err
    rows, err, _ = _decode(f, reference_date="2018-08-05", rollover=False)
    assert "--no-rollover" in err and rows[1]["time"].startswith("1998-12-17")
    rows, err, _ = _decode(f)
    assert "reference: none" in err and rows[0]["time"] == "2018-08-02T16:14:48.290Z"
    _, err, rc = _decode(f, reference_date="5 Aug")
    assert rc == 2 and "--reference-date must be YYYY-MM-DD" in err


def test_decode_nmea_takes_the_drive_can_clock_as_reference(tmp_path: Path) -> None:
    # one clock per drive: a 2018 recording whose receiver lost 1024 weeks, and its CAN log
    bugged = (dt.date(2018, 8, 2) - dt.timedelta(weeks=1024)).strftime("%d%m%y")
    (tmp_path / "gnss.nmea").write_bytes(rmc("161448.29", date=bugged) + b"\r\n")
    t = dt.datetime(2018, 8, 2, 16, 14, 48, tzinfo=dt.UTC).timestamp()
    (tmp_path / "can.log").write_text(f"# a comment first\n({t:.6f}) can0 0B4#0000000000000000\n")
    rows, err, _ = _decode(tmp_path / "gnss.nmea")
    assert "reference: CAN log clock can.log (2018-08-02)" in err
    assert rows[0]["time"] == "2018-08-02T16:14:48.290Z"


def test_decode_nmea_invalid_reasons(tmp_path: Path) -> None:
    f = tmp_path / "x.nmea"
    lines = [gga("123455"), rmc("123456", status="V"), gga("123457", hdop="12.5")]
    f.write_bytes(b"".join(x + b"\r\n" for x in lines))
    rows, err, _ = _decode(f)
    assert [r.get("invalid_reason") for r in rows] == ["no_date", "status_void", "hdop"]
    assert all(("invalid_reason" in r) == (not r["valid"]) for r in rows)
    assert "invalid_reason: hdop 1, no_date 1, status_void 1" in err


def test_decode_nmea_reads_the_drive_date() -> None:
    out = io.StringIO()
    assert decode_nmea.main(DATA / "gga_only" / "gnss.nmea", date=None, out=out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[0]["time"] == "2024-05-17T23:59:57.000Z"
    assert rows[-1]["time"] == "2024-05-18T00:00:02.000Z"
    out = io.StringIO()
    decode_nmea.main(DATA / "gga_only" / "gnss.nmea", date="2024-01-02", out=out)
    assert json.loads(out.getvalue().splitlines()[0])["time"] == "2024-01-02T23:59:57.000Z"


def test_decode_nmea_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert decode_nmea.main(tmp_path / "missing.nmea", date=None, out=out) == 2
    assert "cannot read" in capsys.readouterr().err
    assert decode_nmea.main(tmp_path, date=None, out=out) == 2
    assert decode_nmea.main(DATA / "rmc_only.nmea", date="17/05/2024", out=out) == 2
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert out.getvalue() == ""


def test_a_bogus_future_time_does_not_freeze_the_clock() -> None:
    lines = [rmc("123456"), rmc("123457", date="170525"),  # one year ahead, then back
             rmc("123458"), rmc("123459"), rmc("123500"), rmc("123501")]
    fixes, stats = run(lines, confirm_fixes=3)
    assert [f.reason for f in fixes] == [None, None, "time_not_advancing",
                                         "time_not_advancing", None, None]
    assert stats["time_rewinds"] == 1


def test_one_instant_two_positions_far_apart_are_two_fixes_near_ones_one() -> None:
    # GGA with 5 decimals and RMC with 4 of the same position: one measurement (the later
    # is kept); a GLL 1.7 m away from the GGA of the same second: two fixes, the second
    # not after the first in time
    near = [gga("123456", lat="5230.97801,N"), rmc("123456", lat="5230.9780,N")]
    fixes, stats = run(near)
    assert len(fixes) == 1 and fixes[0].valid
    assert stats.get("split_epochs", 0) == 0
    far = [gga("123456"), nmea("GPGLL,5230.9789,N,01322.6620,E,123456,A,A"),
           gga("123457")]
    fixes, stats = run(far, date=DAY)
    assert [f.reason for f in fixes] == [None, "time_not_advancing", None]
    assert fixes[0].lat != fixes[1].lat and fixes[0].time == fixes[1].time
    assert stats["split_epochs"] == 1


def test_gga_from_no_satellite_is_no_fix() -> None:
    fixes, stats = run([gga("123456", sats="00")], date=DAY)
    assert fixes[0].mode == 0 and fixes[0].reason == "no_satellites"
    assert stats["invalid_no_satellites"] == 1
