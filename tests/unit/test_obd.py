"""OBD-II frames and the poll scheduler (pure; time is an argument)."""

from __future__ import annotations

import itertools

import pytest

from edge.core.obd import (
    PID_COOLANT,
    PID_RPM,
    PID_SPEED,
    ObdDecoder,
    ObdNegative,
    ObdPoller,
    parse_response,
    request_frame,
)
from edge.model import SignalSample, SpeedSample


def test_speed_request_is_the_iso15765_single_frame() -> None:
    assert request_frame([0x0D]) == bytes.fromhex("02010D5555555555")
    assert request_frame([0x0D, 0x0C]) == bytes.fromhex("03010D0C55555555")
    with pytest.raises(ValueError):
        request_frame([])
    with pytest.raises(ValueError):
        request_frame([1, 2, 3, 4, 5, 6, 7])


def test_parse_speed_rpm_coolant_and_multi_pid() -> None:
    (v,) = parse_response(0x7E8, bytes.fromhex("03410D3C55555555"))  # type: ignore[misc]
    assert (v.pid, v.value, v.ecu) == (PID_SPEED, 60.0, 0x7E8)
    (r,) = parse_response(0x7E9, bytes.fromhex("04410C1AF8555555"))  # type: ignore[misc]
    assert r.value == pytest.approx(0x1AF8 / 4)
    (c,) = parse_response(0x7EF, bytes.fromhex("0341055A55555555"))  # type: ignore[misc]
    assert c.value == 50.0
    multi = parse_response(0x7E8, bytes.fromhex("06410D640C0FA055"))
    assert isinstance(multi, list)
    assert [(x.pid, x.value) for x in multi] == [(0x0D, 100.0), (0x0C, 1000.0)]


def test_negative_and_junk_responses() -> None:
    neg = parse_response(0x7E8, bytes.fromhex("037F011255555555"))
    assert neg == ObdNegative(service=0x01, nrc=0x12, ecu=0x7E8)
    assert parse_response(0x123, bytes.fromhex("03410D3C")) is None  # not a response ID
    assert parse_response(0x7E8, bytes.fromhex("1014490201314731")) is None  # first frame
    assert parse_response(0x7E8, bytes.fromhex("07410D")) is None  # truncated
    assert parse_response(0x7E8, bytes.fromhex("0362F19055555555")) is None  # other service
    assert parse_response(0x7E8, b"") is None


def answer(poller: ObdPoller, frame: bytes, now: float, ecu: int = 0x7E8) -> list[float]:
    pids = list(frame[2 : 1 + frame[0]])
    body = [0x41]
    for pid in pids:
        body += [pid, 0x3C] if pid != PID_RPM else [pid, 0x0F, 0xA0]
    data = bytes([len(body), *body]).ljust(8, b"\x55")
    return [v.value for v in poller.on_frame(ecu, data, now)]


def test_poller_asks_speed_first_one_pid_per_request_by_default() -> None:
    p = ObdPoller(interval_s=0.5, timeout_s=0.2)
    f = p.poll(0.0)
    assert f == request_frame([PID_SPEED])
    assert p.poll(0.05) is None  # one request in flight at a time
    assert answer(p, f, 0.05) == [60.0]
    asked = set()
    t = 0.05
    while t < 0.45:
        t += 0.01
        f = p.poll(t)
        if f is not None:
            assert f[0] == 2  # a single PID per request
            asked.add(f[2])
            answer(p, f, t)
    assert asked == {PID_RPM, PID_COOLANT}
    assert p.telemetry() == {"rpm": 1000.0, "coolant_c": 20.0}
    # the next speed request comes one interval after the last one
    assert p.poll(0.46) is None
    assert p.poll(0.5) == request_frame([PID_SPEED])


def test_poller_respects_max_pids_and_single_frame_answers() -> None:
    p = ObdPoller(interval_s=0.5, max_pids=6)
    f = p.poll(0.0)
    # speed + coolant answer in 5 bytes; adding RPM (3 more) would not fit one frame
    assert f is not None and f[0] == 3 and list(f[2:4]) == [PID_SPEED, PID_COOLANT]
    p2 = ObdPoller(interval_s=0.5, max_pids=2)
    f2 = p2.poll(0.0)
    assert f2 is not None and f2[0] == 3


