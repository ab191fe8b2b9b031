"""DBC signal specs: compiled by cantools in a child process, cached, never imported by
the daemon; every signal of the bundled and the Toyota DBC decodes as cantools does."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import cantools
import pytest

from edge.core.canspeed import DbcSpeedDecoder
from edge.core.dbcspec import SignalSpec
from edge.errors import ConfigError
from edge.sources.dbc import (
    cache_path,
    compile_spec,
    load_spec,
    spec_from_message,
    speed_decoder,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sim" / "dbc" / "demo.dbc"
CACHE = Path(os.environ.get("VEHICLE_EDGE_CACHE") or Path.home() / ".cache" / "vehicle-edge")
TOYOTA = CACHE / "opendbc-0.3.1" / "toyota_nodsu_pt_generated.dbc"
needs_toyota = pytest.mark.skipif(
    not TOYOTA.is_file(),
    reason=f"opendbc not in the cache ({TOYOTA}): run scripts/fetch_opendbc.py",
)

MUX_DBC = """VERSION ""

BS_:

BU_: ECU

BO_ 500 MUXED: 8 ECU
 SG_ MUX M : 0|8@1+ (1,0) [0|255] "" ECU
 SG_ V_MPS m1 : 8|16@1- (0.01,0) [-100|100] "m/s" ECU
 SG_ OTHER m2 : 8|16@1+ (1,0) [0|65535] "" ECU

BO_ 180 SPEED: 8 ECU
 SG_ SPEED : 47|16@0+ (0.01,0) [0|250] "km/h" ECU
 SG_ CHECKSUM : 63|8@0+ (1,0) [0|255] "" ECU

BO_ 603 WITH_SNA: 2 ECU
 SG_ SPD : 0|16@1+ (0.01,0) [0|0] "km/h" ECU

