"""Real DBC: opendbc's Toyota powertrain DBC (fetched by scripts/fetch_opendbc.py)."""

from __future__ import annotations

import os
from pathlib import Path

import cantools
import pytest

from edge.core.canspeed import toyota_checksum
from edge.sources.dbc import speed_decoder

CACHE = Path(os.environ.get("VEHICLE_EDGE_CACHE") or Path.home() / ".cache" / "vehicle-edge")
TOYOTA = CACHE / "opendbc-0.3.1" / "toyota_nodsu_pt_generated.dbc"

pytestmark = pytest.mark.skipif(
    not TOYOTA.is_file(),
    reason=f"opendbc not in the cache ({TOYOTA}): run scripts/fetch_opendbc.py",
)


def test_toyota_speed_with_checksum_agrees_with_cantools() -> None:
    d = speed_decoder(TOYOTA, "SPEED.SPEED")
    assert d.frame_ids == frozenset({0xB4}) and d.stats.checksum == "toyota"
    msg = cantools.database.load_file(str(TOYOTA), strict=False).get_message_by_name("SPEED")
    for kmh in (0.0, 12.34, 88.8, 249.99):
        data = bytearray(msg.encode({"ENCODER": 7, "SPEED": kmh, "CHECKSUM": 0}))
        data[7] = toyota_checksum(0xB4, bytes(data))
        # the checksum signal as cantools reads it is what we verify against
        assert msg.decode(bytes(data))["CHECKSUM"] == data[7]
        s = d.decode(0xB4, bytes(data), 1.0, 1.0)
        assert s is not None
        assert s.speed_kmh == pytest.approx(msg.decode(bytes(data))["SPEED"])
        assert s.speed_kmh == pytest.approx(kmh, abs=0.006)
    bad = bytearray(data)
    bad[5] ^= 0x01  # a flipped bit in the speed: checksum no longer matches
    assert d.decode(0xB4, bytes(bad), 2.0, 2.0) is None
    assert d.stats.checksum_errors == 1


def test_toyota_wheel_speed_offset_signal() -> None:
    d = speed_decoder(TOYOTA, "WHEEL_SPEEDS.WHEEL_SPEED_FL")
    assert d.stats.checksum == "none"  # this message has no checksum signal
    msg = cantools.database.load_file(str(TOYOTA), strict=False).get_message_by_name(
        "WHEEL_SPEEDS")
    values = {s.name: 50.0 for s in msg.signals}
    values["WHEEL_SPEED_FL"] = 61.2
    data = msg.encode(values)
    s = d.decode(msg.frame_id, data, 0.0, 0.0)
    assert s is not None and s.speed_kmh == pytest.approx(61.2, abs=0.01)
