"""CAN first, GNSS when CAN is stale, a plausibility flag when they disagree."""

from __future__ import annotations

from edge.core.speed_source import SpeedArbiter
from edge.model import Fix, SpeedSample


def can(kmh: float, mono: float) -> SpeedSample:
    return SpeedSample(time=1e9 + mono, speed_kmh=kmh, source="can", mono=mono)


def fix(mps: float | None, mono: float, *, valid: bool = True) -> Fix:
    return Fix(time=1e9 + mono, lat=52.0, lon=13.0, speed_mps=mps, valid=valid, mono=mono)


def arbiter() -> SpeedArbiter:
    return SpeedArbiter(stale_s=1.0, disagree_kmh=15.0, disagree_s=10.0)


def test_can_preferred_gnss_only_when_can_is_stale() -> None:
    a = arbiter()
    s = can(50.0, 0.0)
    assert a.on_can(s) is s
    assert a.on_gnss(fix(13.0, 0.5)) is None  # CAN fresh: GNSS not used
    assert a.current(0.6) is s
    assert a.health()["source"] == "can"
    g = a.on_gnss(fix(13.0, 2.0))  # CAN 2 s old > stale_s
    assert g is not None and g.source == "gnss" and g.speed_kmh == 13.0 * 3.6
    assert g.mono == 2.0
    assert a.current(2.0) == g
    h = a.health()
    assert h["source"] == "gnss" and h["fallbacks"] == 1
    a.on_can(can(47.0, 2.5))
    assert a.health()["source"] == "can"


def test_invalid_fixes_are_never_used() -> None:
    a = arbiter()
    assert a.on_gnss(fix(10.0, 0.0, valid=False)) is None
    assert a.on_gnss(fix(None, 0.0)) is None
    assert a.current(0.0) is None
    assert a.health()["invalid_fixes"] == 2
    assert a.health()["source"] is None


def test_no_speed_at_all_when_both_are_stale() -> None:
    a = arbiter()
    a.on_can(can(50.0, 0.0))
    a.on_gnss(fix(14.0, 0.2))
    assert a.current(0.9) is not None
    assert a.current(10.0) is None
    assert a.health(10.0)["source"] is None


def test_implausible_only_after_disagreeing_for_disagree_s() -> None:
    a = arbiter()
    t = 0.0
    while t <= 9.0:
        a.on_can(can(100.0, t))  # DBC says 100 km/h
        a.on_gnss(fix(50.0 / 3.6, t + 0.05))  # GNSS says 50
        t += 1.0
    assert a.health()["implausible"] is False
    while t <= 12.0:
        a.on_can(can(100.0, t))
        a.on_gnss(fix(50.0 / 3.6, t + 0.05))
        t += 1.0
    h = a.health()
    assert h["implausible"] is True and h["diff_kmh"] == 50.0
    a.on_can(can(52.0, t))  # agree again
    a.on_gnss(fix(50.0 / 3.6, t + 0.05))
    assert a.health()["implausible"] is False


def test_brief_disagreement_does_not_flag() -> None:
    a = arbiter()
    for i in range(30):
        t = float(i)
        kmh = 100.0 if i % 5 else 40.0  # one bad sample every 5 s resets nothing for long
        a.on_can(can(kmh, t))
        a.on_gnss(fix(100.0 / 3.6, t + 0.1))
    assert a.health()["implausible"] is False


def _disagree(a: SpeedArbiter, can_kmh: float, gnss_kmh: float, t0: float, n: int,
              ) -> tuple[list[SpeedSample | None], list[SpeedSample | None]]:
    from_can, from_gnss = [], []
    for i in range(n):
        t = t0 + i
        from_can.append(a.on_can(can(can_kmh, t)))
        from_gnss.append(a.on_gnss(fix(gnss_kmh / 3.6, t + 0.05)))
    return from_can, from_gnss


def test_fallback_policy_uses_gnss_while_they_disagree_and_says_so_once() -> None:
    a = SpeedArbiter(stale_s=1.0, disagree_kmh=15.0, disagree_s=10.0)  # default: fallback
    assert a.policy == "fallback"
    c, g = _disagree(a, 86.0, 43.0, 0.0, 10)  # a doubled DBC scale
    assert all(x is not None for x in c) and all(x is None for x in g)  # CAN until sure
    c, g = _disagree(a, 86.0, 43.0, 10.0, 20)
    assert all(x is None for x in c[1:]) and all(x is not None for x in g[1:])
    assert a.health()["source"] == "gnss" and a.health()["implausible"] is True
    (ev,) = a.take_events()  # one diagnostic for the whole disagreement
    _, body = ev
    assert body["phase"] == "start" and body["diagnostic"] == "speed_sources_disagree"
    assert body["can_kmh"] == 86.0 and body["gnss_kmh"] == 43.0 and body["using"] == "gnss"
    assert body["policy"] == "fallback"
    assert a.take_events() == []
    c, g = _disagree(a, 44.0, 43.0, 30.0, 3)  # fixed: they agree again
    assert all(x is not None for x in c) and all(x is None for x in g)
    (end,) = a.take_events()
    assert end[1]["phase"] == "end" and end[1]["duration_s"] >= 19.0
    assert a.health()["diagnostics"] == 1


def test_can_policy_keeps_can_and_still_reports() -> None:
    a = SpeedArbiter(stale_s=1.0, disagree_kmh=15.0, disagree_s=10.0, policy="can")
    c, g = _disagree(a, 86.0, 43.0, 0.0, 30)
    assert all(x is not None for x in c) and all(x is None for x in g)
    (ev,) = a.take_events()
    assert ev[1]["using"] == "can"


def test_gnss_policy_prefers_a_fresh_fix_always() -> None:
    a = SpeedArbiter(stale_s=1.0, disagree_kmh=15.0, disagree_s=10.0, policy="gnss")
    c, g = _disagree(a, 50.0, 49.0, 0.0, 5)
    assert all(x is None for x in c[1:]) and all(x is not None for x in g)
    assert a.on_can(can(50.0, 100.0)) is not None  # GNSS stale: CAN
    assert a.take_events() == []


def test_no_disagreement_when_standing_still() -> None:
    a = SpeedArbiter(stale_s=1.0, disagree_kmh=5.0, disagree_s=2.0)
    _disagree(a, 0.0, 7.0, 0.0, 30)  # GNSS wander at a standstill (below MOVING_KMH)
    assert a.take_events() == [] and a.health()["implausible"] is False