VAL_ 603 SPD 65535 "SNA" 1 "one" ;
"""


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home / "vehicle-edge" / "dbc"


@pytest.fixture()
def mux_dbc(tmp_path: Path) -> Path:
    p = tmp_path / "mux.dbc"
    p.write_text(MUX_DBC)
    return p


def _db(path: Path) -> Any:
    try:
        return cantools.database.load_file(str(path))
    except Exception:
        return cantools.database.load_file(str(path), strict=False)


def _payloads(msg: Any, rng: random.Random, n: int) -> list[bytes]:
    out = [bytes(msg.length), b"\xff" * msg.length]
    out += [rng.randbytes(msg.length) for _ in range(n)]
    return out


def _agree_on_every_signal(path: Path, per_signal: int) -> int:
    """Decode random payloads of every signal with our decoder and with cantools."""
    db = _db(path)
    rng = random.Random(1234)
    checked = 0
    for msg in db.messages:
        payloads = _payloads(msg, rng, per_signal)
        theirs_all: list[dict[str, Any] | None] = []
        for data in payloads:
            try:
                theirs_all.append(msg.decode(data, decode_choices=False))
            except Exception:  # cantools refuses e.g. an unknown multiplexer value
                theirs_all.append(None)
        for sig in msg.signals:
            spec = spec_from_message(msg, sig.name)
            assert SignalSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
            assert (spec.frame_id, spec.extended, spec.length) == (
                msg.frame_id, msg.is_extended_frame, msg.length)
            # decode as a km/h signal without range/SNA checks: the raw path is what we test
            plain = dataclasses.replace(spec, unit="km/h", minimum=None, maximum=None,
                                        choices=(), raw_invalid=None)
            dec = DbcSpeedDecoder(plain, checksum="none")
            for data, theirs in zip(payloads, theirs_all, strict=True):
                ours = dec.decode(msg.frame_id, data, 0.0, 0.0)
                if theirs is None:
                    continue
                if sig.name in theirs:
                    assert ours is not None, (spec.name, data.hex())
                    assert ours.speed_kmh == pytest.approx(float(theirs[sig.name]),
                                                           rel=1e-12, abs=1e-9), spec.name
                else:  # another multiplexer value is active
                    assert ours is None, (spec.name, data.hex())
                checked += 1
    return checked


def test_every_demo_signal_decodes_as_cantools_does() -> None:
    assert _agree_on_every_signal(DEMO, 50) >= 12 * 50


def test_every_multiplexed_signal_decodes_as_cantools_does(mux_dbc: Path) -> None:
    assert _agree_on_every_signal(mux_dbc, 200) > 0


@needs_toyota
def test_every_toyota_signal_decodes_as_cantools_does() -> None:
    assert _agree_on_every_signal(TOYOTA, 20) > 1000


@needs_toyota
def test_child_compiles_the_same_spec_as_cantools_in_process(cache_home: Path) -> None:
    for name in ("SPEED.SPEED", "WHEEL_SPEEDS.WHEEL_SPEED_FL"):
        assert load_spec(TOYOTA, name) == compile_spec(TOYOTA, name)
    assert len(list(cache_home.glob("*.json"))) == 2


def test_spec_carries_mux_checksum_and_value_table(mux_dbc: Path) -> None:
    v = load_spec(mux_dbc, "MUXED.V_MPS")
    assert [(m.name, m.ids) for m in v.mux] == [("MUX", (1,))]
    assert v.unit == "m/s" and v.layout.signed
    s = load_spec(mux_dbc, "SPEED.SPEED")
    assert s.checksum is not None and (s.checksum.start, s.checksum.length) == (63, 8)
    sna = load_spec(mux_dbc, "WITH_SNA.SPD")
    assert sna.choices == ((1, "one"), (65535, "SNA"))
    assert speed_decoder(mux_dbc, "WITH_SNA.SPD").decode(603, b"\xff\xff", 0, 0) is None


def test_spec_is_cached_by_the_dbc_hash(mux_dbc: Path, cache_home: Path) -> None:
    first = load_spec(mux_dbc, "SPEED.SPEED")
    files = list(cache_home.glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["requested"] == "SPEED.SPEED" and doc["spec"]["frame_id"] == 180
    mtime = files[0].stat().st_mtime_ns
    assert load_spec(mux_dbc, "SPEED.SPEED") == first
    assert files[0].stat().st_mtime_ns == mtime
    # an edited DBC is another file: compiled again, both specs kept
    mux_dbc.write_text(MUX_DBC.replace("(0.01,0) [0|250]", "(0.1,0) [0|250]"))
    assert load_spec(mux_dbc, "SPEED.SPEED").scale == 0.1
    assert len(list(cache_home.glob("*.json"))) == 2


def test_damaged_cache_is_compiled_again(mux_dbc: Path, cache_home: Path) -> None:
    good = load_spec(mux_dbc, "SPEED.SPEED")
    (f,) = cache_home.glob("*.json")
    for junk in ("{not json", json.dumps({"dbc_sha256": "x", "requested": "SPEED.SPEED"}),
                 f.read_text().replace('"format": 1', '"format": 999')):
        f.write_text(junk)
        assert load_spec(mux_dbc, "SPEED.SPEED") == good
        assert json.loads(f.read_text())["spec"]["format"] == 1  # rewritten


def test_unwritable_cache_still_works(mux_dbc: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # mkdir under a file fails
    assert load_spec(mux_dbc, "SPEED.SPEED").frame_id == 180


@pytest.mark.parametrize(
    ("signal", "field", "needle"),
    [
        ("SPEED", "can.speed_signal", "MESSAGE.SIGNAL"),
        ("NOPE.SPEED", "can.speed_signal", "'NOPE' is not in mux.dbc"),
        ("SPEED.NOPE", "can.speed_signal", "(signals: CHECKSUM, SPEED)"),
    ],
)
def test_errors_from_the_child_name_the_field(mux_dbc: Path, signal: str, field: str,
                                              needle: str, cache_home: Path) -> None:
    with pytest.raises(ConfigError) as child:
        load_spec(mux_dbc, signal)
    with pytest.raises(ConfigError) as here:
        compile_spec(mux_dbc, signal)
    assert child.value.field == here.value.field == field
    assert str(child.value) == str(here.value) and needle in str(child.value)
    assert not cache_home.exists() or not list(cache_home.iterdir())  # errors not cached


def test_garbage_and_missing_dbc_name_can_dbc(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dbc"
    bad.write_text("this is not a dbc at all {{{")
    for path in (bad, tmp_path / "missing.dbc"):
        with pytest.raises(ConfigError) as e:
            load_spec(path, "A.B")
        assert e.value.field == "can.dbc" and path.name in str(e.value)


def test_cache_path_is_safe_for_odd_signal_names(tmp_path: Path) -> None:
    p = cache_path("ab" * 32, "../../etc.passwd", tmp_path)
    assert p.parent == tmp_path and "/" not in p.name


# ------------------------------------------------------------- the daemon's process

CHILD = """
import sys
from pathlib import Path
if sys.argv[1] == "warm":
    sys.modules["cantools"] = None  # importing cantools would now fail
    sys.executable = "/nonexistent/python"  # and so would compiling in a child
from edge.config import CanConfig
from edge.sources.can import CanSource
cfg = CanConfig(interface="slcan", channel="/dev/null", mode="dbc",
                dbc=Path(sys.argv[2]), speed_signal="VEHICLE_SPEED.SPEED_KMH")
src = CanSource(cfg)
d = src._decoder
assert d is not None and d.frame_ids == frozenset({1001})
assert d.decode(1001, (12345).to_bytes(2, "little") + bytes(6), 0.0, 0.0).speed_kmh == 123.45
print(sorted(m for m, mod in sys.modules.items()
             if mod is not None and m.split(".")[0] in ("cantools", "can")))
"""


def test_daemon_builds_its_can_decoder_without_importing_cantools(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    for phase in ("cold", "warm"):  # cold: compiled in a child process; warm: from cache
        r = subprocess.run([sys.executable, "-c", CHILD, phase, str(DEMO)], env=env,
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 0, (phase, r.stderr[-2000:])
        assert r.stdout.strip() == "[]", phase  # neither cantools nor python-can loaded
    assert len(list((tmp_path / "cache" / "vehicle-edge" / "dbc").glob("*.json"))) == 1