def test_timeout_backs_off_exponentially_capped() -> None:
    p = ObdPoller(interval_s=0.5, timeout_s=0.2, backoff_max_s=4.0, telemetry=False)
    sent = []
    t = 0.0
    while t < 30.0:
        if p.poll(t) is not None:
            sent.append(round(t, 2))
        t += 0.01
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert p.stats.timeouts >= 5
    assert gaps[0] == pytest.approx(1.2, abs=0.05)  # 0.2 timeout + 0.5*2
    assert max(gaps) == pytest.approx(4.2, abs=0.05)  # capped
    assert all(b >= a - 0.05 for a, b in itertools.pairwise(gaps))


def test_negative_response_unsupported_pid_goes_to_the_cap() -> None:
    p = ObdPoller(interval_s=0.5, backoff_max_s=10.0)
    f = p.poll(0.0)
    assert f is not None and f[2] == PID_SPEED
    assert p.on_frame(0x7E8, bytes.fromhex("037F013155555555"), 0.01) == []
    assert p.stats.negative == 1 and p.stats.unsupported == [PID_SPEED]
    asked = []
    t = 0.01
    while t < 9.9:
        f = p.poll(t)
        if f is not None:
            asked.append(f[2])
            answer(p, f, t)
        t += 0.01
    assert PID_SPEED not in asked  # not retried before the cap
    t = 10.05
    while p.poll(t) != request_frame([PID_SPEED]):
        pending = p.outstanding
        if pending:
            answer(p, request_frame(list(pending)), t)
        t += 0.01
        assert t < 11


def test_multi_pid_rejected_falls_back_to_one_pid_per_request() -> None:
    p = ObdPoller(interval_s=0.5, max_pids=3, timeout_s=0.2)
    f = p.poll(0.0)
    assert f is not None and f[0] > 2
    p.on_frame(0x7E8, bytes.fromhex("037F011255555555"), 0.01)  # refuses the multi-PID ask
    assert p.stats.max_pids == 1
    f = p.poll(0.02)
    assert f == request_frame([PID_SPEED])


def test_replay_decoder_turns_responses_into_samples() -> None:
    d = ObdDecoder()
    [s] = d.decode_all(0x7E8, bytes.fromhex("03410D2A55555555"), 5.0, 5.0)
    assert isinstance(s, SpeedSample) and (s.speed_kmh, s.source) == (42.0, "obd")
    # engine speed and coolant come out as telemetry signals under their VSS names
    assert d.decode_all(0x7E8, bytes.fromhex("04410C1AF8555555"), 5.0, 5.0) == [
        SignalSample(time=5.0, name="Vehicle.Powertrain.CombustionEngine.Speed",
                     value=0x1AF8 / 4, mono=5.0)]
    # one multi-PID answer: speed 42 km/h, 1726 rpm, coolant 50 C
    got = d.decode_all(0x7E8, bytes.fromhex("07410D2A0C1AF805"), 6.0, 6.0)
    assert [type(s).__name__ for s in got] == ["SpeedSample", "SignalSample"]
    got = d.decode_all(0x7E8, bytes.fromhex("06410D2A055A5555"), 6.0, 6.0)
    assert got[1] == SignalSample(time=6.0, name="Vehicle.Powertrain.CombustionEngine.ECT",
                                  value=50.0, mono=6.0)
    assert d.decode_all(0x7E8, bytes.fromhex("037F011255555555"), 7.0, 7.0) == []
    assert d.decode_all(0x123, bytes(8), 7.0, 7.0) == []


def test_engine_values_go_stale() -> None:
    from edge.core.obd import ObdPoller

    p = ObdPoller(interval_s=0.5)
    p.poll(0.0)
    # a single-frame answer to PID 0x0C (RPM) at t = 1 s
    p.on_frame(0x7E8, bytes([4, 0x41, 0x0C, 0x1A, 0xF8, 0x55, 0x55, 0x55]), 1.0)
    assert p.telemetry(5.0) == {"rpm": 0x1AF8 / 4}
    assert p.telemetry(12.0) == {}  # the ECU stopped answering: not reported forever
    assert p.telemetry() == {"rpm": 0x1AF8 / 4}  # health keeps the last value
