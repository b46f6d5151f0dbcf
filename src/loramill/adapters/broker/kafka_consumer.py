"""The worker's Kafka consumer: one background thread polls, whatever the jobs do meanwhile.

Why a thread of its own (aiokafka #848): a job longer than ``max.poll.interval.ms``
makes a consumer that stops polling leave its group, its partitions move, the job is delivered again
and loops forever. So the poll loop never stops: as soon as a message is handed out its partition is
paused (no more messages are fetched from it, librdkafka drops what it had prefetched), and polling
goes on, keeping the consumer in the group for as long as the job takes. A confluent-kafka consumer is
used from one thread only, so ``commit`` / ``give_back`` are commands the loop runs between polls.

At most one message per partition is in flight, which also keeps per-partition (per-task) order.

Settling is on the path of every job, so while messages are held the loop polls in short slices: an
ack waits for the current poll to return. Settling still seeks before it resumes (see ``_settle``).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from loramill.errors import TransientError

log = logging.getLogger(__name__)


@dataclass
class HeldMessage:
    """A job message fetched from one partition; that partition stays paused until it is settled."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    lost: bool = False  # set when its partition is revoked: committing it would be wrong now
    seq: int = 0  # tells apart two deliveries of the same offset (a redelivery after revocation)
    held_at: float = 0.0  # time.monotonic() when it was handed out

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def delivery_id(self) -> str:
        return f"{self.position}#{self.seq}"


