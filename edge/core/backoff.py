"""Capped, jittered exponential backoff. Pure: the random source is injectable."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class Backoff:
    """``next()`` gives the delay before the next attempt ("full jitter" on an
    exponential base, capped); ``reset()`` after a success; ``to_cap()`` after an
    error that retrying soon will not fix (credentials refused)."""

    base_s: float = 0.5
    cap_s: float = 60.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next(self) -> float:
        try:
            ceiling = min(self.cap_s, self.base_s * self.factor**self.attempts)
        except OverflowError:  # ~1,000 failures in a row (an adapter unplugged for hours)
            ceiling = self.cap_s
        self.attempts += 1
        # never less than half the ceiling: a fleet still spreads out, one car does
        # not hammer a dead broker.
        return ceiling / 2 + self.rng.random() * ceiling / 2

    def reset(self) -> None:
        self.attempts = 0

    def to_cap(self) -> None:
        while self.base_s * self.factor**self.attempts < self.cap_s:
            self.attempts += 1
