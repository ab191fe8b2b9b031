"""DBC speed decoding: units, byte orders, multiplexing, bad frames, checksums."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cantools
import pytest
from cantools.database.can import Message, Signal
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.core.canspeed import make_extractor, toyota_checksum
from edge.errors import ConfigError
from edge.sources.dbc import speed_decoder

DBC = """VERSION ""

BS_:

BU_: ECU

BO_ 180 SPEED: 8 ECU
 SG_ ENCODER : 39|8@0+ (1,0) [0|255] "" ECU
 SG_ SPEED : 47|16@0+ (0.01,0) [0|250] "km/h" ECU
 SG_ CHECKSUM : 63|8@0+ (1,0) [0|255] "" ECU

BO_ 500 MUXED: 8 ECU
 SG_ MUX M : 0|8@1+ (1,0) [0|255] "" ECU
 SG_ V_MPS m1 : 8|16@1- (0.01,0) [-100|100] "m/s" ECU
 SG_ OTHER m2 : 8|16@1+ (1,0) [0|65535] "" ECU

BO_ 2566844672 CCVS: 8 ECU
 SG_ WheelBasedVehicleSpeed : 8|16@1+ (0.00390625,0) [0|250.996] "km/h" ECU

BO_ 601 US_SPEED: 4 ECU
 SG_ VEH_SPEED_MPH : 7|16@0+ (0.01,0) [0|200] "mph" ECU
 SG_ STATUS : 23|8@0+ (1,0) [0|255] "" ECU

BO_ 602 NOUNIT: 2 ECU
 SG_ SPD : 0|12@1+ (0.1,0) [0|0] "" ECU

BO_ 603 WITH_SNA: 2 ECU
 SG_ SPD : 0|16@1+ (0.01,0) [0|0] "km/h" ECU

BO_ 604 RPM_ONLY: 2 ECU
 SG_ RPM : 0|16@1+ (1,0) [0|8000] "rpm" ECU

