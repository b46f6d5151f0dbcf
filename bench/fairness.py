"""Fair share between users on each broker: what a flood costs another user, and what looking ahead costs.

For the embedded sql queue (SQLite), RabbitMQ and Kafka (tansu), in-process, with a worker that runs each
job the moment it gets it (so only the queue is measured):

1. wait: "alice" queues ``FLOOD`` jobs, then "bob" submits ``ASKS`` jobs one at a time; each of his waits
   is counted in jobs served until his (1: his came next); p95 of them, against bob alone (the test
   ``flood_leaves_another_users_wait_as_when_idle`` asserts the same on every broker);
2. cost: jobs/s of receive + ack through the whole flood of one user (the case where every choice has to
   look ahead, and RabbitMQ requeues what it looked at).

Both run side by side, alternated twice (the best of each kept): with the fair policy
(``loramill.domain.fairness``), and with the baseline of first come, first served (the adapters' choice
replaced by arrival order, RabbitMQ's window kept closed). A published job is given the time it takes to
reach a worker's look-ahead before bob's wait is counted (0.3 s on Kafka, 0.1 s on RabbitMQ), as in the test.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from bench.common import Result, workdir

FLOOD, ASKS, BURST = 40, 8, 300
COMMAND = "make bench BENCH=fairness"


def _job(task: str, user: str) -> bytes:
    return json.dumps({"taskId": task, "userId": user, "images": [f"users/{user}/a.jpg"]}).encode()


@contextlib.contextmanager
def first_come_first_served() -> Iterator[None]:
    """The adapters' fair choice replaced by arrival order (the baseline)."""
    from loramill.adapters.broker import kafka_consumer, rabbitmq, sql

    def arrival(candidates: Any, served: Any) -> int:
        top = max(c.priority for c in candidates)
        return next(i for i, c in enumerate(candidates) if c.priority == top)

    with mock.patch.object(sql, "choose", arrival), mock.patch.object(kafka_consumer, "choose", arrival), \
            mock.patch.object(rabbitmq, "choose", arrival), mock.patch.object(rabbitmq, "FAIR_CANDIDATES", 1):
        yield


def p95(values: list[int]) -> int:
    """Nearest rank, as the test counts it."""
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def _serve_until(broker: Any, run_job: Callable[[Any, Any], None], task: str | None, timeout: float) -> int:
    served = 0
    while True:
        delivery = broker.receive(timeout)
        if delivery is None:
            if task is None:
                return served
            raise RuntimeError(f"{task} never came")
        run_job(broker, delivery)
        served += 1
        if task is not None and json.loads(delivery.body)["taskId"] == task:
            return served


def measure(make: Callable[[], tuple[Any, Callable[[Any, Any], None], float]], tag: str) -> dict[str, Any]:
    """Bob's waits behind alice's flood and alone, and the jobs/s of draining a one-user burst."""
    broker, run_job, visible = make()
    try:
        assert broker.receive(0.5 if visible == 0 else 15) is None  # joins the group (Kafka) before timing
        waits: dict[str, list[int]] = {}
        for who, flood in (("carol", 0), ("bob", FLOOD)):
            for i in range(flood):
                broker.publish_job(_job(f"{tag}-alice-{who}-{i}", "alice"), task_id=f"{tag}-alice-{who}-{i}")
            waits[who] = []
            for i in range(ASKS):
                mine = f"{tag}-{who}-{i}"
                broker.publish_job(_job(mine, who), task_id=mine)
                time.sleep(visible)
                waits[who].append(_serve_until(broker, run_job, mine, 15))
        _serve_until(broker, run_job, None, 1 + visible)  # what is left of the flood
        for i in range(BURST):
            broker.publish_job(_job(f"{tag}-burst-{i}", "dave"), task_id=f"{tag}-burst-{i}")
        time.sleep(visible)
        started = time.perf_counter()
        drained = _serve_until(broker, run_job, None, 1 + visible)
        elapsed = time.perf_counter() - started - 1 - visible  # the last receive waited out its timeout
        return {"bob_p95_wait": p95(waits["bob"]), "alone_p95_wait": p95(waits["carol"]),
                "bob_waits": waits["bob"], "burst_jobs": drained, "jobs_per_s": round(drained / elapsed, 1)}
    finally:
        broker.close()