class JobConsumer:
    """Owns a subscribed confluent-kafka ``Consumer`` and the only thread that touches it."""

    def __init__(self, config: dict[str, Any], topic: str, *, cooperative: bool, poll_seconds: float) -> None:
        self._config = {**config, "logger": logging.getLogger("loramill.kafka.librdkafka")}
        self._topic = topic
        self._cooperative = cooperative
        self._poll_seconds = poll_seconds
        self._inbox: queue.Queue[HeldMessage] = queue.Queue()
        self._commands: queue.Queue[tuple[Callable[[Consumer], Any], Future[Any]]] = queue.Queue()
        # Only the poll thread reads or writes these two.
        self._held: dict[int, HeldMessage] = {}
        self._returned: set[tuple[int, int]] = set()
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"loramill-kafka-poll[{topic}]", daemon=True)

    # -- called from worker threads -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def next(self, timeout: float) -> HeldMessage | None:
        """The next message nobody else holds, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._raise_if_failed()
            try:
                held = self._inbox.get(timeout=max(0.0, min(deadline - time.monotonic(), 0.5)))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None
                continue
            if not held.lost:  # revoked while waiting in the inbox: its new owner gets it
                return held

    def commit(self, held: HeldMessage, timeout: float) -> bool:
        """Commit past ``held`` and resume its partition; ``False`` if the partition was revoked meanwhile."""
        return bool(self._call(lambda c: self._settle(c, held, held.offset + 1, commit=True), timeout))

    def give_back(self, held: HeldMessage, timeout: float) -> bool:
        """Rewind to ``held`` and resume, so it is fetched again; ``False`` if already revoked."""
        return bool(self._call(lambda c: self._settle(c, held, held.offset, commit=False), timeout))

    def close(self, timeout: float = 30.0) -> None:
        """Leave the group; uncommitted messages go to whoever gets the partitions next."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the poll thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        consumer: Consumer | None = None
        try:
            consumer = Consumer(self._config)
            consumer.subscribe(
                [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            while not self._stop.is_set():
                self._run_commands(consumer)
                message = consumer.poll(self._poll_timeout())
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    self._on_error(error)
                    continue
                self._hold(consumer, message)
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised to the caller of next()/commit()
            self._failure = exc
            log.error("kafka poll loop stopped: %s", exc)
        finally:
            self._fail_pending_commands()
            if consumer is not None:
                try:
                    consumer.close()
                except KafkaException as exc:
                    log.warning("kafka consumer close failed: %s", exc)

    def _hold(self, consumer: Consumer, message: Message) -> None:
        # A consumed message always has both; the stubs allow None for produced ones.
        partition, offset = cast(int, message.partition()), cast(int, message.offset())
        if partition in self._held:
            # Fetched just before the pause took effect; settling the held message seeks explicitly,
            # so this one is fetched again then.
            return
        consumer.pause([TopicPartition(self._topic, partition)])
        key = message.key()
        held = HeldMessage(
            topic=self._topic,
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
            value=message.value() or b"",
            headers=_headers(message),
            redelivered=(partition, offset) in self._returned,
            seq=next(self._seq),
            held_at=time.monotonic(),
        )
        self._returned.discard((partition, offset))
        self._held[partition] = held
        self._inbox.put(held)

    def _settle(self, consumer: Consumer, held: HeldMessage, position: int, *, commit: bool) -> bool:
        if held.lost or self._held.get(held.partition) is not held:
            return False
        tp = TopicPartition(self._topic, held.partition, position)
        if commit:
            consumer.commit(offsets=[tp], asynchronous=False)
        else:
            self._returned.add((held.partition, held.offset))
        # Seek explicitly: resume() alone continues after the last message handed to us, which
        # would skip the message on a give-back. On an ack the position is usually right already, but
        # resuming without the seek was measured to stall: with two workers (8 partitions each) every
        # eighth job waited ~1 s — most likely librdkafka's fetch back-off, which a seek resets.
        consumer.seek(tp)
        consumer.resume([TopicPartition(self._topic, held.partition)])
        del self._held[held.partition]
        return True

    def _poll_timeout(self) -> float:
        """How long the next poll may wait. A settle command runs only once the poll returns, so while
        messages are held the wait is a twentieth of the oldest one's age (its ack waits ~5% of its job's
        time, a few ms for a quick generation), at least 1 ms and at most ``poll_seconds``."""
        if not self._held:
            return self._poll_seconds
        oldest = min(h.held_at for h in self._held.values())
        return min(self._poll_seconds, max(0.001, (time.monotonic() - oldest) / 20))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        # A partition that comes back still holding work must stay paused; one we paused before a
        # revocation must not stay paused forever.
        held = [tp for tp in partitions if tp.partition in self._held]
        free = [tp for tp in partitions if tp.partition not in self._held]
        if held:
            consumer.pause(held)
        if free:
            consumer.resume(free)
        log.info("kafka partitions assigned: %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            held = self._held.pop(tp.partition, None)
            if held is None:
                continue
            held.lost = True
            self._returned.add((held.partition, held.offset))
            log.warning(
                "kafka partition %s revoked while task %s was held; it will be delivered again",
                tp.partition,
                held.key,
                extra={"task_id": held.key},
            )
        log.info("kafka partitions revoked: %s", sorted(tp.partition for tp in partitions))

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        # Transport errors, missing topics while they are being created: librdkafka retries them.
        log.warning("kafka consumer: %s", error.str())

    def _run_commands(self, consumer: Consumer) -> None:
        while True:
            try:
                command, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(command(consumer))
            except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(exc)

    def _call(self, command: Callable[[Consumer], Any], timeout: float) -> Any:
        self._raise_if_failed()
        future: Future[Any] = Future()
        self._commands.put((command, future))
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TransientError(f"kafka consumer did not answer within {timeout:.0f}s") from None
        except KafkaException as exc:
            raise TransientError(f"kafka consumer: {exc.args[0].str()}") from exc

    def _fail_pending_commands(self) -> None:
        while True:
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(TransientError("kafka consumer is closed"))

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise TransientError(f"kafka consumer stopped: {self._failure}") from self._failure
        if self._stop.is_set():
            raise TransientError("kafka consumer is closed")


def _headers(message: Message) -> dict[str, Any]:
    """Kafka headers as a dict; values decoded as UTF-8 text where they are text."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    result: dict[str, Any] = {}
    for name, value in pairs:
        if isinstance(value, bytes):
            try:
                result[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                result[name] = value
        else:
            result[name] = value
    return result
