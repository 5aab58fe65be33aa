"""A token bucket per API client: `rate` requests per second on average, bursts up to `burst`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

SWEEP_EVERY = 300.0


@dataclass
class _Bucket:
    tokens: float
    at: float
    rate: float
    burst: float

    def refill(self, now: float) -> float:
        return min(self.burst, self.tokens + (now - self.at) * self.rate)


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._last_sweep = clock()

    def take(self, key: str, rate: float, burst: float) -> float:
        """Spend one token. Returns 0.0 when allowed, else the seconds until a token is there."""
        now = self.clock()
        self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now, rate, burst)
        else:
            bucket.rate, bucket.burst = rate, burst
            bucket.tokens = bucket.refill(now)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _sweep(self, now: float) -> None:
        # A bucket that has filled up again is the same as no bucket; dropping those bounds the
        # memory without giving anyone extra requests.
        if now - self._last_sweep < SWEEP_EVERY:
            return
        self._last_sweep = now
        for key in [k for k, b in self._buckets.items() if b.refill(now) >= b.burst]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
