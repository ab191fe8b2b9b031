"""Token buckets for the AWS IoT Core per-connection quotas (pure: time is an argument)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # bucket size
    tokens: float = -1.0
    stamp: float | None = None

    def delay(self, now: float, cost: float = 1.0) -> float:
        """Seconds to wait before ``cost`` tokens are available; takes them if 0."""
        if self.tokens < 0:
            self.tokens = self.burst
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        cost = min(cost, self.burst)
        if self.tokens >= cost - 1e-9 * max(1.0, cost):  # float slack: never spin on 1e-15 s
            self.tokens = max(0.0, self.tokens - cost)
            return 0.0
        return (cost - self.tokens) / self.rate


@dataclass(slots=True)
class IotQuota:
    """100 publishes/s and 512 KiB/s per connection (AWS IoT Core)."""

    publishes: TokenBucket
    bytes: TokenBucket

    @classmethod
    def aws(cls) -> IotQuota:
        return cls(TokenBucket(100.0, 100.0), TokenBucket(512 * 1024.0, 512 * 1024.0))

    def delay(self, now: float, nbytes: int) -> float:
        d = self.publishes.delay(now, 1.0)
        if d:
            return d
        d = self.bytes.delay(now, float(nbytes))
        if d:
            self.publishes.tokens += 1.0  # give the publish token back, retry later
        return d
