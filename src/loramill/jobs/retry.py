"""Retrying transient failures with exponential backoff and full jitter.

Only ``TransientError`` (a storage, broker or database hiccup) is retried: a permanent error such as
``InvalidInput`` would fail the same way every time, so it goes straight to the caller. Jitter spreads
the retries of many workers hit by the same outage, so they do not all come back in the same second
(AWS architecture blog, "Exponential Backoff And Jitter": full jitter).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from loramill import metrics
from loramill.errors import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to try, and how long to wait between tries (seconds)."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] for the ``attempt``-th retry (0-based)."""
        ceiling = min(self.cap, self.base * (2 ** attempt))
        return (rng or random).uniform(0, ceiling)


def retrying(operation: str, fn: Callable[[], T], policy: RetryPolicy, *,
             sleep: Callable[[float], None] = time.sleep, should_stop: Callable[[], bool] | None = None) -> T:
    """``fn()``, tried up to ``policy.attempts`` times while it raises ``TransientError``.

    ``operation`` names what is retried in logs and in ``loramill_retries_total``. The last
    ``TransientError`` is raised when the attempts run out, or as soon as ``should_stop()`` is true
    (a shutting-down worker hands the job back instead of waiting out the backoff).
    """
    for attempt in range(policy.attempts):
        try:
            return fn()
        except TransientError as exc:
            if attempt + 1 >= policy.attempts or (should_stop is not None and should_stop()):
                raise
            wait = policy.delay(attempt)
            metrics.RETRIES.labels(operation=operation).inc()
            log.warning("%s failed (%s); retry %d of %d in %.1fs", operation, exc.message, attempt + 1,
                        policy.attempts - 1, wait)
            sleep(wait)
    raise AssertionError("unreachable: the loop returns or raises")
