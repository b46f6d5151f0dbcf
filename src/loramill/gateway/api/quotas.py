"""Fair share between users at the gateway: a token bucket of job submissions per user.

Together with the per-user limit on waiting jobs (``LORAMILL_USER_QUEUE_LIMIT``, checked against the job
store in ``service.py``) it keeps one key from filling the shared queue (``LORAMILL_QUEUE_LIMIT``) and
locking every other user out with 429s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate`` submissions per second per user, bursts of up to ``burst``; in-process (per API replica)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] | None = None) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock or time.monotonic
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, user_id: str) -> float:
        """Spend one token of ``user_id``'s bucket: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(user_id) or _Bucket(float(self.burst), now)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            self._buckets[user_id] = bucket
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate
