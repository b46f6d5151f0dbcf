"""PostgreSQL restarted while a worker runs a stream of jobs on it (job store *and* SQL queue).

The session's PostgreSQL (tests/services/postgres.py) is shared and has no restart, so this module
builds a private cluster it may stop and start. The worker must ride the outage out (its calls are
retried, a delivery it could not settle comes back after its lease) and every job's status history
must read as one clean story: queued → processing → one terminal event, nothing after it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.store import JobStore
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.worker import Worker
from tests.reliability.helpers import Tally, instant_engine, record_figure, tiny_job
from tests.services.common import free_port, service_unavailable
from tests.services.postgres import HINT, PG_PASSWORD, PG_USER, _bindir, _run

pytestmark = pytest.mark.services

JOBS = 120


class PrivatePostgres:
    """A throwaway cluster with ``restart()``; the URL stays the same."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_postgres = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="loramill-pg-restart-"))
        self.data, self.port = self.base / "data", free_port()
        (self.base / "pw").write_text(PG_PASSWORD)
        if self.as_postgres:
            for path in (self.base, self.base / "pw"):
                shutil.chown(path, "postgres", "postgres")
        _run([str(bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, "--pwfile", str(self.base / "pw"),
              "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"], self.as_postgres)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-t", "30",
              "-o", options, *args], self.as_postgres)

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")

    def remove(self) -> None:
        subprocess.run((["runuser", "-u", "postgres", "--"] if self.as_postgres else [])
                       + [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _bindir()
    if bindir is None:
        service_unavailable("PostgreSQL", HINT)
    assert bindir is not None
    try:
        cluster = PrivatePostgres(bindir)
        cluster.start()
    except (RuntimeError, OSError, LookupError, subprocess.TimeoutExpired) as exc:
        service_unavailable("PostgreSQL", f"{exc}; {HINT}")
    yield cluster
    cluster.remove()


def retries_so_far() -> float:
    from loramill import metrics

    return sum(s.value for m in metrics.RETRIES.collect() for s in m.samples if s.name.endswith("_total"))


def test_ride_out_postgres_restart_with_consistent_history(tmp_path: Path, private_postgres: PrivatePostgres,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")
    retried_before = retries_so_far()
    store = JobStore(private_postgres.url)
    broker = SqlBroker(store, lease_seconds=5)
    client = SqlBroker(JobStore(private_postgres.url))
    tasks = [str(uuid.uuid4()) for _ in range(JOBS)]
    for task in tasks:
        client.publish_job(tiny_job(task), task_id=task)
    settings = WorkerSettings(work_dir=tmp_path / "work", retry_attempts=8, retry_base_seconds=0.25,
                              retry_max_seconds=2.0, handback_seconds=0.2, receive_timeout=0.2, progress_interval=60)
    tally = Tally()
    with instant_engine(monkeypatch, delay=0.02) as engine:
        worker = Worker(settings, broker, store, LocalStorage(tmp_path / "storage"))
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while sum(engine.runs.values()) < JOBS // 3:
                assert time.monotonic() < deadline, "the worker did not get going"
                time.sleep(0.05)
            # 1. The database goes away for a few seconds in the middle of the stream
            private_postgres.stop()
            time.sleep(3)
            private_postgres.start()
            # 2. The worker reconnects and finishes the stream
            tally.wait(client.consume_events, tasks, timeout=120)
        finally:
            worker.stop()
            thread.join(30)
    summary = tally.summary(tasks)
    assert summary["lost"] == 0 and summary["failed"] == 0 and summary["differing_results"] == 0, summary
    assert max(engine.runs[t] for t in tasks) == 1

    # 3. Each job's stored history is one clean story
    problems = []
    attempts = []
    for task in tasks:
        record = store.get_job(task)
        statuses = [e.body["status"] for e in store.list_events(task)]
        terminal = [s for s in statuses if s in ("completed", "failed", "canceled")]
        if record is None or record.status != "completed" or terminal != ["completed"] or statuses[-1] != "completed":
            problems.append((task, record.status if record else None, statuses))
        elif "processing" not in statuses:
            problems.append((task, "no processing event", statuses))
        attempts.append(record.attempts if record else 0)
    assert not problems, problems[:5]
    broker.close()
    client.close()
    store.close()
    outage_warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert outage_warnings, "the outage went unnoticed: the restart missed the stream"
    summary.update(database="PostgreSQL", outage_seconds=3, max_attempts=max(attempts),
                   retried_calls=int(retries_so_far() - retried_before), outage_warnings=len(outage_warnings),
                   jobs_with_retried_attempt=sum(1 for a in attempts if a > 1))
    record_figure("restart_postgres", summary)