def brokers(base: Path) -> Iterator[tuple[str, Callable[[], tuple[Any, Callable[[Any, Any], None], float]],
                                         Callable[[], None]]]:
    """(name, make a fresh broker on queues of its own, stop the service) for each broker."""
    from loramill.adapters.broker.sql import SqlBroker
    from loramill.adapters.store import JobStore

    count = iter(range(1000))
    shutil.rmtree(base, ignore_errors=True)  # a database left by an earlier run holds the same task ids
    base.mkdir(parents=True)

    def sql() -> tuple[Any, Callable[[Any, Any], None], float]:
        broker = SqlBroker(JobStore(f"sqlite:///{base / f'queue-{next(count)}.db'}"))

        def run_job(b: Any, delivery: Any) -> None:  # as the worker does: started in the store, then acked
            job = json.loads(delivery.body)
            b.store.claim_job(job["taskId"], job["userId"], "train", job, stale_after=30)
            b.store.transition(job["taskId"], "completed")
            b.ack(delivery)

        return broker, run_job, 0.0

    yield "sql", sql, lambda: None

    from tests.services.rabbitmq import RabbitMQNode, rabbitmq_scripts

    folder = Path(tempfile.mkdtemp(prefix="bench-rabbit-"))
    node = RabbitMQNode(rabbitmq_scripts(), folder)
    node.start()

    def rabbit() -> tuple[Any, Callable[[Any, Any], None], float]:
        from loramill.adapters.broker.rabbitmq import RabbitMQBroker

        n = next(count)
        broker = RabbitMQBroker(url=node.url, input_queue=f"fair-{n}.jobs", output_queue=f"fair-{n}.events")
        return broker, lambda b, d: b.ack(d), 0.1

    def stop_rabbit() -> None:
        node.stop()
        shutil.rmtree(folder, ignore_errors=True)

    yield "rabbitmq", rabbit, stop_rabbit

    from tests.services.kafka import MEMORY_STORAGE, TansuBroker, tansu_binary

    tansu = TansuBroker(tansu_binary(), MEMORY_STORAGE, base / "tansu.log")
    tansu.start()

    def kafka() -> tuple[Any, Callable[[Any, Any], None], float]:
        from loramill.adapters.broker.kafka import KafkaBroker

        n = next(count)
        broker = KafkaBroker(bootstrap_server=tansu.bootstrap, topic_input=f"fair-{n}.jobs",
                             topic_output=f"fair-{n}.events", group_id=f"fair-{n}", session_timeout_ms=3000,
                             heartbeat_interval_ms=500)
        return broker, lambda b, d: b.ack(d), 0.3

    yield "kafka", kafka, tansu.stop


def run(quick: bool = False) -> list[Result]:
    results = []
    base = workdir("fairness")
    for name, make, stop in brokers(base):
        runs: dict[str, list[dict[str, Any]]] = {"fifo": [], "fair": []}
        try:
            for _ in range(1 if quick else 2):  # alternated, the best of each kept: the machine is shared
                with first_come_first_served():
                    runs["fifo"].append(measure(make, "fifo"))
                runs["fair"].append(measure(make, "fair"))
        finally:
            stop()
        fifo, fair = (max(runs[way], key=lambda r: r["jobs_per_s"]) for way in ("fifo", "fair"))
        results.append(Result(
            f"fair share {name}: another user's wait", "p95 jobs served before his (alone: 1)",
            fifo["bob_p95_wait"], fair["bob_p95_wait"],
            round(fifo["bob_p95_wait"] / fair["bob_p95_wait"], 2), "≤ 2× alone", fair["bob_p95_wait"] <= 2 *
            fair["alone_p95_wait"], COMMAND, {"fair": fair, "first_come_first_served": fifo},
            note=f"alice queues {FLOOD}, bob asks {ASKS}× one at a time; alone p95 {fair['alone_p95_wait']}"))
        results.append(Result(
            f"fair share {name}: one-user burst", "jobs/s, receive + ack", fifo["jobs_per_s"], fair["jobs_per_s"],
            round(fair["jobs_per_s"] / fifo["jobs_per_s"], 2), "cost of looking ahead", None, COMMAND,
            note=f"{BURST} jobs of one user: every choice looks ahead"))
    return results
