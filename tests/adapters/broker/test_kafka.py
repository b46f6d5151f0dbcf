"""The kafka broker against a real Kafka-protocol broker (tansu): the port, long jobs, Selfix's clients."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from loramill.adapters.broker.kafka import ORIGIN_HEADER, REASON_HEADER, KafkaBroker
from loramill.adapters.broker.kafka_config import (
    KafkaSettings,
    client_config,
    job_consumer_config,
    load_settings,
    producer_config,
    redacted,
)
from loramill.errors import InvalidInput, TransientError
from tests.adapters.broker.conformance import BEHAVIOURS, Behaviour, BrokerHarness, run_behaviour, selfix_job
from tests.services.kafka import TansuBroker

pytestmark = pytest.mark.services


def kafka_settings(bootstrap: str, namespace: str, **overrides: object) -> KafkaSettings:
    """Settings on topics and a group of their own.

    tansu completes a group's first join only after half of session.timeout.ms (librdkafka's
    default 45 s means a 23 s wait), so the tests use a short session.
    """
    values: dict[str, object] = {
        "bootstrap_server": bootstrap,
        "topic_input": f"{namespace}.jobs",
        "topic_output": f"{namespace}.events",
        "group_id": f"{namespace}.workers",
        "session_timeout_ms": 3000,
        "heartbeat_interval_ms": 500,
        "publish_timeout_seconds": 10.0,
        **overrides,
    }
    return KafkaSettings(**values)  # type: ignore[arg-type]


def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list[tuple[bytes, dict[str, bytes]]]:
    """Up to ``count`` messages of ``topic`` from the start, read by a plain confluent-kafka consumer.

    It assigns every partition itself instead of joining a group: nothing to wait for.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    found: list[tuple[bytes, dict[str, bytes]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and message.error() is None:
                found.append((message.value() or b"", dict(message.headers() or [])))  # type: ignore[arg-type]
    finally:
        consumer.close()
    return found


@pytest.fixture
def make_kafka(kafka_bootstrap: str) -> Callable[..., KafkaBroker]:
    return lambda namespace, **overrides: KafkaBroker(kafka_settings(kafka_bootstrap, namespace, **overrides))


@pytest.fixture
def kafka_harness(kafka_bootstrap: str, make_kafka: Callable[..., KafkaBroker]) -> BrokerHarness:
    def dead_letters(broker: object, count: int) -> list[tuple[bytes, str]]:
        assert isinstance(broker, KafkaBroker)
        found = read_topic(kafka_bootstrap, broker.settings.dead_letter, count)
        return [(body, headers[REASON_HEADER].decode()) for body, headers in found]

    # A second worker needs ~1.5 s to join (3 s session), then must see nothing.
    return BrokerHarness(
        name="kafka", make=make_kafka, dead_letters=dead_letters, supports_priority=False, second_worker_timeout=4.0,
        visible_after=0.3,
    )


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=lambda b: b.name)
def test_honour_broker_port_on_kafka(kafka_harness: BrokerHarness, behaviour: Behaviour) -> None:
    run_behaviour(kafka_harness, behaviour)


def test_hold_job_longer_than_max_poll_interval_without_rebalance(
    make_kafka: Callable[..., KafkaBroker], kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    # librdkafka leaves the group when poll() is not called for max.poll.interval.ms; the job below
    # holds its delivery 1.5 times that long while this (worker) thread does nothing but sleep.
    caplog.set_level(logging.INFO, logger="loramill")
    broker = make_kafka("long-job", max_poll_interval_ms=6000, session_timeout_ms=3000)
    try:
        broker.publish_job(selfix_job("task-long"), task_id="task-long")
        delivery = broker.receive(20)
        assert delivery is not None
        time.sleep(9)
        broker.ack(delivery)
        assert broker.receive(3) is None
        during = caplog.text  # close() revokes on purpose; only what happened before counts
        topic, partition, offset = delivery.delivery_id.split("#")[0].rsplit(":", 2)
    finally:
        broker.close()
    assert "revoked" not in during
    assert during.count("kafka partitions assigned") == 1
    probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": broker.settings.group_id})
    try:
        [committed] = probe.committed([TopicPartition(topic, int(partition))], timeout=10)
    finally:
        probe.close()
    assert committed.offset == int(offset) + 1


def test_drop_held_job_on_revocation(make_kafka: Callable[..., KafkaBroker], caplog: pytest.LogCaptureFixture) -> None:
    # An eager strategy revokes every partition when a second worker joins: the first worker's held
    # job is handed to the group again, and its late ack must not commit over the new owner.
    caplog.set_level(logging.WARNING, logger="loramill")
    settings = {"assignment_strategy": "range", "topic_partitions": 1, "session_timeout_ms": 3000}
    first = make_kafka("revoke", **settings)
    second = make_kafka("revoke", **settings)
    try:
        first.publish_job(selfix_job("task-revoked"), task_id="task-revoked")
        held = first.receive(20)
        assert held is not None
        winner, delivery = None, None
        deadline = time.monotonic() + 40
        while delivery is None and time.monotonic() < deadline:
            for worker in (second, first):  # second joins on its first receive; first may get the job back
                delivery = worker.receive(0.5)
                if delivery is not None:
                    winner = worker
                    break
        assert winner is not None and delivery is not None
        assert delivery.body == held.body and delivery.redelivered == (winner is first)
        first.ack(held)
        assert "ignored: its partition was revoked" in caplog.text
        winner.ack(delivery)
    finally:
        first.close()
        second.close()


def test_keep_held_job_paused_when_worker_joins(
    make_kafka: Callable[..., KafkaBroker], caplog: pytest.LogCaptureFixture
) -> None:
    # cooperative-sticky (the default) moves only partitions that must move; here none must, so the
    # running job keeps its partition, which stays paused through the rebalance. (When a busy
    # partition must move, Kafka moves it anyway: the revocation test covers that.)
    caplog.set_level(logging.INFO, logger="loramill")
    first = make_kafka("coop", topic_partitions=1, session_timeout_ms=3000)
    second = make_kafka("coop", topic_partitions=1, session_timeout_ms=3000)
    try:
        first.publish_job(selfix_job("task-kept"), task_id="task-kept")
        held = first.receive(20)
        assert held is not None
        # second joins on its first receive; tansu completes that rebalance within ~3 s here.
        assert second.receive(8) is None
        assert caplog.text.count("kafka partitions assigned") >= 2  # second really is in the group
        first.ack(held)
        assert second.receive(2) is None and first.receive(1) is None
        during = caplog.text
    finally:
        first.close()
        second.close()
    assert "revoked" not in during


def test_receive_one_partitions_jobs_in_order_once(make_kafka: Callable[..., KafkaBroker]) -> None:
    # One key, one partition: each ack must resume exactly after its message (pause, commit, seek, resume).
    broker = make_kafka("in-order")
    try:
        bodies = [selfix_job(f"task-{n}") for n in range(5)]
        for body in bodies:
            broker.publish_job(body, task_id="same-task")
        received = []
        while (delivery := broker.receive(10 if not received else 3)) is not None:
            received.append(delivery.body)
            broker.ack(delivery)
        assert received == bodies
    finally:
        broker.close()


def test_publish_from_many_threads_at_once(make_kafka: Callable[..., KafkaBroker], kafka_bootstrap: str) -> None:
    # The API publishes from its thread pool: every publish must get its own delivery report.
    broker = make_kafka("many-publishers")
    try:
        bodies = [selfix_job(f"task-{n}") for n in range(40)]
        threads = [threading.Thread(target=lambda part=bodies[i::8]: [broker.publish_job(b, task_id="t") for b in part])
                   for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        found = read_topic(kafka_bootstrap, broker.settings.topic_input, len(bodies))
        assert sorted(body for body, _ in found) == sorted(bodies)
    finally:
        broker.close()


def test_receive_plain_producer_json_verbatim(make_kafka: Callable[..., KafkaBroker], kafka_bootstrap: str) -> None:
    broker = make_kafka("selfix-client")
    body = json.dumps(
        {"taskId": "uuid-task-identifier", "userId": "user-identifier",
         "images": ["users/user-id/images/image1.jpg"],
         "configurationParams": {"epochs": 10, "learningRate": 8e-4, "networkDim": 4}, "priority": 1},
        ensure_ascii=False,
    ).encode()
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})  # Selfix's client: no key, no headers
        producer.produce(broker.settings.topic_input, value=body)
        assert producer.flush(10) == 0
        delivery = broker.receive(20)
        assert delivery is not None
        assert delivery.body == body
        broker.ack(delivery)
    finally:
        broker.close()


def test_dead_letter_keeps_origin_header(make_kafka: Callable[..., KafkaBroker], kafka_bootstrap: str) -> None:
    broker = make_kafka("dlq-origin")
    try:
        broker.publish_job(b"not json", task_id="task-bad")
        delivery = broker.receive(20)
        assert delivery is not None
        broker.dead_letter(delivery, "invalid_input: not JSON")
        [(body, headers)] = read_topic(kafka_bootstrap, f"{broker.settings.topic_input}.dlq", 1)
    finally:
        broker.close()
    assert body == b"not json"
    assert headers[ORIGIN_HEADER].decode() == delivery.delivery_id.split("#")[0]  # topic:partition:offset
    assert headers["taskId"] == b"task-bad"


def test_raise_transient_error_when_kafka_unreachable(tansu_factory: Callable[..., TansuBroker]) -> None:
    tansu = tansu_factory()
    broker = KafkaBroker(kafka_settings(tansu.bootstrap, "unreachable", publish_timeout_seconds=2.0))
    try:
        tansu.stop()
        with pytest.raises(TransientError, match="could not publish"):
            broker.publish_job(selfix_job("task-lost"), task_id="task-lost")
    finally:
        broker.close()


def test_build_client_config_with_sasl_from_env(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVER": "kafka1:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "kafka-username",
        "KAFKA_SASL_PASSWORD": "hunter2-secret",
        "KAFKA_GROUP_ID": "avatar-creator-group",
        "KAFKA_TOPIC_INPUT": "avatar-creation-jobs",
        "KAFKA_TOPIC_OUTPUT": "avatar-creation-results",
        "LORAMILL_KAFKA_MAX_POLL_INTERVAL_MS": "600000",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    config = client_config(settings)
    assert config["bootstrap.servers"] == "kafka1:9092"
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "PLAIN"
    assert config["sasl.username"] == "kafka-username"
    assert config["sasl.password"] == "hunter2-secret"
    assert (settings.group_id, settings.topic_input, settings.topic_output) == (
        "avatar-creator-group", "avatar-creation-jobs", "avatar-creation-results"
    )
    assert settings.max_poll_interval_ms == 600000
    assert settings.dead_letter == "avatar-creation-jobs.dlq"
    logging.getLogger("loramill.test").warning("config %s settings %r", redacted(config), settings)
    for shown in (repr(settings), str(settings), caplog.text):
        assert "hunter2-secret" not in shown


def test_build_worker_clients_that_do_not_wait_on_idle_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = KafkaSettings()
    assert producer_config(settings)["linger.ms"] == 0  # every publish waits for its own report anyway
    assert job_consumer_config(settings)["fetch.wait.max.ms"] == 10  # brokers that hold a fetch to its end
    assert settings.topic_partitions == 16  # a worker holds one job per partition

    tuned = KafkaSettings(extra_config={"linger.ms": 20, "fetch.wait.max.ms": 500})
    assert producer_config(tuned)["linger.ms"] == 20 and job_consumer_config(tuned)["fetch.wait.max.ms"] == 500
    monkeypatch.setenv("LORAMILL_KAFKA_FETCH_WAIT_MAX_MS", "100")
    assert job_consumer_config(load_settings())["fetch.wait.max.ms"] == 100


def test_reject_sasl_without_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "kafka-username")
    with pytest.raises(InvalidInput, match="KAFKA_SASL_PASSWORD"):
        load_settings()


def test_reject_unknown_security_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "TLS")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2-secret")
    with pytest.raises(InvalidInput, match="KAFKA_SECURITY_PROTOCOL") as raised:
        load_settings()
    assert "hunter2-secret" not in str(raised.value)


