"""Per-token rate limits of the serve front: one token bucket per (token, deployment).

The bucket refills at `rate_per_minute / 60` tokens a second and holds at most a sixth of
the minute's allowance (rounded up, at least 1): a client may burst ten seconds' worth,
then goes at the steady rate.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


def burst_for(rate_per_minute: int) -> int:
    return max(1, math.ceil(rate_per_minute / 6))


@dataclass
class _Bucket:
    rate_per_minute: int
    tokens: float
    updated: float


class RateLimiter:
    # Buckets idle for this long are full again anyway: forgetting them changes nothing.
    IDLE_SECONDS = 600.0

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def take(self, key: tuple[str, str], rate_per_minute: int) -> float:
        """Spend one request; return 0.0 when allowed, else the seconds until one is."""
        if rate_per_minute <= 0:
            return 60.0
        now = self._clock()
        capacity = burst_for(rate_per_minute)
        per_second = rate_per_minute / 60.0
        with self._lock:
            self._sweep(now)
            bucket = self._buckets.get(key)
            if bucket is None or bucket.rate_per_minute != rate_per_minute:
                bucket = self._buckets[key] = _Bucket(rate_per_minute, float(capacity), now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * per_second)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / per_second

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < self.IDLE_SECONDS:
            return
        self._last_sweep = now
        stale = [k for k, b in self._buckets.items() if now - b.updated > self.IDLE_SECONDS]
        for key in stale:
            del self._buckets[key]
