"""Token-bucket rate limits keyed by account or client address, in memory, bounded."""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Callable

from server.config import RateLimit
from server.errors import AcmeProblem


class RateLimiter:
    def __init__(self, name: str, limit: RateLimit, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.limit = limit
        self._rate = limit.count / max(limit.period.total_seconds(), 1e-9)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def check(self, key: str) -> None:
        """Take one token for `key` or raise `rateLimited` with Retry-After."""
        if not self.limit.enabled:
            return
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.limit.count), now))
        tokens = min(float(self.limit.count), tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self._rate)
            raise AcmeProblem("rateLimited",
                              f"rate limit {self.name} exceeded: {self.limit.count} per "
                              f"{int(self.limit.period.total_seconds())}s; retry after {wait}s",
                              headers={"Retry-After": str(wait)})
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
