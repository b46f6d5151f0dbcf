"""``JobRecorder`` (jobs/events.py): the running jobs' heartbeat, and storing a finished job's outcome."""

from __future__ import annotations

import threading
import time

import pytest

from loramill.domain.status import JobStatus
from loramill.errors import TransientError
from loramill.jobs.contracts import JobEvent
from loramill.jobs.events import JobRecorder
from loramill.jobs.retry import RetryPolicy


class CountingStore:
    """Stands in for the job store's ``touch``: counts each job's heartbeats."""

    def __init__(self) -> None:
        self.touched: dict[str, int] = {}

    def touch(self, task_id: str) -> bool:
        self.touched[task_id] = self.touched.get(task_id, 0) + 1
        return True


def _wait_for(condition, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_beating_touches_every_running_job_from_one_thread_until_they_end() -> None:
    store = CountingStore()
    recorder = JobRecorder(store, None, None, RetryPolicy(1, 0.01, 0.01))  # type: ignore[arg-type]

    with recorder.beating("a", every=0.02), recorder.beating("b", every=0.02):
        assert _wait_for(lambda: store.touched.get("a", 0) >= 2 and store.touched.get("b", 0) >= 2)
        beaters = [t for t in threading.enumerate() if t.name == "job-heartbeat"]
        assert len(beaters) == 1  # one thread for both jobs
    assert _wait_for(lambda: not beaters[0].is_alive())  # nothing left to beat for: the thread ends

    with recorder.beating("c", every=0.02):  # a later job gets a new thread
        assert _wait_for(lambda: store.touched.get("c", 0) >= 1)


class FlakyStore:
    """A store whose ``transition`` fails ``outage`` times (a database restarting), then works."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.calls = 0

    def transition(self, *args: object, **kwargs: object) -> bool:
        self.calls += 1
        if self.calls <= self.outage:
            raise TransientError("database is unavailable")
        return True


class Published:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def publish_event(self, body: bytes, *, task_id: str) -> None:
        self.bodies.append(body)


def test_finish_outlasts_an_outage_longer_than_other_calls_are_retried() -> None:
    # Giving up on storing a finished job's outcome means running the job again.
    store, broker = FlakyStore(outage=6), Published()
    recorder = JobRecorder(store, broker, None, RetryPolicy(4, 0.001, 0.001))  # type: ignore[arg-type]
    event = JobEvent(task_id="t-1", user_id="u-1", status=JobStatus.COMPLETED)

    published = recorder.finish(event)

    assert published.status == "completed" and store.calls == 7 and len(broker.bodies) == 1
    with pytest.raises(TransientError):  # an outage past the longer budget still ends in a hand-back
        JobRecorder(FlakyStore(outage=100), broker, None, RetryPolicy(4, 0.001, 0.001)).finish(event)  # type: ignore[arg-type]
