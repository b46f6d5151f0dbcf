"""The ``kafka`` broker: jobs and events on Kafka topics, through confluent-kafka.

Jobs are keyed by taskId, so one task's messages stay in one partition and in order. A worker's
consumer looks ahead past the head of its partitions and hands out the fair choice between users
(``loramill.domain.fairness``), commits an offset only once every job before it is settled (``ack`` comes
after the result is stored), keeps polling in its own thread while a job runs (see ``kafka_consumer``),
and dead-letters by producing the message to ``<input>.dlq`` with the reason in a header, then settling
it. Kafka has no message priorities: the job's priority travels in a header for whoever wants it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from loramill.adapters.broker.base import Broker, Delivery
from loramill.adapters.broker.kafka_config import (
    KafkaSettings,
    client_config,
    events_consumer_config,
    job_consumer_config,
    load_settings,
    producer_config,
)
from loramill.adapters.broker.kafka_consumer import HeldMessage, JobConsumer
from loramill.errors import InvalidInput, LoramillError, TransientError

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]
REASON_HEADER = "x-loramill-reason"
ORIGIN_HEADER = "x-loramill-origin"  # topic:partition:offset the dead letter came from
# Errors that retrying cannot fix: the settings are wrong.
_AUTH_ERRORS = {
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}


class KafkaBroker(Broker):
    """Broker port on Kafka. ``KafkaBroker()`` reads ``KAFKA_*`` / ``LORAMILL_KAFKA_*``; keywords override."""

    name = "kafka"

    def __init__(self, settings: KafkaSettings | None = None, **overrides: Any) -> None:
        self.settings = load_settings(settings, **overrides)
        try:
            self._producer = Producer({**producer_config(self.settings), "logger": log})
        except KafkaException as exc:  # librdkafka rejected a property (extra_config, SSL files, ...)
            raise InvalidInput(f"Kafka client configuration rejected: {exc.args[0].str()}", field="kafka") from None
        # Created on first receive(): a gateway that only publishes must never join the workers' group.
        self._consumer: JobConsumer | None = None
        self._events: Consumer | None = None
        self._lock = threading.Lock()
        self._events_lock = threading.Lock()  # consume_events polls under it; receive() must not wait on that
        self._outstanding: dict[str, HeldMessage] = {}
        self._closing = threading.Event()
        self._poller: threading.Thread | None = None  # serves delivery reports (see _produce)
        self._progress_topics: set[str] = set()  # created (or found) already
        if self.settings.create_topics:
            self.create_topics()

    # -- publishing ------------------------------------------------------------------------------

    def publish_job(self, body: bytes, *, task_id: str, priority: int = 0) -> None:
        headers: Headers = [("taskId", task_id.encode()), ("priority", str(priority).encode())]
        self._produce(self.settings.topic_input, body, key=task_id, headers=headers)

    def publish_event(self, body: bytes, *, task_id: str) -> None:
        self._produce(self.settings.topic_output, body, key=task_id, headers=[("taskId", task_id.encode())])

    def publish_progress(self, body: bytes, *, task_id: str, topic: str) -> None:
        if topic not in self._progress_topics:
            if self.settings.create_topics:
                self.create_topics([topic])
            self._progress_topics.add(topic)
        self._produce(topic, body, key=task_id, headers=[("taskId", task_id.encode())])

    def _produce(self, topic: str, body: bytes, *, key: str | None, headers: Headers) -> None:
        """Produce one message and wait for the broker's acknowledgement."""
        done = threading.Event()
        outcome: list[KafkaError | None] = []

        def delivered(error: KafkaError | None, _message: Any) -> None:
            outcome.append(error)
            done.set()

        self._start_poller()
        try:
            self._producer.produce(topic, value=body, key=key, headers=headers, on_delivery=delivered)
        except BufferError:
            raise TransientError(f"kafka producer queue is full; publishing to {topic!r} later may succeed") from None
        except KafkaException as exc:
            raise _translate(exc.args[0], f"publish to {topic!r}") from exc
        if self._closing.is_set():  # after close() nobody else serves the reports
            self._producer.flush(self.settings.publish_timeout_seconds)
        # message.timeout.ms bounds the wait; the margin covers the last report.
        done.wait(self.settings.publish_timeout_seconds + 5)
        if not outcome:
            raise TransientError(f"kafka did not acknowledge a message to {topic!r} in time")
        if outcome[0] is not None:
            raise _translate(outcome[0], f"publish to {topic!r}")

    def _start_poller(self) -> None:
        """One thread serves every delivery report as it arrives. Publishers used to poll themselves, and
        when several published at once (API threads) one poll could serve another's report and then
        sit out its 50 ms timeout: a burst of jobs waited tens of ms per publish."""
        with self._lock:
            if self._poller is not None:
                return
            self._poller = threading.Thread(target=self._serve_reports, name="loramill-kafka-producer", daemon=True)
            self._poller.start()

    def _serve_reports(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.1)

    # -- consuming jobs --------------------------------------------------------------------------

    def receive(self, timeout: float) -> Delivery | None:
        held = self._job_consumer().next(timeout)
        if held is None:
            return None
        delivery = Delivery(
            body=held.value, delivery_id=held.delivery_id, redelivered=held.redelivered, headers=held.headers
        )
        with self._lock:
            self._outstanding[delivery.delivery_id] = held
        return delivery

    def ack(self, delivery: Delivery) -> None:
        held = self._take(delivery, "ack")
        if held is not None:
            self._settle(held, "ack", lambda c: c.commit(held, self.settings.publish_timeout_seconds))

    def nack(self, delivery: Delivery, *, requeue: bool = True) -> None:
        if not requeue:
            # Kafka cannot drop one message from the middle of a partition: set it aside instead.
            self.dead_letter(delivery, "rejected by the worker without requeue")
            return
        held = self._take(delivery, "nack")
        if held is not None:
            self._settle(held, "nack", lambda c: c.give_back(held, self.settings.publish_timeout_seconds))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        held = self._take(delivery, "dead_letter")
        if held is None:
            return
        headers: Headers = [(k, v if isinstance(v, bytes) else str(v).encode()) for k, v in held.headers.items()]
        headers += [(REASON_HEADER, reason.encode()), (ORIGIN_HEADER, held.position.encode())]
        # Produced first, committed second: a crash in between leaves a duplicate dead letter, never a lost job.
        self._produce(self.settings.dead_letter, held.value, key=held.key, headers=headers)
        # A message without a key is named by its position; the worker's task context (if the task id was
        # readable) is on the line already.
        log.warning("dead-lettered the message at %s: %s", held.position, reason,
                    extra={"task_id": held.key} if held.key else {})
        self._settle(held, "dead_letter", lambda c: c.commit(held, self.settings.publish_timeout_seconds))

    def _take(self, delivery: Delivery, what: str) -> HeldMessage | None:
        """The held message behind ``delivery``; ``None`` (with a warning) if its partition was revoked."""
        with self._lock:
            held = self._outstanding.get(delivery.delivery_id)
            if held is not None and not held.lost:
                return held
            self._outstanding.pop(delivery.delivery_id, None)
        self._warn_lost(delivery.delivery_id, what)
        return None

    def _settle(self, held: HeldMessage, what: str, action: Callable[[JobConsumer], bool]) -> None:
        """Run ``action`` on the consumer; if it raises, the delivery stays outstanding and can be retried."""
        settled = action(self._job_consumer())
        with self._lock:
            self._outstanding.pop(held.delivery_id, None)
        if not settled:
            self._warn_lost(held.delivery_id, what)

    def _warn_lost(self, delivery_id: str, what: str) -> None:
        log.warning(
            "kafka %s of %s ignored: its partition was revoked, so it will be delivered again", what, delivery_id
        )

    def _job_consumer(self) -> JobConsumer:
        with self._lock:
            if self._consumer is None:
                self._consumer = JobConsumer(
                    job_consumer_config(self.settings),
                    self.settings.topic_input,
                    cooperative=self.settings.cooperative,
                    poll_seconds=self.settings.poll_seconds,
                )
                self._consumer.start()
            return self._consumer

    # -- events, depth, lifecycle ------------------------------------------------------------------

    def consume_events(self, timeout: float) -> list[bytes]:
        """Events from the output topic: waits up to ``timeout`` for the first, then takes what is there."""
        with self._events_lock:
            if self._events is None:
                self._events = Consumer({**events_consumer_config(self.settings), "logger": log})
                self._events.subscribe([self.settings.topic_output])
            events = self._events
            bodies: list[bytes] = []
            deadline = time.monotonic() + timeout
            wait = timeout
            while True:
                message = events.poll(max(0.0, min(wait, deadline - time.monotonic())))
                if message is None:
                    if bodies or time.monotonic() >= deadline:
                        return bodies
                    continue
                error = message.error()
                if error is not None:
                    log.warning("kafka events consumer: %s", error.str())
                    continue
                bodies.append(message.value() or b"")
                wait = 0.1  # something arrived: collect what follows it, then return

    def queue_depth(self) -> int | None:
        """Jobs on the input topic past the workers' committed offsets."""
        probe = Consumer({**job_consumer_config(self.settings), "logger": log})
        try:
            topic = self.settings.topic_input
            metadata = probe.list_topics(topic, timeout=10).topics[topic]
            if metadata.error is not None:
                raise KafkaException(metadata.error)
            partitions = [TopicPartition(topic, p) for p in metadata.partitions]
            depth = 0
            for committed in probe.committed(partitions, timeout=10):
                low, high = probe.get_watermark_offsets(committed, timeout=10)
                depth += high - (committed.offset if committed.offset >= 0 else low)
            return depth
        except KafkaException as exc:
            raise _translate(exc.args[0], "read the queue depth") from exc
        finally:
            probe.close()

    def close(self) -> None:
        with self._lock:
            consumer, self._consumer = self._consumer, None
        with self._events_lock:
            events, self._events = self._events, None
        if consumer is not None:
            consumer.close()
        if events is not None:
            events.close()
        self._closing.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        self._producer.flush(self.settings.publish_timeout_seconds)

    def create_topics(self, names: list[str] | None = None) -> None:
        """Create ``names`` (default: the input, output and dead-letter topics) where they are missing."""
        s = self.settings
        config: dict[str, Any] = {**client_config(s), "logger": log}
        admin = AdminClient(config)
        topics = [
            NewTopic(name, num_partitions=s.topic_partitions, replication_factor=s.topic_replication_factor)
            for name in dict.fromkeys(names or [s.topic_input, s.topic_output, s.dead_letter])
        ]
        futures = admin.create_topics(topics, request_timeout=s.publish_timeout_seconds)
        # Poll while waiting: librdkafka hands its log lines (a failed SASL handshake, a refused
        # connection) to the logger only from poll(), and without them a bad setting reads as "Timed out".
        deadline = time.monotonic() + s.publish_timeout_seconds + 5
        while not all(f.done() for f in futures.values()) and time.monotonic() < deadline:
            admin.poll(0.2)
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                if error.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                    # Managed clusters often forbid creating topics; they must exist already then.
                    log.warning("kafka topic %r not created (%s); it must exist already", name, error.str())
                    continue
                raise _translate(error, f"create topic {name!r}") from exc


def _translate(error: KafkaError, action: str) -> LoramillError:
    """A librdkafka error as loramill's: wrong credentials are not transient, the rest is."""
    if error.code() in _AUTH_ERRORS:
        return InvalidInput(
            f"kafka refused to {action}: {error.str()}; check KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, "
            "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and the ACLs",
            code="broker_auth_failed",
        )
    return TransientError(f"kafka could not {action}: {error.str()}")
