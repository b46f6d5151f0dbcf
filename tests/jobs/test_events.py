"""``JobRecorder`` (jobs/events.py): the running jobs' heartbeat, and the store-first order of a job's life."""

from __future__ import annotations

import threading
import time

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
