"""The live GNSS source's week-rollover reference: the host clock only once plausible."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

import edge.sources.gnss as gnss
from edge import BUILD_DATE
from edge.config import GnssConfig
from edge.core.nmea import iter_fixes


def ts(y: int, m: int, d: int) -> float:
    return dt.datetime(y, m, d, 12, tzinfo=dt.UTC).timestamp()


def test_host_clock_is_a_reference_when_synced_or_after_the_build(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    monkeypatch.setattr(gnss, "NTP_SYNCED_FLAG", tmp_path / "synchronized")
    build = dt.date.fromisoformat(BUILD_DATE)
    day, why = gnss.host_clock_reference(ts(build.year + 1, 1, 2))
    assert day == dt.date(build.year + 1, 1, 2) and "build date" in why
    # a Pi without RTC at boot: 1970, or its last shutdown before this build
    day, why = gnss.host_clock_reference(ts(1970, 1, 1))
    assert day is None and "not trusted" in why
    (tmp_path / "synchronized").touch()  # systemd-timesyncd says the clock is set
    day, why = gnss.host_clock_reference(ts(2024, 5, 17))
    assert day == dt.date(2024, 5, 17) and "NTP" in why


def _first_date(assembler: object, date: str) -> str:
    line = (f"GPRMC,123456.00,A,5230.9780,N,01322.6620,E,29.160,90.00,{date},,,A").encode()
    x = 0
    for b in line:
        x ^= b
    data = [b"$" + line + b"*%02X\r\n" % x]
    fix = next(iter_fixes(data, decoder=gnss.NmeaDecoder(assembler)))  # type: ignore[arg-type]
    return fix.to_json()["time"][:10]  # type: ignore[no-any-return]


def test_live_assembler_keeps_agreeing_dates_and_fixes_rollovers(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    monkeypatch.setattr(gnss, "NTP_SYNCED_FLAG", tmp_path / "synchronized")
    cfg = GnssConfig(port="/dev/null")
    # a plausible host clock in 2026: a receiver's 2006 date is 1024 weeks behind
    a = gnss._default_assembler(cfg, clock=None)
    now = dt.datetime.now(dt.UTC).date()
    if now < dt.date.fromisoformat(BUILD_DATE):
        pytest.skip("this host's clock is before the build date")
    bugged = now - dt.timedelta(weeks=1024)
    assert _first_date(a, bugged.strftime("%d%m%y")) == now.isoformat()
    # edge sim hands the daemon the drive's clock: a 2018 drive stays in 2018
    a = gnss._default_assembler(cfg, clock=lambda: ts(2018, 8, 20))
    assert _first_date(a, "200818") == "2018-08-20"
    # no plausible clock at all: the last rollover is the floor
    monkeypatch.setattr(gnss, "BUILD_DATE", "2999-01-01")
    a = gnss._default_assembler(cfg, clock=None)
    assert _first_date(a, "220899") == "2019-04-07"


def test_the_live_daemon_does_not_take_its_host_clock_on_trust(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    # edge run has no drive clock: its GNSS source decides on the host clock's
    # plausibility itself and measures durations on the monotonic clock
    import dataclasses

    from edge.app import Daemon
    from edge.config import load_config

    monkeypatch.setattr(gnss, "NTP_SYNCED_FLAG", tmp_path / "synchronized")
    monkeypatch.setattr(gnss, "BUILD_DATE", "2999-01-01")  # this host's clock: implausible
    cfg = load_config(Path(__file__).resolve().parents[2] / "sim" / "drives" / "city"
                      / "config.toml")
    cfg = dataclasses.replace(cfg, gnss=dataclasses.replace(cfg.gnss, port="/dev/null"))
    daemon = Daemon(cfg)
    src = dict(daemon.inputs.build(cfg, {"gnss"}))["gnss"]
    assembler = src._decoder.assembler
    assert assembler.replay is False and assembler.reference_date is None
    # so a receiver's 2018 date is a rollover live (the 2019 floor), not history
    assert _first_date(assembler, "200818") == "2038-04-05"
