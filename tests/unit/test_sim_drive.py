"""The drive directory format and the merged timeline (sim/drive.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import can
import pytest

from sim.drive import DriveError, iter_timeline, load_drive, nmea_checksum_ok, parse_candump
from sim.generate import sentence

DAY = dt.datetime(2026, 5, 14, tzinfo=dt.UTC).timestamp()


def rmc(hms: str, date: str = "140526") -> bytes:
    return sentence(f"GNRMC,{hms},A,4808.88027,N,01134.32018,E,0.021,89.24,{date},,,A")


def gga(hms: str) -> bytes:
    return sentence(f"GNGGA,{hms},4808.88027,N,01134.32018,E,1,11,0.87,518.8,M,47.3,M,,")


def gsa() -> bytes:
    return sentence("GNGSA,A,3,05,09,18,,,,,,,,,,1.39,0.87,1.13")


def write(d: Path, nmea: list[bytes] | None, can_lines: list[str] | None, toml: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if nmea is not None:
        (d / "gnss.nmea").write_bytes(b"".join(x + b"\r\n" for x in nmea))
    if can_lines is not None:
        (d / "can.log").write_text("".join(x + "\n" for x in can_lines))
    if toml:
        (d / "drive.toml").write_text(toml)
    return d


def test_not_a_drive_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DriveError, match=r"neither gnss\.nmea nor can\.log"):
        load_drive(tmp_path)
    with pytest.raises(DriveError, match="not a directory"):
        load_drive(tmp_path / "missing")
    write(tmp_path / "bad", [rmc("083000.00")], None, 'date = "14.05.2026"\n')
    with pytest.raises(DriveError, match="date: must be YYYY-MM-DD"):
        load_drive(tmp_path / "bad")
    write(tmp_path / "unknown", [rmc("083000.00")], None, 'colour = "red"\n')
    with pytest.raises(DriveError, match="colour: unknown key"):
        load_drive(tmp_path / "unknown")


def test_timeline_merges_both_streams_by_time(tmp_path: Path) -> None:
    d = write(tmp_path / "d", [
        b"# a comment line is skipped",
        gsa(),                      # before any time: takes the first time (08:30:00)
        rmc("083000.00"), gga("083000.00"), gsa(),
        rmc("083001.00"), b"\xb5\x62garbage", gga("083001.00"),
    ], [
        f"({DAY + 30600 - 0.5:.6f}) can0 3E9#0000010000000001",
        f"({DAY + 30600.0:.6f}) can0 3E9#0000010000000002",
        f"({DAY + 30600.4:.6f}) can0 12345678#00",
        f"({DAY + 30601.2:.6f}) can0 20000080#0000040000000000",
    ])
    items = list(iter_timeline(load_drive(d)))
    got = [(round(t - DAY, 1), k, b[:12]) for t, k, b in items]
    assert got == [
        (30599.5, "can", b"(1778747399."),
        (30600.0, "gnss", b"$GNGSA,A,3,0"),
        (30600.0, "gnss", b"$GNRMC,08300"),
        (30600.0, "gnss", b"$GNGGA,08300"),
        (30600.0, "gnss", b"$GNGSA,A,3,0"),
        (30600.0, "can", b"(1778747400."),   # a tie: GNSS first, then CAN
        (30600.4, "can", b"(1778747400."),
        (30601.0, "gnss", b"$GNRMC,08300"),
        (30601.0, "gnss", b"\xb5\x62garbage"),  # no time of its own: inherits
        (30601.0, "gnss", b"$GNGGA,08300"),
        (30601.2, "can", b"(1778747401."),
    ]
    assert all(not b.endswith((b"\n", b"\r")) for _, _, b in items)


def test_gga_only_log_takes_date_from_drive_toml_and_rolls_over_midnight(tmp_path: Path) -> None:
    d = write(tmp_path / "d", [gga("235959.00"), gga("000000.00"), gga("000001.00")], None,
              'date = "2026-05-14"\n')
    times = [t for t, _, _ in iter_timeline(load_drive(d))]
    assert times == [DAY + 86399, DAY + 86400, DAY + 86401]


def test_gga_only_log_without_date_is_skipped_not_fatal(tmp_path: Path) -> None:
    d = write(tmp_path / "d", [gga("083000.00")], ["(1.000000) can0 123#00"])
    assert [k for _, k, _ in iter_timeline(load_drive(d))] == ["can"]


def test_bad_checksum_line_does_not_move_time(tmp_path: Path) -> None:
    broken = rmc("090000.00")[:-2] + b"00"  # valid-looking time, wrong checksum
    assert not nmea_checksum_ok(broken)
    d = write(tmp_path / "d", [rmc("083000.00"), broken, gga("083001.00")], None)
    assert [t - DAY for t, _, _ in iter_timeline(load_drive(d))] == [30600, 30600, 30601]


def test_can_time_offset_and_unplug_markers(tmp_path: Path) -> None:
    d = write(tmp_path / "d", None, ["(100.000000) can0 3E9#01", "(101.000000) can0 3E9#02"],
              "can_time_offset_s = 1000.0\n[[unplug]]\nat = 1100.5\nduration_s = 2.0\n")
    drive = load_drive(d)
    assert [(t, b) for t, _, b in iter_timeline(drive)] == [
        (1100.0, b"(1100.000000) can0 3E9#01"), (1101.0, b"(1101.000000) can0 3E9#02")]
    assert [(t, k, b) for t, k, b in iter_timeline(drive, control=True) if k == "ctl"] == [
        (1100.5, "ctl", b"unplug"), (1102.5, "ctl", b"replug")]


def test_other_python_can_formats_are_read_by_suffix(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    with can.Logger(str(d / "can.asc")) as w:
        w.on_message_received(can.Message(timestamp=1000.25, arbitration_id=0x3E9,
                                          data=b"\x87\x13", is_extended_id=False))
    drive = load_drive(d)
    assert drive.can == d / "can.asc"
    [(t, kind, line)] = list(iter_timeline(drive))
    frame = parse_candump(line)
    assert kind == "can" and frame is not None
    assert (frame.arbitration_id, frame.data, frame.error) == (0x3E9, b"\x87\x13", False)
    assert t == pytest.approx(frame.ts)


def test_parse_candump_error_and_extended_frames() -> None:
    e = parse_candump(b"(1.000000) can0 20000080#0000040000000000")
    x = parse_candump(b"(1.000000) can0 18FEF100#0102 R")
    assert e is not None and e.error
    assert x is not None and x.extended and x.arbitration_id == 0x18FEF100 and not x.error
    assert parse_candump(b"not a frame") is None


def test_sim_timeline_and_replay_read_a_dirty_can_log_alike(tmp_path: Path) -> None:
    # One CAN reader: '#' first line, blank lines, garbage and a truncated line are
    # skipped and counted the same by the timeline edge sim plays and by edge replay.
    from edge.sources.canlog import LogStats, iter_candump_lines

    good = [f"({DAY + 30600 + i * 0.1:.6f}) can0 3E9#00000100000000{i:02X}" for i in range(5)]
    d = write(tmp_path / "d", None, ["# captured with candump -L", "", *good[:2],
                                     "garbage", good[2][:15], *good[2:]])
    frames = [line for _, kind, line in iter_timeline(load_drive(d)) if kind == "can"]
    assert [f.decode() for f in frames] == good
    stats = LogStats()
    assert [line.decode() for _, line in iter_candump_lines(d / "can.log", stats)] == good
    assert (stats.frames, stats.comments, stats.blank, stats.malformed) == (5, 1, 1, 2)
