"""The per-key rate limit: a token bucket per key in each API process.

Each bucket holds one second's worth of requests and refills continuously; a request
that finds it empty is refused with the seconds until the next token (``Retry-After``).
The buckets live in the process: behind a load balancer, N processes allow a key N
times the rate (README, "HTTP API").
"""

from __future__ import annotations

import math
import time


class RateLimiter:
    """Token buckets by key id, ``rate`` requests per second each."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> int | None:
        """Spend one token of ``key``'s bucket; None if there was one, else the whole
        seconds to wait before the next request may pass (at least 1)."""
        now = time.monotonic()
        capacity = max(self.rate, 1.0)
        tokens, at = self._buckets.get(key, (capacity, now))
        tokens = min(capacity, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.rate))