VAL_ 603 SPD 65535 "SNA" ;
"""


@pytest.fixture(autouse=True, scope="module")
def _spec_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Compiled DBC specs go to a cache of this module, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture()
def dbc(tmp_path: Path) -> Path:
    p = tmp_path / "test.dbc"
    p.write_text(DBC)
    return p


def toyota_frame(kmh: float, *, fid: int = 180, good: bool = True) -> bytes:
    data = bytearray(8)
    data[5:7] = round(kmh * 100).to_bytes(2, "big")
    data[7] = toyota_checksum(fid, bytes(data)) ^ (0 if good else 0x5A)
    return bytes(data)


def test_big_endian_speed_in_kmh_with_toyota_checksum(dbc: Path) -> None:
    d = speed_decoder(dbc, "SPEED.SPEED")
    assert d.frame_ids == frozenset({180}) and not d.extended
    assert d.stats.checksum == "toyota"
    s = d.decode(180, toyota_frame(87.65), 1700000000.5, 12.0)
    assert s is not None
    assert s.speed_kmh == pytest.approx(87.65)
    assert (s.time, s.mono, s.source) == (1700000000.5, 12.0, "can")


def test_bad_checksum_is_counted_and_skipped(dbc: Path) -> None:
    d = speed_decoder(dbc, "SPEED.SPEED")
    assert d.decode(180, toyota_frame(50.0), 0.0, 0.0) is not None
    for _ in range(40):  # after one good frame the checksum stays enforced
        assert d.decode(180, toyota_frame(50.0, good=False), 0.0, 0.0) is None
    assert d.stats.checksum_errors == 40
    assert d.stats.checksum == "toyota"


def test_auto_checksum_gives_up_when_the_car_uses_another_algorithm(dbc: Path) -> None:
    d = speed_decoder(dbc, "SPEED.SPEED")  # auto
    bad = [d.decode(180, toyota_frame(30.0, good=False), 0.0, 0.0) for _ in range(20)]
    assert bad[:15] == [None] * 15
    assert bad[-1] is not None and bad[-1].speed_kmh == pytest.approx(30.0)
    assert d.stats.checksum.startswith("disabled")


def test_checksum_toyota_mode_never_gives_up_and_none_mode_ignores(dbc: Path) -> None:
    strict = speed_decoder(dbc, "SPEED.SPEED", checksum="toyota")
    off = speed_decoder(dbc, "SPEED.SPEED", checksum="none")
    for _ in range(30):
        assert strict.decode(180, toyota_frame(30.0, good=False), 0.0, 0.0) is None
        assert off.decode(180, toyota_frame(30.0, good=False), 0.0, 0.0) is not None
    with pytest.raises(ConfigError) as e:
        speed_decoder(dbc, "US_SPEED.VEH_SPEED_MPH", checksum="toyota")
    assert e.value.field == "can.checksum"


def test_multiplexed_little_endian_signed_m_per_s(dbc: Path) -> None:
    d = speed_decoder(dbc, "MUXED.V_MPS")
    assert d.stats.checksum == "none"
    frame = bytes([1]) + (2500).to_bytes(2, "little", signed=True) + bytes(5)
    s = d.decode(500, frame, 0.0, 0.0)
    assert s is not None and s.speed_kmh == pytest.approx(25.0 * 3.6)
    neg = bytes([1]) + (-150).to_bytes(2, "little", signed=True) + bytes(5)
    s2 = d.decode(500, neg, 0.0, 0.0)
    assert s2 is not None and s2.speed_kmh == pytest.approx(-1.5 * 3.6)
    other = bytes([2]) + (2500).to_bytes(2, "little") + bytes(5)
    assert d.decode(500, other, 0.0, 0.0) is None
    assert d.stats.other_mux == 1


def test_extended_id_j1939_and_mph(dbc: Path) -> None:
    d = speed_decoder(dbc, "CCVS.WheelBasedVehicleSpeed")
    assert d.extended and d.frame_ids == frozenset({0x18FEF100})
    s = d.decode(0x18FEF100, bytes([0]) + (int(88.5 * 256)).to_bytes(2, "little") + bytes(5),
                 0.0, 0.0)
    assert s is not None and s.speed_kmh == pytest.approx(88.5)
    m = speed_decoder(dbc, "US_SPEED.VEH_SPEED_MPH")
    s = m.decode(601, (6000).to_bytes(2, "big") + bytes(2), 0.0, 0.0)
    assert s is not None and s.speed_kmh == pytest.approx(60 * 1.609344)


def test_unitless_signal_is_kmh_and_sna_value_is_skipped(dbc: Path) -> None:
    d = speed_decoder(dbc, "NOUNIT.SPD")
    assert d.unit == "km/h (assumed)"
    s = d.decode(602, (1234).to_bytes(2, "little"), 0.0, 0.0)
    assert s is not None and s.speed_kmh == pytest.approx(123.4)
    sna = speed_decoder(dbc, "WITH_SNA.SPD")
    assert sna.decode(603, b"\xff\xff", 0.0, 0.0) is None
    assert sna.stats.invalid == 1


def test_wrong_length_and_other_ids(dbc: Path) -> None:
    d = speed_decoder(dbc, "SPEED.SPEED")
    assert d.decode(0x123, toyota_frame(10.0), 0.0, 0.0) is None
    assert d.stats.frames == 0
    assert d.decode(180, toyota_frame(10.0)[:7], 0.0, 0.0) is None
    assert d.decode(180, b"", 0.0, 0.0) is None
    assert d.stats.wrong_length == 2 and d.stats.decoded == 0


def test_out_of_dbc_range_is_skipped(dbc: Path) -> None:
    d = speed_decoder(dbc, "SPEED.SPEED", checksum="none")
    frame = bytearray(8)
    frame[5:7] = (60000).to_bytes(2, "big")  # 600 km/h > [0|250]
    assert d.decode(180, bytes(frame), 0.0, 0.0) is None
    assert d.stats.invalid == 1


@pytest.mark.parametrize(
    ("signal", "field", "needle"),
    [
        ("SPEED", "can.speed_signal", "MESSAGE.SIGNAL"),
        ("NOPE.SPEED", "can.speed_signal", "NOPE"),
        ("SPEED.NOPE", "can.speed_signal", "NOPE"),
        ("RPM_ONLY.RPM", "can.speed_signal", "rpm"),
    ],
)
def test_config_errors_name_the_field(dbc: Path, signal: str, field: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        speed_decoder(dbc, signal)
    assert e.value.field == field and needle in str(e.value)


def test_missing_or_garbage_dbc(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        speed_decoder(tmp_path / "missing.dbc", "A.B")
    assert e.value.field == "can.dbc"
    bad = tmp_path / "bad.dbc"
    bad.write_text("this is not a dbc at all {{{")
    with pytest.raises(ConfigError) as e:
        speed_decoder(bad, "A.B")
    assert e.value.field == "can.dbc"


def test_decoder_agrees_with_cantools_on_real_frames(dbc: Path) -> None:
    db = cantools.database.load_file(str(dbc))
    for name in ("SPEED.SPEED", "MUXED.V_MPS", "US_SPEED.VEH_SPEED_MPH", "NOUNIT.SPD"):
        d = speed_decoder(dbc, name, checksum="none")
        msg_name, sig = name.split(".")
        msg = db.get_message_by_name(msg_name)
        factor = {"m/s": 3.6, "mph": 1.609344}.get(msg.get_signal_by_name(sig).unit or "", 1.0)
        for raw in (0, 1, 77, 4095):
            values = {s.name: 0 for s in msg.signals}
            if msg.is_multiplexed():
                values["MUX"] = 1
                values.pop("OTHER")
            values[sig] = raw * msg.get_signal_by_name(sig).scale
            data = msg.encode(values, strict=False)
            ours = d.decode(msg.frame_id, data, 0.0, 0.0)
            theirs = msg.decode(data)[sig]
            assert ours is not None
            assert ours.speed_kmh == pytest.approx(theirs * factor)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, str, bool, bytes]:
    order = draw(st.sampled_from(["little_endian", "big_endian"]))
    length = draw(st.integers(1, 64))
    if order == "little_endian":
        start = draw(st.integers(0, 64 - length))
    else:
        msb0 = draw(st.integers(0, 64 - length))
        start = (msb0 // 8) * 8 + 7 - msb0 % 8
    signed = draw(st.booleans()) and length > 1
    data = draw(st.binary(min_size=8, max_size=8))
    return start, length, order, signed, data


@settings(max_examples=400, deadline=None)
@given(layouts())
def test_bit_extraction_matches_cantools(layout: tuple[int, int, str, bool, bytes]) -> None:
    start, length, order, signed, data = layout
    sig = Signal("S", start, length, order, signed)
    msg = Message(0x100, "M", 8, [sig], strict=True)
    extract, need = make_extractor(start, length, order, signed)
    assert need <= 8
    assert extract(data) == msg.decode(data, decode_choices=False, scaling=False)["S"]
