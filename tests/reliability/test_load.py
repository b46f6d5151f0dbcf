"""Load (``make soak``): 2,000 API submissions from 50 concurrent clients, and 10,000 queued jobs drained by
two worker processes whose engine is an instant function — nothing lost, nothing doubled, memory flat.

Both run the shipped processes (``loramill serve`` with ``LORAMILL_WORKERS=0``; ``loramill worker`` via
``tests/reliability/instant_worker.py``) on the embedded stack (SQLite, SQL queue, local folder).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.store import JobStore
from tests.jobs.e2e_helpers import REPO
from tests.reliability.helpers import Tally, record_figure, tiny_job
from tests.services.common import free_port, wait_for_port

pytestmark = [pytest.mark.soak, pytest.mark.services]

SUBMISSIONS, CLIENTS = 2000, 50
DRAIN_JOBS, DRAIN_WORKERS = 10_000, 2


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAMILL_", "KAFKA_", "S3_"))}
    env.update(LORAMILL_HOME=str(home), LORAMILL_DATABASE_URL=f"sqlite:///{home / 'loramill.db'}",
               LORAMILL_BROKER="sql", LORAMILL_STORAGE="local", PYTHONUNBUFFERED="1", LORAMILL_LOG_LEVEL="WARNING")
    return env


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@pytest.mark.timeout(900)
def test_accept_2000_submissions_from_50_clients(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    keys = []
    for n in range(CLIENTS):
        store.create_user(f"client-{n}", user_id=f"client-{n}")
        keys.append(store.create_api_key(f"client-{n}")[1])
    port = free_port()
    env = base_env(tmp_path) | {"LORAMILL_WORKERS": "0", "LORAMILL_PORT": str(port),
                                "LORAMILL_QUEUE_LIMIT": str(SUBMISSIONS * 2),
                                # throughput is measured here, not the per-user fair share
                                "LORAMILL_USER_QUEUE_LIMIT": str(SUBMISSIONS), "LORAMILL_USER_RATE_LIMIT": "10000",
                                "LORAMILL_USER_RATE_BURST": str(SUBMISSIONS)}
    server = subprocess.Popen([sys.executable, "-m", "loramill", "serve"], env=env, cwd=REPO,
                              stdout=(tmp_path / "serve.log").open("wb"), stderr=subprocess.STDOUT)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    ids: list[str] = []
    try:
        wait_for_port(port, timeout=60)
        base = f"http://127.0.0.1:{port}"
        rss_start = psutil.Process(server.pid).memory_info().rss

        async def client(n: int, count: int) -> None:
            headers = {"Authorization": f"Bearer {keys[n]}"}
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                for i in range(count):
                    body = {"prompt": f"sks, portrait {n}-{i}", "width": 64, "height": 64, "steps": 2}
                    started = time.perf_counter()
                    if i % 4 == 3:  # a quarter as PUT with the client's own id, as Cog clients do
                        response = await http.put(f"/v1/jobs/{uuid.uuid4()}", json=body, headers=headers)
                    else:
                        response = await http.post("/v1/generations", json=body, headers=headers)
                    latencies.append(time.perf_counter() - started)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code == 202:
                        ids.append(response.json()["id"])

        async def run_all() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(client(n, SUBMISSIONS // CLIENTS) for n in range(CLIENTS)))
            return time.perf_counter() - started

        wall = asyncio.run(run_all())
        rss_end = psutil.Process(server.pid).memory_info().rss
    finally:
        server.terminate()
        server.wait(30)

    # Every submission accepted once: 2,000 distinct jobs stored and queued, nothing else
    assert statuses == {202: SUBMISSIONS}, statuses
    assert len(set(ids)) == SUBMISSIONS
    broker = SqlBroker(store)
    assert broker.queue_depth() == SUBMISSIONS
    stored = {j for j in ids if store.get_job(j) is not None}
    assert len(stored) == SUBMISSIONS
    broker.close()
    store.close()
    figures = {"submissions": SUBMISSIONS, "clients": CLIENTS, "accepted": statuses.get(202, 0),
               "wall_seconds": round(wall, 1), "per_second": round(SUBMISSIONS / wall, 1),
               "p50_ms": round(statistics.median(latencies) * 1000, 1),
               "p95_ms": round(percentile(latencies, 95) * 1000, 1),
               "p99_ms": round(percentile(latencies, 99) * 1000, 1),
               "max_ms": round(max(latencies) * 1000, 1), "lost": SUBMISSIONS - len(stored), "duplicates": 0,
               "api_rss_mb_start": round(rss_start / 2**20, 1), "api_rss_mb_end": round(rss_end / 2**20, 1)}
    record_figure("load_api_2000", figures)


@pytest.mark.timeout(1800)
def test_drain_10000_jobs_with_two_workers_and_flat_memory(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    client = SqlBroker(store)
    tasks = [str(uuid.uuid4()) for _ in range(DRAIN_JOBS)]
    for task in tasks:
        client.publish_job(tiny_job(task), task_id=task)
    # The instant engine loads no model, but a worker refuses to start without one configured.
    env = base_env(tmp_path) | {"LORAMILL_RECEIVE_TIMEOUT": "0.2", "LORAMILL_PROGRESS_INTERVAL": "60",
                                "LORAMILL_BASE_MODEL": "instant", "LORAMILL_PRELOAD_MODEL": "false"}
    workers = [subprocess.Popen([sys.executable, "-m", "tests.reliability.instant_worker"], env=env, cwd=REPO,
                                stdout=(tmp_path / f"worker-{n}.log").open("wb"), stderr=subprocess.STDOUT)
               for n in range(DRAIN_WORKERS)]
    tally = Tally()
    samples: list[tuple[float, int, list[int]]] = []  # (seconds, jobs done, RSS of each worker)
    started = time.monotonic()
    try:
        procs = [psutil.Process(w.pid) for w in workers]
        deadline = started + 1500
        while time.monotonic() < deadline:
            tally.add(client.consume_events(1.0))
            done = len(tally.completed())
            samples.append((time.monotonic() - started, done, [p.memory_info().rss for p in procs]))
            if done >= DRAIN_JOBS:
                break
            assert all(w.poll() is None for w in workers), "a worker died"
        tally.add(client.consume_events(2.0))
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(60)
    wall = time.monotonic() - started
    summary = tally.summary(tasks)
    assert summary["lost"] == 0 and summary["duplicate_events"] == 0 and summary["failed"] == 0, summary
    attempts = [r.attempts for r in (store.get_job(t) for t in tasks) if r is not None]
    assert len(attempts) == DRAIN_JOBS and max(attempts) == 1  # no job was run twice
    assert client.queue_depth() == 0
    client.close()
    store.close()

    # Memory: from the point both workers have warmed up (500 jobs) to the end
    warm = next(s for s in samples if s[1] >= 500)
    end = samples[-1]
    growth = [(e - w) / 2**20 for w, e in zip(warm[2], end[2])]
    figures = {"jobs": DRAIN_JOBS, "workers": DRAIN_WORKERS, "wall_seconds": round(wall, 1),
               "jobs_per_second": round(DRAIN_JOBS / wall, 1), **summary,
               "rss_mb_at_500_jobs": [round(r / 2**20, 1) for r in warm[2]],
               "rss_mb_at_end": [round(r / 2**20, 1) for r in end[2]],
               "rss_growth_mb": [round(g, 1) for g in growth],
               "rss_curve_mb": [[round(t), d, [round(r / 2**20, 1) for r in rs]]
                                for t, d, rs in samples[:: max(1, len(samples) // 12)]]}
    record_figure("load_drain_10000", figures)
    assert max(growth) < 40, f"worker memory grew by {max(growth):.1f} MB over the run"
    json.dumps(figures)