def test_keep_jobs_across_kafka_broker_restart(
    tansu_factory: Callable[..., TansuBroker], tansu_s3_storage: tuple[str, dict[str, str]]
) -> None:
    # tansu on S3 storage keeps topics, messages and committed offsets across a restart; the
    # adapter's clients reconnect on their own, and what was acked before stays acked.
    tansu = tansu_factory(*tansu_s3_storage)
    broker = KafkaBroker(kafka_settings(tansu.bootstrap, "restart"))
    try:
        for task in ("task-0", "task-1"):
            broker.publish_job(selfix_job(task), task_id=task)
        first = broker.receive(20)
        assert first is not None
        broker.ack(first)

        tansu.restart()

        broker.publish_job(selfix_job("task-2"), task_id="task-2")
        received = [json.loads(first.body)["taskId"]]
        deadline = time.monotonic() + 60
        while len(received) < 3 and time.monotonic() < deadline:
            delivery = broker.receive(1)
            if delivery is not None:
                received.append(json.loads(delivery.body)["taskId"])
                broker.ack(delivery)
        assert sorted(received) == ["task-0", "task-1", "task-2"]  # none lost, none twice
        assert broker.receive(2) is None
    finally:
        broker.close()


def test_reject_unknown_librdkafka_property() -> None:
    with pytest.raises(InvalidInput, match="no.such.property"):
        KafkaBroker(extra_config={"no.such.property": 1}, create_topics=False)
