"""The one backoff (edge.core.backoff) of every reconnect loop, over a long outage."""

from __future__ import annotations

import random

from edge.core.backoff import Backoff


def test_a_source_failing_for_days_keeps_waiting_at_the_cap() -> None:
    # a GNSS receiver unplugged at 0.2 s .. 30 s: ~3,000 reopen attempts a day; the
    # exponent must not overflow a float after ~1,000 of them
    b = Backoff(base_s=0.2, cap_s=30.0, rng=random.Random(3))
    delays = [b.next() for _ in range(5000)]
    assert all(15.0 <= d <= 30.0 for d in delays[100:])
    b.reset()
    assert b.next() <= 0.2
