"""Fair share between users at the queue: which of the jobs waiting at its head is delivered next.

One policy for every broker (``adapters/broker/{sql,kafka,rabbitmq}.py``): a worker looks at up to
``FAIR_CANDIDATES`` jobs ready at the head of the queue, in the order the broker would deliver them, and
takes, among those of the highest priority, the oldest job of the user who was served the fewest jobs in
the last ``FAIR_WINDOW_SECONDS``. So one user's flood cannot make everyone else wait behind all of it:
a user who arrives during it waits for about one of the flooder's jobs, as on an idle system; one
user's own jobs keep their order. A message that names no user (a client that sends no ``userId``)
counts as a user of its own.

What each broker counts as "served": the sql broker asks the job store (jobs started by any worker);
Kafka and RabbitMQ workers count what they themselves handed out (``ServedLog``). The brokers differ only
in how they look ahead; docs/configuration.md ("Fair share between users") says how.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# How many ready jobs one choice weighs: a claim costs the same with 10,000 queued. Above the gateway's
# per-user limit on waiting jobs (LORAMILL_USER_QUEUE_LIMIT, 20 by default), so a flood that came through
# the API never pushes another user's job out of sight.
FAIR_CANDIDATES = 64
# How far back "served lately" reaches.
FAIR_WINDOW_SECONDS = 600.0


@dataclass(frozen=True)
class Candidate:
    """A job waiting at the head of the queue, as the policy sees it."""

    user: str | None  # None: the message names no user; it counts as a user of its own
    priority: int = 0


def choose(candidates: Sequence[Candidate], served: Mapping[str, int]) -> int:
    """Index of the candidate to deliver now (``candidates`` in the broker's delivery order, not empty).

    The highest priority first; among those, the first job of the user with the fewest jobs in ``served``.
    """
    if not candidates:
        raise ValueError("choose() needs at least one candidate")
    top = max(c.priority for c in candidates)
    best, fewest = -1, 0
    for i, candidate in enumerate(candidates):
        if candidate.priority != top:
            continue
        count = served.get(candidate.user, 0) if candidate.user is not None else 0
        if best < 0 or count < fewest:
            best, fewest = i, count
            if count == 0:
                break  # nobody is served less than never: the first such job is the one
    return best


def user_of(body: bytes) -> str | None:
    """The ``userId`` a job message names (Selfix's and loramill's contract), or ``None``."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    user = data.get("userId") if isinstance(data, dict) else None
    return user if isinstance(user, str) and user else None


class ServedLog:
    """How many jobs each user was handed in the last ``window`` seconds, by this worker; thread-safe."""

    def __init__(self, window: float = FAIR_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._handed: deque[tuple[float, str]] = deque()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, user: str | None) -> None:
        """``user`` was handed a job now (a message that names no user is not counted)."""
        if user is None:
            return
        with self._lock:
            self._forget_old()
            self._handed.append((self._clock(), user))
            self._counts[user] += 1

    def counts(self) -> dict[str, int]:
        """Jobs handed out per user within the window."""
        with self._lock:
            self._forget_old()
            return dict(self._counts)

    def _forget_old(self) -> None:
        horizon = self._clock() - self.window
        while self._handed and self._handed[0][0] < horizon:
            _, user = self._handed.popleft()
            self._counts[user] -= 1
            if not self._counts[user]:
                del self._counts[user]
