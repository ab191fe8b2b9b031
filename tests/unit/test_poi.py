"""POI offers: once per trip per POI, a cooldown across trips, a global hourly cap."""

from __future__ import annotations

from edge.core.rules import Rules
from edge.model import Event, Fix
from tests.support.rules_kit import T0, circle, config, feed, fix, zones

COFFEE = circle("coffee", 500, 0, 50, offer={"text": "2-for-1 espresso", "code": "EDGE42"})


def drive(t0: float, x0: float, x1: float, v: float = 10.0) -> list[Fix]:
    """1 Hz fixes along y=5 from x0 to x1 at v m/s, with GNSS speed (makes trips)."""
    n = int(abs(x1 - x0) / v) + 1
    step = v if x1 >= x0 else -v
    return [fix(t0 + i, x0 + i * step, 5, speed_mps=v) for i in range(n)]


def park(t0: float, x: float, seconds: int) -> list[Fix]:
    return [fix(t0 + i, x, 5, speed_mps=0.0) for i in range(0, seconds, 5)]


def offers(events: list[Event]) -> list[dict]:
    return [dict(e.body) for e in events if e.kind == "poi"]


def test_offer_once_per_trip_with_distance() -> None:
    rules = Rules(config(), zones(COFFEE))
    events = feed(rules, drive(0, 0, 1000) + drive(101, 1000, 0))  # there and back
    (offer,) = offers(events)
    assert offer == {"poi": "coffee", "name": "Coffee", "offer":
                     {"text": "2-for-1 espresso", "code": "EDGE42"},
                     "distance_m": 40.3}  # first fix inside: x=460, y=5
    (ev,) = [e for e in events if e.kind == "poi"]
    assert ev.time == T0 + 46 and ev.lat is not None


def test_next_trip_within_cooldown_gets_no_offer_after_cooldown_does() -> None:
    rules = Rules(config(poi={"cooldown_s": 3600.0}), zones(COFFEE))
    first = feed(rules, drive(0, 0, 1000))
    parked = feed(rules, park(101, 1000, 400))  # the trip ends after 300 s stopped
    second = feed(rules, drive(600, 1000, 0))
    parked += feed(rules, park(701, 0, 4000))
    third = feed(rules, drive(5000, 0, 1000))
    phases = [e.body["phase"] for e in first + parked + second + third if e.kind == "trip"]
    assert sorted(phases) == ["end", "end", "start", "start", "start"]
    assert (len(offers(first)), len(offers(second)), len(offers(third))) == (1, 0, 1)
    assert rules.health()["poi"]["cooldown_skipped"] == 1


def test_global_rate_cap_per_hour() -> None:
    pois = [circle(f"p{i}", 200 + 300 * i, 0, 40, offer=f"offer {i}") for i in range(10)]
    rules = Rules(config(poi={"max_per_hour": 3, "cooldown_s": 0.0}), zones(*pois))
    events = feed(rules, drive(0, 0, 3200))
    assert [o["poi"] for o in offers(events)] == ["p0", "p1", "p2"]
    assert rules.health()["poi"]["rate_capped"] >= 7
    # an hour later the cap has room again (new trip, same road)
    feed(rules, park(321, 3200, 400))
    later = feed(rules, drive(4000, 3200, 0))
    assert [o["poi"] for o in offers(later)] == ["p9", "p8", "p7"]


def test_speed_zones_and_fences_are_not_offers() -> None:
    z = zones(COFFEE, circle("school", 500, 0, 200, maxspeed=30),
              circle("town", 500, 0, 900, kind="speed", maxspeed=50))
    rules = Rules(config(), z)
    events = feed(rules, drive(0, 0, 1000))
    assert [o["poi"] for o in offers(events)] == ["coffee"]
