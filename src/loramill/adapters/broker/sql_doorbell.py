"""Waking the ``sql`` broker's receivers when a job is queued, instead of at their next poll.

A worker waiting on an empty queue polls with a back-off (5 ms doubling to 200 ms), so a job that
arrives while it sleeps waited half an interval on average before anyone looked. Now:

- in one process (``loramill serve``: the API and its worker threads share one job store) publishing a
  job rings a ``Doorbell`` that waiting receivers sleep on, and they look at once;
- on PostgreSQL a publish also sends ``NOTIFY loramill_jobs`` in its transaction, and every receiving
  broker ``LISTEN``s on a connection of its own (``PgListener``), so separate ``loramill worker``
  processes wake the same way.

SQLite has no signal between processes: workers in other processes still poll. Polling stays in
every case as the safety net — a lost ring or notification costs one poll interval, never a job.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

logger = logging.getLogger("loramill.broker.sql")

CHANNEL = "loramill_jobs"
_bells: weakref.WeakKeyDictionary[Any, Doorbell] = weakref.WeakKeyDictionary()
_bells_lock = threading.Lock()


class Doorbell:
    """Counts rings; a receiver remembers the count before it looks and sleeps until it changes."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.rings = 0

    def ring(self) -> None:
        with self._changed:
            self.rings += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout: float) -> bool:
        """Sleep up to ``timeout`` s unless the bell rang since ``seen`` (then at once); ``True`` if it rang."""
        with self._changed:
            return self._changed.wait_for(lambda: self.rings != seen, timeout)


def doorbell_for(database: object) -> Doorbell:
    """The doorbell shared by every broker of this process on ``database`` (the job store's ``Database``)."""
    with _bells_lock:
        bell = _bells.get(database)
        if bell is None:
            bell = _bells[database] = Doorbell()
        return bell


class PgListener:
    """``LISTEN loramill_jobs`` on a connection of its own, in a daemon thread, ringing ``bell`` on each
    notification; reconnects after a failure (ringing once, since notifications may have been missed)."""

    def __init__(self, conninfo: str, bell: Doorbell, name: str) -> None:
        self._conninfo = conninfo
        self._bell = bell
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> PgListener:
        self._thread.start()
        return self

    def _run(self) -> None:
        import psycopg

        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    self._bell.ring()  # whatever was queued while we were not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self._bell.ring()
            except psycopg.Error as exc:
                failures += 1
                # The safety net is polling, so this only costs latency; say so once, not every second.
                (logger.warning if failures == 1 else logger.debug)(
                    "listening for queued jobs failed (%s); polling until it is back", type(exc).__name__)
                self._stop.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
