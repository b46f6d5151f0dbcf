"""Broker faults under a stream of jobs: RabbitMQ and the Kafka-protocol broker restarted mid-stream, and two
workers racing on the SQL queue — every job completes exactly once by taskId, none is lost.

The worker is the real ``Worker`` (claim, store, publish, ack) in a thread; only the engine is an
instant function (``InstantEngine``), so 200 jobs take seconds and every loss or duplicate would be
the queue path's. Clients are plain aio-pika / confluent-kafka, knowing only the wire contracts.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loramill.adapters.broker.base import Broker
from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.store import JobStore
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.worker import Worker
from tests.jobs.e2e_helpers import amqp_drain
from tests.reliability.helpers import InstantEngine, Tally, instant_engine, record_figure, tiny_job
from tests.services.kafka import TansuBroker
from tests.services.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.services

STREAM = 200


def worker_settings(tmp_path: Path, **overrides: object) -> WorkerSettings:
    values: dict[str, object] = dict(work_dir=tmp_path / "work", retry_attempts=6, retry_base_seconds=0.2,
                                     retry_max_seconds=2.0, handback_seconds=0.2, receive_timeout=0.2,
                                     progress_interval=60)
    values.update(overrides)
    return WorkerSettings(**values)  # type: ignore[arg-type]


def start_worker(tmp_path: Path, broker: Broker, store: JobStore, name: str = "worker") -> tuple[Worker, threading.Thread]:
    worker = Worker(worker_settings(tmp_path), broker, store, LocalStorage(tmp_path / "storage"))
    thread = threading.Thread(target=worker.run, name=name, daemon=True)
    thread.start()
    return worker, thread


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def check_exactly_once(engine: InstantEngine, tally: Tally, store: JobStore, tasks: list[str]) -> dict[str, int]:
    """The figures of one stream; asserts none lost, none run twice, one result per taskId."""
    summary = tally.summary(tasks)
    runs = [engine.runs[t] for t in tasks]
    records = [store.get_job(t) for t in tasks]
    summary["engine_runs_max"] = max(runs)
    summary["store_completed"] = sum(1 for r in records if r is not None and r.status == "completed")
    assert summary["lost"] == 0, summary
    assert summary["differing_results"] == 0 and summary["failed"] == 0, summary
    assert min(runs) == 1 and max(runs) == 1, f"a job ran {max(runs)} times"
    assert summary["store_completed"] == len(tasks)
    return summary


# -- RabbitMQ stopped and started in the middle of 200 queued jobs -----------------------------------------


def amqp_publish_many(url: str, queue: str, bodies: list[bytes]) -> None:
    import aio_pika

    async def publish() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            for body in bodies:
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)

    asyncio.run(publish())


def test_complete_each_job_once_across_rabbitmq_restart(tmp_path: Path, rabbitmq_node: RabbitMQNode,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from loramill.adapters.broker.rabbitmq import RabbitMQBroker

    namespace = f"restart-stream-{uuid.uuid4().hex[:6]}"
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    broker = RabbitMQBroker(url=rabbitmq_node.url, input_queue=f"{namespace}.jobs", output_queue=f"{namespace}.events",
                            reconnect_interval_seconds=1.0, operation_timeout_seconds=10.0)
    tasks = [str(uuid.uuid4()) for _ in range(STREAM)]
    tally = Tally()
    with instant_engine(monkeypatch, delay=0.02) as engine:
        worker, thread = start_worker(tmp_path, broker, store)
        try:
            amqp_publish_many(rabbitmq_node.url, f"{namespace}.jobs", [tiny_job(t) for t in tasks])
            wait_until(lambda: sum(engine.runs.values()) >= STREAM // 4, 60, "the first quarter of the stream")

            # 1. The broker goes away mid-stream and comes back (durable queue, persistent messages)
            started = time.monotonic()
            rabbitmq_node.restart()
            outage = time.monotonic() - started
            done_at_restart = sum(engine.runs.values())

            # 2. Every job completes; the client reads all results from the output queue
            wait_until(lambda: all(engine.runs[t] for t in tasks), 180, "every job to run")
            wait_until(lambda: sum(1 for t in tasks if (r := store.get_job(t)) and r.status == "completed") == STREAM,
                       60, "every job to be stored completed")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and tally.summary(tasks)["lost"]:
                tally.add([b for b, _ in amqp_drain(rabbitmq_node.url, f"{namespace}.events", 2)])
        finally:
            worker.stop()
            thread.join(30)
            broker.close()
            store.close()
    summary = check_exactly_once(engine, tally, store, tasks)
    summary.update(broker="rabbitmq", restart_seconds=round(outage, 1), completed_before_restart=done_at_restart)
    record_figure("restart_rabbitmq_200", summary)


# -- the Kafka-protocol broker restarted (S3 storage) in the middle of 200 jobs ----------------------------


@pytest.mark.soak  # ~1 min: the group rejoins after the restart; tests/adapters/broker has a quick restart case
def test_complete_each_job_once_across_kafka_restart(tmp_path: Path, tansu_factory: Callable[..., TansuBroker],
                                                     tansu_s3_storage: tuple[str, dict[str, str]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from confluent_kafka import Consumer, Producer

    from loramill.adapters.broker.kafka import KafkaBroker
    from tests.adapters.broker.test_kafka import kafka_settings

    tansu = tansu_factory(*tansu_s3_storage)
    namespace = f"restart-stream-{uuid.uuid4().hex[:6]}"
    settings = kafka_settings(tansu.bootstrap, namespace, max_poll_interval_ms=6000)
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    broker = KafkaBroker(settings)
    tasks = [str(uuid.uuid4()) for _ in range(STREAM)]
    tally = Tally()
    reader = Consumer({"bootstrap.servers": tansu.bootstrap, "group.id": f"{namespace}.client",
                       "auto.offset.reset": "earliest", "session.timeout.ms": 3000})

    def read(timeout: float) -> list[bytes]:
        found = []
        message = reader.poll(timeout)
        while message is not None:
            if message.error() is None:
                found.append(message.value() or b"")
            message = reader.poll(0)
        return found

    with instant_engine(monkeypatch, delay=0.02) as engine:
        worker, thread = start_worker(tmp_path, broker, store)
        try:
            producer = Producer({"bootstrap.servers": tansu.bootstrap})
            for task in tasks:
                producer.produce(settings.topic_input, value=tiny_job(task), key=task)
            assert producer.flush(30) == 0
            reader.subscribe([settings.topic_output])
            wait_until(lambda: sum(engine.runs.values()) >= STREAM // 4, 120, "the first quarter of the stream")

            # 1. tansu stops and starts again on the same storage
            started = time.monotonic()
            tansu.restart()
            outage = time.monotonic() - started
            done_at_restart = sum(engine.runs.values())

            # 2. Every job completes, every result reaches the client
            wait_until(lambda: all(engine.runs[t] for t in tasks), 240, "every job to run")
            tally.wait(read, tasks, timeout=120)
            tally.add(read(2))
        finally:
            worker.stop()
            thread.join(60)
            broker.close()
            reader.close()
            store.close()
    summary = check_exactly_once(engine, tally, store, tasks)
    summary.update(broker="kafka (tansu, S3 storage)", restart_seconds=round(outage, 1),
                   completed_before_restart=done_at_restart)
    record_figure("restart_kafka_200", summary)


# -- two workers racing on the SQL queue --------------------------------------------------------------------


@pytest.fixture
def sql_stack(tmp_path: Path) -> Iterator[tuple[JobStore, list[SqlBroker]]]:
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    brokers = [SqlBroker(store, lease_seconds=30) for _ in range(3)]
    yield store, brokers
    for broker in brokers:
        broker.close()
    store.close()


def test_two_workers_racing_on_sql_queue_run_each_job_once(tmp_path: Path, sql_stack: tuple[JobStore, list[SqlBroker]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store, (client, first, second) = sql_stack
    tasks = [str(uuid.uuid4()) for _ in range(STREAM)]
    for task in tasks:
        client.publish_job(tiny_job(task), task_id=task)
    tally = Tally()
    with instant_engine(monkeypatch, delay=0.005) as engine:
        workers = [start_worker(tmp_path / name, broker, store, name)
                   for name, broker in (("one", first), ("two", second))]
        try:
            wait_until(lambda: all(engine.runs[t] for t in tasks), 120, "every job to run")
            tally.wait(client.consume_events, tasks, timeout=60)
        finally:
            for worker, thread in workers:
                worker.stop()
                thread.join(30)
    summary = check_exactly_once(engine, tally, store, tasks)
    handled = [w.handled for w, _ in workers]
    assert sum(handled) == STREAM and min(handled) > 0, handled  # both took part, no delivery twice
    assert summary["duplicate_events"] == 0
    summary.update(broker="sql (SQLite)", handled_per_worker=handled)
    record_figure("race_sql_two_workers", summary)


def test_duplicate_message_of_running_job_is_not_run_again(tmp_path: Path, sql_stack: tuple[JobStore, list[SqlBroker]],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A producer that retries a publish (Selfix after a timeout, a bot after a restart) puts the same job on
    # the queue twice; two workers take one copy each at the same moment. One must win; the other must move
    # on instead of training the same LoRA a second time on a second GPU.
    store, (client, first, second) = sql_stack
    task = str(uuid.uuid4())
    for _ in range(2):
        client.publish_job(tiny_job(task), task_id=task)
    tally = Tally()
    with instant_engine(monkeypatch, delay=2.0) as engine:
        workers = [start_worker(tmp_path / name, broker, store, name)
                   for name, broker in (("one", first), ("two", second))]
        try:
            tally.wait(client.consume_events, [task], timeout=60)
            wait_until(lambda: client.queue_depth() == 0 and all(w.current_task is None for w, _ in workers), 30,
                       "both copies to be settled")
            tally.add(client.consume_events(1))
        finally:
            for worker, thread in workers:
                worker.stop()
                thread.join(30)
    assert engine.runs[task] == 1, f"the job ran {engine.runs[task]} times"
    summary = tally.summary([task])
    assert summary["lost"] == 0 and summary["differing_results"] == 0


def test_take_over_dead_workers_job_without_dead_lettering_its_copy(
        tmp_path: Path, sql_stack: tuple[JobStore, list[SqlBroker]], monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker claimed the job and died (the store says processing; no heartbeat comes any more). Its copy
    # on the queue is handed back as "busy" until the job goes stale; those hand-backs must not use up the
    # SQL queue's delivery limit (10), or the job is dead-lettered and never runs.
    store, (client, first, _) = sql_stack
    task = str(uuid.uuid4())
    store.create_job(task, "load-user", "generate", json.loads(tiny_job(task)))
    assert store.start_attempt(task, stale_after=60) == "started"  # the worker that died
    client.publish_job(tiny_job(task), task_id=task)
    tally = Tally()
    with instant_engine(monkeypatch) as engine:
        worker = Worker(worker_settings(tmp_path, handback_seconds=0.1, job_heartbeat_seconds=1,
                                        job_stale_seconds=4), first, store, LocalStorage(tmp_path / "storage"))
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            tally.wait(client.consume_events, [task], timeout=30)
        finally:
            worker.stop()
            thread.join(30)
    assert [d.reason for d in client.dead_letters()] == []
    assert engine.runs[task] == 1 and tally.summary([task])["lost"] == 0
