"""Two copies of one job on two workers: the store's ``start_attempt`` lets one run and tells the other whether
the first is alive (its heartbeat) or dead (taken over). See test_broker_faults.py for the workers."""

from __future__ import annotations

import time
from pathlib import Path

from loramill.adapters.store import JobStore


def test_start_attempt_runs_one_copy_and_takes_over_a_silent_one(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    store.create_job("t-1", "u-1", "generate", {"prompt": "x"})

    assert store.start_attempt("t-1", stale_after=0.5) == "started"
    assert store.start_attempt("t-1", stale_after=0.5) == "busy"  # the first copy is running
    time.sleep(0.3)
    assert store.touch("t-1")  # ... and alive
    time.sleep(0.3)
    assert store.start_attempt("t-1", stale_after=0.5) == "busy"
    time.sleep(0.6)  # no heartbeat for longer than stale_after: its worker is gone
    assert store.start_attempt("t-1", stale_after=0.5) == "started"
    record = store.get_job("t-1")
    assert record is not None and record.attempts == 2

    store.transition("t-1", "completed", result={"taskId": "t-1", "status": "completed"})
    assert store.start_attempt("t-1", stale_after=0.5) == "finished"
    assert not store.touch("t-1")
    store.close()
