"""`edge record`: capture a serial GNSS stream and a CAN bus into a drive directory."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import can
import pytest

from edge.commands.record import main
from sim.drive import iter_timeline, load_drive, parse_candump
from sim.generate import sentence
from sim.pty import PtySerial


def test_record_from_a_pty_and_a_virtual_bus_replays_as_a_drive(tmp_path: Path) -> None:
    channel = f"rec-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "drive"
    # the receiver's clock says 2026-05-14 08:30:00Z; this machine's clock says otherwise
    rmc = sentence("GNRMC,083000.00,A,4808.88027,N,01134.32018,E,0.021,89.24,140526,,,A")
    gga = sentence("GNGGA,083000.00,4808.88027,N,01134.32018,E,1,11,0.87,518.8,M,47.3,M,,")
    with PtySerial() as pty:
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(main(
            out, serial=pty.path, baud=9600, can_interface="virtual", can_channel=channel,
            duration_s=1.5)))
        t.start()
        tx = can.Bus(interface="virtual", channel=channel)
        try:
            time.sleep(0.4)
            os.write(pty.master_fd, rmc + b"\r\n\xb5\x62junk\r\n" + gga + b"\r\n")
            tx.send(can.Message(arbitration_id=0x3E9, data=b"\x87\x13\x01\x00\x00\x00\x00\x01",
                                is_extended_id=False))
            tx.send(can.Message(arbitration_id=0x18FEF100, data=b"\x01", is_extended_id=True))
            tx.send(can.Message(is_error_frame=True, data=bytes(8)))
            t.join(timeout=10)
        finally:
            tx.shutdown()
    assert result == [0]
    raw = (out / "gnss.nmea").read_bytes()
    assert raw == rmc + b"\r\n\xb5\x62junk\r\n" + gga + b"\r\n"  # byte-exact
    drive = load_drive(out)
    assert drive.date is not None and drive.date.isoformat() == "2026-05-14"
    assert drive.can_time_offset_s != 0.0  # the machine clock is not 2026-05-14 08:30
    items = list(iter_timeline(drive))
    frames = [parse_candump(b) for _, k, b in items if k == "can"]
    assert [(f.arbitration_id, f.extended, f.error) for f in frames if f] == [
        (0x3E9, False, False), (0x18FEF100, True, False), (0x80, False, True)]
    # CAN re-stamped onto GNSS time: within a second of the NMEA
    gnss_t = [t for t, k, _ in items if k == "gnss"]
    can_t = [t for t, k, _ in items if k == "can"]
    assert abs(can_t[0] - gnss_t[0]) < 2.0


def test_record_refuses_to_overwrite_and_needs_a_source(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gnss.nmea").write_bytes(b"")
    with PtySerial() as pty:
        assert main(tmp_path, serial=pty.path, baud=9600, can_interface=None, can_channel=None,
                    duration_s=0.1) == 2
    assert "exists" in capsys.readouterr().err
    assert main(tmp_path / "x", serial=None, baud=9600, can_interface=None, can_channel=None,
                duration_s=0.1) == 2
    assert main(tmp_path / "y", serial="/dev/does-not-exist", baud=9600, can_interface=None,
                can_channel=None, duration_s=0.1) == 2
    assert "cannot open serial port" in capsys.readouterr().err
