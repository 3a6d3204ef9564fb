"""Per-client token buckets (research L6: globalsign/est uses burst = 2 x rate)."""
from __future__ import annotations

import threading
import time


class RateLimiter:
    """``rate`` requests per second per key with a burst of ``burst``; rate 0 turns it off."""

    MAX_KEYS = 100_000

    def __init__(self, rate: float, burst: int | None = None, clock=time.monotonic):
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate * 2))
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.MAX_KEYS:
                self._buckets.clear()
            return (1 - tokens) / self.rate
