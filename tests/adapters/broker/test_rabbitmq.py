"""The rabbitmq broker against a private RabbitMQ node: the port, heartbeats, dead letters, restarts."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator

import aio_pika
import pytest

from loramill.adapters.broker.base import Broker
from loramill.adapters.broker.rabbitmq import REASON_HEADER, RabbitMQBroker
from loramill.adapters.broker.rabbitmq_config import DAY_MS, RabbitMQSettings
from loramill.errors import InvalidInput, TransientError
from tests.adapters.broker.conformance import BEHAVIOURS, Behaviour, BrokerHarness, run_behaviour, selfix_job
from tests.services.common import free_port
from tests.services.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.services

MakeBroker = Callable[..., RabbitMQBroker]


def get_all(url: str, queue: str, count: int, timeout: float = 10.0) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Up to ``count`` messages taken from ``queue`` by a plain aio-pika client (not loramill code)."""

    async def take() -> list[aio_pika.abc.AbstractIncomingMessage]:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            source = await channel.get_queue(queue, ensure=True)
            found: list[aio_pika.abc.AbstractIncomingMessage] = []
            deadline = time.monotonic() + timeout
            while len(found) < count and time.monotonic() < deadline:
                message = await source.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.1)
                else:
                    found.append(message)
            return found

    return asyncio.run(take())


@pytest.fixture
def make_rabbitmq(rabbitmq_url: str) -> Iterator[MakeBroker]:
    made: list[RabbitMQBroker] = []

    def make(namespace: str, **overrides: object) -> RabbitMQBroker:
        settings = {
            "url": rabbitmq_url,
            "input_queue": f"{namespace}.jobs",
            "output_queue": f"{namespace}.events",
            "reconnect_interval_seconds": 1.0,
            "operation_timeout_seconds": 10.0,
            **overrides,
        }
        broker = RabbitMQBroker(**settings)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def rabbitmq_harness(rabbitmq_url: str, make_rabbitmq: MakeBroker) -> BrokerHarness:
    def dead_letters(broker: Broker, count: int) -> list[tuple[bytes, str]]:
        assert isinstance(broker, RabbitMQBroker)
        found = get_all(rabbitmq_url, broker.settings.dead_letters, count)
        return [(m.body, str(m.headers[REASON_HEADER])) for m in found]

    return BrokerHarness(
        name="rabbitmq", make=make_rabbitmq, dead_letters=dead_letters, supports_priority=True,
        receive_timeout=10.0, quiet_timeout=1.0, second_worker_timeout=1.0, visible_after=0.1,
    )


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=lambda b: b.name)
def test_honour_broker_port_on_rabbitmq(rabbitmq_harness: BrokerHarness, behaviour: Behaviour) -> None:
    run_behaviour(rabbitmq_harness, behaviour)


def test_hold_delivery_across_heartbeats(make_rabbitmq: MakeBroker, caplog: pytest.LogCaptureFixture) -> None:
    # With a 2 s heartbeat the server drops a connection silent for ~4 s. This (worker) thread
    # holds the delivery for 7 s doing nothing for the connection: the adapter's own loop must.
    caplog.set_level(logging.INFO)
    worker = make_rabbitmq("heartbeat", heartbeat_seconds=2)
    worker.publish_job(selfix_job("task-hb"), task_id="task-hb")
    delivery = worker.receive(10)
    assert delivery is not None
    time.sleep(7)
    worker.ack(delivery)
    assert worker.receive(1) is None
    assert "ignored" not in caplog.text and "Reconnecting" not in caplog.text
    other = make_rabbitmq("heartbeat")
    assert other.receive(1) is None


def test_reject_natively_into_dead_letter_queue(make_rabbitmq: MakeBroker, rabbitmq_url: str) -> None:
    # The queue's x-dead-letter-exchange catches what any client rejects, not only loramill's dead_letter().
    broker = make_rabbitmq("native-reject")
    broker.publish_job(b"poison", task_id="task-native")

    async def reject_one() -> None:
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            jobs = await channel.get_queue(broker.settings.input_queue, ensure=True)
            message = await jobs.get(timeout=10)
            await message.reject(requeue=False)

    asyncio.run(reject_one())
    [dead] = get_all(rabbitmq_url, broker.settings.dead_letters, 1)
    assert dead.body == b"poison"
    assert dead.headers["x-death"][0]["reason"] == "rejected"  # type: ignore[index]


