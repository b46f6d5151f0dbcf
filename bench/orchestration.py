"""Orchestration overhead: jobs whose engine step is instant, through API → broker → worker → storage → event → API.

For each broker (the embedded SQL queue, Kafka via tansu, RabbitMQ), the two ways users run loramill,
each with only the denoising stubbed (``bench.orchestration_server``):

- ``serve``: one ``loramill serve`` process, the API and 1 (then 2) worker threads in it — the
  embedded default on one machine;
- ``process``: ``loramill serve --workers 0`` for the API beside one ``loramill worker`` process — how
  deploy/compose.yml runs it (API and workers in separate processes, here on the same two cores);

and an HTTP client that only speaks the public API:
1. latency: one job at a time — ``POST /v1/generations``, then ``GET /v1/jobs/{id}`` every
   ``POLL_S`` until ``completed``; p50 and p95 over ``LATENCY_JOBS`` jobs;
2. throughput: ``THROUGHPUT_JOBS`` jobs posted from 4 client threads at once, jobs/s until the last
   one reads ``completed``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, Result, percentile, workdir
from bench.training import _env

LATENCY_JOBS, THROUGHPUT_JOBS, WARMUP_JOBS = 100, 300, 5
POLL_S = 0.002
BODY = {"prompt": "a kite over the sea", "width": 64, "height": 64, "steps": 2}


class Server:
    """``loramill serve`` (engine stubbed) in a subprocess, its log in the work folder; with
    ``topology="process"`` its workers are ``loramill worker`` processes beside it instead of threads in it."""

    def __init__(self, home: Path, broker: str, workers: int, env: dict[str, str], topology: str = "serve") -> None:
        from tests.services.common import free_port

        from loramill.adapters.store import JobStore

        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        db = f"sqlite:///{home / 'loramill.db'}"
        store = JobStore(db)
        store.create_user("bench", user_id="bench")
        self.key = store.create_api_key("bench")[1]
        store.close()
        self.port = free_port()
        self.env = {**_env(), "LORAMILL_HOME": str(home), "LORAMILL_BROKER": broker, "LORAMILL_STORAGE": "local",
                    "LORAMILL_DATABASE_URL": db, "LORAMILL_BASE_MODEL": str(home / "instant-model"),
                    "LORAMILL_QUEUE_LIMIT": "100000", "LORAMILL_RATE_LIMIT_PER_MINUTE": "1000000", **env}
        self.log = (home / "serve.log").open("w")
        threads = workers if topology == "serve" else 0
        self.process = subprocess.Popen([sys.executable, "-m", "bench.orchestration_server", "serve", "--port",
                                         str(self.port), "--workers", str(threads)], cwd=REPO, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.workers = [subprocess.Popen([sys.executable, "-m", "bench.orchestration_server", "worker"], cwd=REPO,
                                         env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
                        for _ in range(workers if topology == "process" else 0)]
        import httpx

        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                                   headers={"Authorization": f"Bearer {self.key}"}, timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {home / 'serve.log'}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in 120 s; see {home / 'serve.log'}")

    def submit(self, client: Any = None) -> str:
        response = (client or self.client).post("/v1/generations", json=BODY)
        if response.status_code >= 300:
            raise RuntimeError(f"POST /v1/generations: {response.status_code} {response.text[:300]}")
        return str(response.json()["id"] if "id" in response.json() else response.json()["taskId"])

    def wait(self, job_id: str, poll: float, timeout: float = 60) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            status = self.client.get(f"/v1/jobs/{job_id}").json()["status"]
            if status == "completed":
                return time.perf_counter()
            if status in ("failed", "canceled"):
                raise RuntimeError(f"job {job_id} {status}")
            time.sleep(poll)
        raise RuntimeError(f"job {job_id} not completed in {timeout} s")

    def stop(self) -> None:
        self.client.close()
        for process in [self.process, *self.workers]:
            process.terminate()
        for process in [self.process, *self.workers]:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.log.close()


def measure(server: Server, quick: bool) -> dict[str, Any]:
    import httpx

    for _ in range(WARMUP_JOBS):  # the first jobs pay consumer-group joins, connection set-up, lazy imports
        server.wait(server.submit(), 0.01, timeout=120)
    # 1. Latency, one job at a time.
    latencies = []
    for _ in range(LATENCY_JOBS // 4 if quick else LATENCY_JOBS):
        started = time.perf_counter()
        job = server.submit()
        latencies.append(server.wait(job, POLL_S) - started)
    # 2. Throughput: a burst from 4 client threads, then wait for every job in submission order.
    count = THROUGHPUT_JOBS // 4 if quick else THROUGHPUT_JOBS
    ids: list[str] = []
    lock = threading.Lock()

    def post(n: int) -> None:
        with httpx.Client(base_url=str(server.client.base_url), headers=dict(server.client.headers),
                          timeout=60) as client:
            for _ in range(n):
                job = server.submit(client)
                with lock:
                    ids.append(job)

    started = time.perf_counter()
    threads = [threading.Thread(target=post, args=(count // 4,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    posted = time.perf_counter() - started
    last = started
    for job in ids:
        last = server.wait(job, 0.02, timeout=300)
    elapsed = last - started
    return {"latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
            "latency_p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
            "jobs_per_s": round(len(ids) / elapsed, 1), "burst_jobs": len(ids), "burst_post_s": round(posted, 2),
            "latency_jobs": len(latencies)}


def brokers() -> list[tuple[str, Callable[[Path], tuple[dict[str, str], Callable[[], None]]]]]:
    def sql(_: Path) -> tuple[dict[str, str], Callable[[], None]]:
        return {}, lambda: None

    def kafka(base: Path) -> tuple[dict[str, str], Callable[[], None]]:
        from tests.services.kafka import MEMORY_STORAGE, TansuBroker, tansu_binary

        broker = TansuBroker(tansu_binary(), MEMORY_STORAGE, base / "tansu.log")
        broker.start()
        return {"KAFKA_BOOTSTRAP_SERVER": broker.bootstrap, "KAFKA_GROUP_ID": "bench-workers"}, broker.stop

    def rabbitmq(base: Path) -> tuple[dict[str, str], Callable[[], None]]:
        from tests.services.rabbitmq import RabbitMQNode, rabbitmq_scripts

        folder = Path(tempfile.mkdtemp(prefix="bench-rabbit-"))  # short path: the node name and sockets live here
        node = RabbitMQNode(rabbitmq_scripts(), folder)
        node.start()

        def stop() -> None:
            node.stop()
            shutil.rmtree(folder, ignore_errors=True)

        return {"LORAMILL_RABBITMQ_URL": node.url}, stop

    return [("sql", sql), ("kafka", kafka), ("rabbitmq", rabbitmq)]


def run(quick: bool = False) -> list[Result]:
    results = []
    work = workdir("orchestration")
    for name, start in brokers():
        command = "make bench BENCH=orchestration"
        try:
            env, stop = start(work)
        except BaseException as exc:  # pytest's skip in the service starters is a BaseException
            results.append(Result(f"orchestration {name}", "p50 ms / jobs/s", None, None, None, TARGET, None, command,
                                  note=f"not run: the {name} broker did not start ({str(exc)[:200]})"))
            continue
        figures: dict[str, dict[str, Any]] = {}
        try:
            for topology, workers in (("serve", 1), ("serve", 2), ("process", 1)):
                server = Server(work / f"{name}-{topology}-{workers}", name, workers, env, topology)
                try:
                    figures[f"{topology}_{workers}"] = measure(server, quick)
                finally:
                    server.stop()
        finally:
            stop()
        one, two, apart = figures["serve_1"], figures["serve_2"], figures["process_1"]
        results.append(Result(
            f"orchestration {name}", "p50 ms, 1 worker (p95, jobs/s: note)", None, one["latency_p50_ms"], None,
            TARGET, _met(one), command, {"workers_1": one, "workers_2": two},
            note=f"serve, API + 1 worker thread: {_brief(one)}; with 2 worker threads: {_brief(two)}"))
        results.append(Result(
            f"orchestration {name}, worker process", "p50 ms, 1 worker (p95, jobs/s: note)", None,
            apart["latency_p50_ms"], None, TARGET, _met(apart), command, {"workers_1": apart},
            note=f"serve --workers 0 + 1 loramill worker process: {_brief(apart)}"))
    return results


TARGET = "p50 ≤ 25 ms, ≥ 100 jobs/s (1 worker)"


def _met(figures: dict[str, Any]) -> bool:
    return bool(figures["latency_p50_ms"] <= 25 and figures["jobs_per_s"] >= 100)


def _brief(figures: dict[str, Any]) -> str:
    return f"p50 {figures['latency_p50_ms']} ms, p95 {figures['latency_p95_ms']} ms, {figures['jobs_per_s']} jobs/s"
