"""CAN log replay: candump -L fast path, other python-can formats, `edge decode can`."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import can
import pytest

import edge.sources.canlog as canlog
from edge.commands.decode_can import main as decode_main
from edge.core.canspeed import toyota_checksum
from edge.model import SpeedSample
from edge.sources.canlog import LogStats, iter_log_frames, iter_log_obd, iter_log_speed
from edge.sources.dbc import speed_decoder

DBC = """VERSION ""

BS_:

BU_: ECU

BO_ 180 SPEED: 8 ECU
 SG_ SPEED : 47|16@0+ (0.01,0) [0|250] "km/h" ECU
 SG_ CHECKSUM : 63|8@0+ (1,0) [0|255] "" ECU

BO_ 2566844672 CCVS: 8 ECU
 SG_ WheelBasedVehicleSpeed : 8|16@1+ (0.00390625,0) [0|250.996] "km/h" ECU

BO_ 1200 FDSPEED: 16 ECU
 SG_ V : 80|16@1+ (0.1,0) [0|300] "km/h" ECU
"""

T0 = 1_700_000_000.0


@pytest.fixture()
def dbc(tmp_path: Path) -> Path:
    p = tmp_path / "t.dbc"
    p.write_text(DBC)
    return p


def speed_payload(kmh: float) -> bytes:
    data = bytearray(8)
    data[5:7] = round(kmh * 100).to_bytes(2, "big")
    data[7] = toyota_checksum(180, bytes(data))
    return bytes(data)


def messages(n: int = 300) -> list[can.Message]:
    out = []
    for i in range(n):
        t = T0 + i * 0.001
        if i % 10 == 0:
            out.append(can.Message(timestamp=t, arbitration_id=180,
                                   data=speed_payload(i / 10), is_extended_id=False))
        elif i % 10 == 5:
            out.append(can.Message(timestamp=t, arbitration_id=0x0B5, data=bytes(8),
                                   is_extended_id=False))
        else:
            out.append(can.Message(timestamp=t, arbitration_id=0x100 + i % 7,
                                   data=bytes([i % 256]) * 8, is_extended_id=False))
    return out


def candump_line(m: can.Message) -> str:
    ident = f"{m.arbitration_id:08X}" if m.is_extended_id else f"{m.arbitration_id:03X}"
    return f"({m.timestamp:.6f}) can0 {ident}#{bytes(m.data).hex().upper()}\n"


def test_candump_fast_path_matches_python_can(tmp_path: Path, dbc: Path) -> None:
    msgs = messages()
    log = tmp_path / "drive.log"
    log.write_text("".join(candump_line(m) for m in msgs))
    stats = LogStats()
    fast = list(iter_log_speed(log, speed_decoder(dbc, "SPEED.SPEED"), stats))
    assert stats.format == "candump" and stats.frames == 300 and stats.wanted == 30
    # python-can's own reader of the same file, decoded with cantools
    ref = []
    import cantools

    msg_def = cantools.database.load_file(str(dbc)).get_message_by_name("SPEED")
    for m in can.LogReader(log):
        if m.arbitration_id == 180:
            ref.append((m.timestamp, msg_def.decode(bytes(m.data))["SPEED"]))
    assert [(s.time, round(s.speed_kmh, 6)) for s in fast] == [
        (t, round(v, 6)) for t, v in ref
    ]
    assert all(s.mono == s.time and s.source == "can" for s in fast)


@pytest.mark.parametrize("suffix", [".asc", ".blf", ".csv", ".trc"])
def test_other_formats_go_through_python_can(tmp_path: Path, dbc: Path, suffix: str) -> None:
    msgs = messages(100)
    path = tmp_path / f"drive{suffix}"
    with can.Logger(path) as writer:
        for m in msgs:
            writer.on_message_received(m)
    stats = LogStats()
    got = list(iter_log_speed(path, speed_decoder(dbc, "SPEED.SPEED"), stats))
    assert stats.format == suffix[1:]
    assert [round(s.speed_kmh, 2) for s in got] == [i / 10 for i in range(0, 100, 10)]
    assert got[0].time == pytest.approx(T0, abs=1.0)  # epoch seconds, also for .asc


def test_error_remote_fd_extended_and_malformed_lines(tmp_path: Path, dbc: Path) -> None:
    lines = [
        f"({T0:.6f}) can0 0B4#{speed_payload(10).hex().upper()}",
        f"({T0 + 0.01:.6f}) can0 20000080#0000000000000000",  # bus error (python-can style)
        f"({T0 + 0.02:.6f}) can0 20000040#0000000000000000",  # bus-off
        f"({T0 + 0.03:.6f}) can0 0B4#R",  # remote
        f"({T0 + 0.04:.6f}) can0 0B4#ZZTOP",  # garbage payload
        f"({T0 + 0.05:.6f}) can0 0B4#{speed_payload(10).hex()[:-1]}",  # odd hex digits
        f"({T0 + 0.06:.6f}) can0 0B4#0102",  # wrong length
        f"({T0 + 0.07:.6f}) can0 0b4#{speed_payload(20).hex()}",  # lower case is fine
        f"({T0 + 0.08:.6f}) can0 1B4#{speed_payload(99).hex()}",  # other ID
    ]
    log = tmp_path / "mixed.log"
    log.write_text("\n".join(lines))  # no newline at the end either
    dec = speed_decoder(dbc, "SPEED.SPEED")
    stats = LogStats()
    got = list(iter_log_speed(log, dec, stats))
    assert [s.speed_kmh for s in got] == [10.0, 20.0]
    # the two unparsable lines are malformed, not frames
    assert stats.frames == 7 and stats.error_frames == 2 and stats.bus_off == 1
    assert stats.remote == 1 and stats.malformed == 2
    assert dec.stats.wrong_length == 1

    ext = tmp_path / "ext.log"
    ext.write_text(
        f"({T0:.6f}) can0 18FEF100#00{(int(42.5 * 256)).to_bytes(2, 'little').hex()}0000000000\n"
        f"({T0:.6f}) can0 0FEF100#0000000000000000\n"
    )
    got = list(iter_log_speed(ext, speed_decoder(dbc, "CCVS.WheelBasedVehicleSpeed")))
    assert [s.speed_kmh for s in got] == [42.5]

    fd = tmp_path / "fd.log"
    payload = bytearray(16)
    payload[10:12] = (1234).to_bytes(2, "little")
    fd.write_text(f"({T0:.6f}) can0 4B0##1{payload.hex().upper()}\n")
    got = list(iter_log_speed(fd, speed_decoder(dbc, "FDSPEED.V")))
    assert [round(s.speed_kmh, 1) for s in got] == [123.4]


def test_block_boundaries_do_not_lose_or_split_lines(
    tmp_path: Path, dbc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(canlog, "BLOCK", 97)  # lines straddle every block
    msgs = messages(500)
    log = tmp_path / "b.log"
    log.write_text("".join(candump_line(m) for m in msgs))
    stats = LogStats()
    got = list(iter_log_speed(log, speed_decoder(dbc, "SPEED.SPEED"), stats))
    assert len(got) == 50 and stats.frames == 500 and stats.malformed == 0


def test_obd_responses_replay(tmp_path: Path) -> None:
    log = tmp_path / "obd.log"
    log.write_text(
        f"({T0:.6f}) can0 7DF#02010D5555555555\n"
        f"({T0 + 0.01:.6f}) can0 7E8#03410D3255555555\n"
        f"({T0 + 0.02:.6f}) can0 7E9#037F011255555555\n"
    )
    got = list(iter_log_obd(log))
    assert [(s.speed_kmh, s.source) for s in got if isinstance(s, SpeedSample)] == [
        (50.0, "obd")]
    assert got == [SpeedSample(time=T0 + 0.01, speed_kmh=50.0, source="obd", mono=T0 + 0.01)]


def test_obd_engine_signals_replay_from_any_log_format(tmp_path: Path) -> None:
    # the engine speed and coolant answers of a recorded OBD session come out as the
    # signals the live source emits, from the candump fast path and from python-can alike
    answers = [(0x7E8, "04410C1AF8555555"), (0x7E8, "03410D3255555555"),
               (0x7E9, "0341055A55555555"), (0x7DF, "02010C5555555555")]
    msgs = [can.Message(timestamp=T0 + i, arbitration_id=arb, data=bytes.fromhex(d),
                        is_extended_id=False) for i, (arb, d) in enumerate(answers)]
    candump = tmp_path / "obd.log"
    candump.write_text("".join(candump_line(m) for m in msgs))
    asc = tmp_path / "obd.asc"
    with can.Logger(asc) as w:
        for m in msgs:
            w.on_message_received(m)
    for path in (candump, asc):
        stats = LogStats()
        got = [(type(s).__name__, getattr(s, "name", "speed"),
                getattr(s, "value", getattr(s, "speed_kmh", None)), round(s.time - T0, 3))
               for s in iter_log_obd(path, stats)]
        assert got == [
            ("SignalSample", "Vehicle.Powertrain.CombustionEngine.Speed", 1726.0, 0.0),
            ("SpeedSample", "speed", 50.0, 1.0),
            ("SignalSample", "Vehicle.Powertrain.CombustionEngine.ECT", 50.0, 2.0),
        ], path.name
        assert stats.samples == 3 and stats.wanted == 3


def test_iter_log_frames_filters_by_decoder(tmp_path: Path, dbc: Path) -> None:
    path = tmp_path / "d.asc"
    with can.Logger(path) as w:
        for m in messages(50):
            w.on_message_received(m)
    frames = list(iter_log_frames(path, speed_decoder(dbc, "SPEED.SPEED")))
    assert [f[0] for f in frames] == [180] * 5
    assert len(list(iter_log_frames(path))) == 50


def test_decode_can_command(tmp_path: Path, dbc: Path) -> None:
    log = tmp_path / "drive.log"
    log.write_text("".join(candump_line(m) for m in messages(100)))
    out, err = io.StringIO(), io.StringIO()
    assert decode_main(log, dbc=dbc, signal="SPEED.SPEED", out=out, err=err) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[0] == {"t": T0, "speed_kmh": 0.0}
    assert [r["speed_kmh"] for r in rows] == [i / 10 for i in range(0, 100, 10)]
    summary = json.loads(err.getvalue().split("edge decode can: ", 1)[1])
    assert summary["frames"] == 100 and summary["samples"] == 10


def test_decode_can_bad_input_exits_2(tmp_path: Path, dbc: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert decode_main(tmp_path / "nope.log", dbc=dbc, signal="SPEED.SPEED",
                       out=out, err=err) == 2
    assert "no such file" in err.getvalue()
    log = tmp_path / "x.log"
    log.write_text(f"({T0:.6f}) can0 0B4#00\n")
    err = io.StringIO()
    assert decode_main(log, dbc=dbc, signal="SPEED.NOPE", out=out, err=err) == 2
    assert "can.speed_signal" in err.getvalue()
    err = io.StringIO()
    assert decode_main(log, dbc=tmp_path / "missing.dbc", signal="SPEED.SPEED",
                       out=out, err=err) == 2
    assert "can.dbc" in err.getvalue()
    junk = tmp_path / "junk.xyz"
    junk.write_bytes(os.urandom(64))
    err = io.StringIO()
    assert decode_main(junk, dbc=dbc, signal="SPEED.SPEED", out=out, err=err) == 2
    assert "xyz" in err.getvalue()
    empty = tmp_path / "garbage.log"
    empty.write_text("hello\nworld\n")
    err = io.StringIO()
    assert decode_main(empty, dbc=dbc, signal="SPEED.SPEED", out=out, err=err) == 2
    assert out.getvalue() == ""


def test_comments_blank_garbage_and_truncated_lines_are_counted(tmp_path: Path,
                                                                 dbc: Path) -> None:
    # The symptom: a log whose first line is a '#' comment gave 0 samples, silently;
    # truncated lines were dropped without a count; garbage counted as frames.
    good = [f"({T0 + i * 0.01:.6f}) can0 0B4#{speed_payload(i).hex().upper()}"
            for i in range(10)]
    lines = ["# recorded with candump -L on the highway", "", *good[:4],
             "   ", "garbage that is no frame", good[4][:20],  # a truncated line
             "# a comment with 0B4# in it", *good[4:]]
    log = tmp_path / "can.log"
    log.write_text("\n".join(lines) + "\n")
    stats = LogStats()
    got = list(iter_log_speed(log, speed_decoder(dbc, "SPEED.SPEED"), stats))
    assert stats.format == "candump"
    assert [round(s.speed_kmh) for s in got] == list(range(10))
    assert stats.frames == 10 and stats.samples == 10
    assert stats.comments == 2 and stats.blank == 2
    assert stats.malformed == 2  # the garbage line and the truncated one
    problems = stats.problems()
    assert problems is not None and "2 malformed" in problems
    # the same through `edge decode can`: frames and malformed counted apart
    out, err = io.StringIO(), io.StringIO()
    assert decode_main(log, dbc=dbc, signal="SPEED.SPEED", out=out, err=err) == 0
    assert len(out.getvalue().splitlines()) == 10
    summary = json.loads(err.getvalue().splitlines()[0].split(": ", 1)[1])
    assert summary["frames"] == 10 and summary["malformed"] == 2
    assert summary["comments"] == 2
    assert "warning: 2 malformed" in err.getvalue()