def test_receive_plain_client_json_verbatim(make_rabbitmq: MakeBroker, rabbitmq_url: str) -> None:
    broker = make_rabbitmq("plain-client")
    body = json.dumps(
        {"taskId": "t-1", "userId": "u-1", "prompt": "tsuki_advtr, a samoyed dog smiling, white background",
         "width": 512, "height": 512, "steps": 50, "guidanceScale": 7.5, "seed": 50}
    ).encode()

    async def publish() -> None:
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=broker.settings.input_queue)

    asyncio.run(publish())
    delivery = broker.receive(10)
    assert delivery is not None and delivery.body == body
    broker.ack(delivery)


def test_declare_job_queue_with_priority_and_consumer_timeout(
    make_rabbitmq: MakeBroker, rabbitmq_node: RabbitMQNode
) -> None:
    broker = make_rabbitmq("arguments", max_priority=7)
    listed = rabbitmq_node.ctl("list_queues", "name", "arguments", "durable", "--no-table-headers")
    [line] = [row for row in listed.stdout.splitlines() if row.startswith(broker.settings.input_queue + "\t")]
    assert "x-max-priority" in line and "7" in line
    assert "x-consumer-timeout" in line and str(DAY_MS) in line
    assert "x-dead-letter-exchange" in line and "loramill.dead" in line
    assert line.endswith("true")  # durable


def test_reject_queue_declared_with_other_arguments(make_rabbitmq: MakeBroker) -> None:
    make_rabbitmq("mismatch", max_priority=5)
    with pytest.raises(InvalidInput, match="LORAMILL_RABBITMQ_INPUT_QUEUE"):
        make_rabbitmq("mismatch", max_priority=9)


def test_use_job_queue_a_client_declared_plain(make_rabbitmq: MakeBroker, rabbitmq_url: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    name = f"plain-{uuid.uuid4().hex[:6]}"

    async def declare_plain() -> None:  # what Tsuki's client does before loramill ever starts
        async with await aio_pika.connect(rabbitmq_url) as connection:
            await (await connection.channel()).declare_queue(f"{name}.jobs", durable=True)

    asyncio.run(declare_plain())
    broker = make_rabbitmq(name)
    broker.publish_job(b'{"taskId": "t-plain"}', task_id="t-plain")

    delivery = broker.receive(10)
    assert delivery is not None and delivery.body == b'{"taskId": "t-plain"}'
    broker.dead_letter(delivery, "invalid_field: test")  # dead-lettering needs no queue arguments
    assert any("declared plain" in r.getMessage() for r in caplog.records)
    assert [m.headers["x-loramill-reason"] for m in get_all(rabbitmq_url, f"{name}.jobs.dead", 1)] == [
        "invalid_field: test"]


def test_hide_password_when_broker_unreachable() -> None:
    url = f"amqp://loramill:s3cret-pass@127.0.0.1:{free_port()}/"
    settings = RabbitMQSettings(url=url, operation_timeout_seconds=5)  # type: ignore[arg-type]
    assert "s3cret-pass" not in repr(settings)
    with pytest.raises(TransientError) as raised:
        RabbitMQBroker(settings)
    assert "s3cret-pass" not in str(raised.value)


def test_keep_jobs_across_broker_restart(
    make_rabbitmq: MakeBroker, rabbitmq_node: RabbitMQNode, caplog: pytest.LogCaptureFixture
) -> None:
    # Runs last in this module: it stops and starts the session's node.
    caplog.set_level(logging.WARNING)
    namespace = f"restart-{uuid.uuid4().hex[:6]}"
    broker = make_rabbitmq(namespace)
    tasks = [f"task-{n}" for n in range(3)]
    for task in tasks:
        broker.publish_job(selfix_job(task), task_id=task)
    held = broker.receive(10)
    assert held is not None
    impatient = make_rabbitmq(namespace, operation_timeout_seconds=2.0)

    rabbitmq_node.stop()
    with pytest.raises(TransientError):  # waited for a reconnection that did not come in time
        impatient.publish_job(selfix_job("task-impatient"), task_id="task-impatient")
    rabbitmq_node.start()

    broker.ack(held)  # its channel died with the server: a no-op, and the job comes back
    assert "ignored: its channel closed" in caplog.text
    broker.publish_job(selfix_job("task-after"), task_id="task-after")  # waits for the reconnection
    received = []
    deadline = time.monotonic() + 60
    while len(received) < 4 and time.monotonic() < deadline:
        delivery = broker.receive(1)
        if delivery is not None:
            received.append(json.loads(delivery.body)["taskId"])
            broker.ack(delivery)
    assert sorted(received) == sorted([*tasks, "task-after"])
    assert broker.queue_depth() == 0
