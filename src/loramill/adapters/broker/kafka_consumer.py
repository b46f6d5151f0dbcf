"""The worker's Kafka consumer: one background thread polls, whatever the jobs do meanwhile.

Why a thread of its own (aiokafka #848): a job longer than ``max.poll.interval.ms``
makes a consumer that stops polling leave its group, its partitions move, the job is delivered again
and loops forever. So the poll loop never stops, keeping the consumer in the group for as long as the
jobs take. A confluent-kafka consumer is used from one thread only, so ``commit`` / ``give_back`` are
commands the loop runs between polls.

Fair share between users needs to see past the head of each partition: the loop keeps up to
``FAIR_CANDIDATES`` fetched messages in a look-ahead (every partition paused while it is full), and
``next`` hands out the fair choice among them (``loramill.domain.fairness``), so several messages of one
partition may be in flight at once. A partition's offset is committed up to its oldest message not yet
settled: a crash or a rebalance redelivers what was unsettled, and at worst a few messages settled out of
order; the job store answers such a copy with its stored outcome (the worker republishes it), so nothing
runs twice. One user's jobs (and so one task's messages, which share a partition) keep their order.

Settling is on the path of every job, so while messages are in flight the loop polls in short slices: an
ack waits for the current poll to return.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from bisect import insort
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from loramill.domain.fairness import FAIR_CANDIDATES, Candidate, ServedLog, choose, user_of
from loramill.errors import TransientError

log = logging.getLogger(__name__)


@dataclass
class HeldMessage:
    """A job message fetched from one partition: in the look-ahead, then handed out until it is settled."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    lost: bool = False  # set when its partition is revoked: committing it would be wrong now
    seq: int = 0  # tells apart two deliveries of the same offset (a redelivery after revocation)
    held_at: float = 0.0  # time.monotonic() when it was handed out; 0 while in the look-ahead
    fetched_at: float = 0.0  # time.monotonic() when the poll loop got it
    user: str | None = None  # the userId it names, for the fair choice
    timestamp: int = 0  # the producer's time (ms): the order of arrival across partitions

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def delivery_id(self) -> str:
        return f"{self.position}#{self.seq}"


def _arrival(held: HeldMessage) -> tuple[int, int, int]:
    return held.timestamp, held.partition, held.offset


@dataclass
class _Partition:
    """What the poll thread knows of one assigned partition."""

    pending: dict[int, HeldMessage] = field(default_factory=dict)  # fetched, not settled (look-ahead or out)
    next_offset: int = -1  # the offset after the last one fetched (-1: nothing fetched yet)
    committed: int = -1  # the group's committed offset, as far as this consumer knows
    paused: bool = False  # while it has its share of the look-ahead waiting (see JobConsumer._pace)


class JobConsumer:
    """Owns a subscribed confluent-kafka ``Consumer`` and the only thread that touches it."""

    def __init__(self, config: dict[str, Any], topic: str, *, cooperative: bool, poll_seconds: float,
                 lookahead: int = FAIR_CANDIDATES) -> None:
        self._config = {**config, "logger": logging.getLogger("loramill.kafka.librdkafka")}
        self._topic = topic
        self._cooperative = cooperative
        self._poll_seconds = poll_seconds
        self._lookahead_size = lookahead
        # The look-ahead, in arrival order; shared with the threads that call next().
        self._lookahead: list[HeldMessage] = []
        self._ready = threading.Condition()
        self._served = ServedLog()
        self._commands: queue.Queue[tuple[Callable[[Consumer], Any], Future[Any]]] = queue.Queue()
        # Only the poll thread reads or writes these.
        self._partitions: dict[int, _Partition] = {}
        self._returned: set[tuple[int, int]] = set()
        self._seq = itertools.count(1)
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"loramill-kafka-poll[{topic}]", daemon=True)

    # -- called from worker threads -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def next(self, timeout: float) -> HeldMessage | None:
        """The fair choice among the messages fetched and not handed out, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while True:
                self._raise_if_failed()
                if self._lookahead:
                    served = self._served.counts()
                    held = self._lookahead.pop(choose([Candidate(m.user) for m in self._lookahead], served))
                    held.held_at = time.monotonic()
                    self._served.record(held.user)
                    return held
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._ready.wait(min(remaining, 0.5))

    def commit(self, held: HeldMessage, timeout: float) -> bool:
        """Settle ``held`` as done (committing as far as its partition allows); ``False`` if it was revoked."""
        return bool(self._call(lambda c: self._settle(c, held, commit=True), timeout))

    def give_back(self, held: HeldMessage, timeout: float) -> bool:
        """Put ``held`` back in the look-ahead, in its place, to be handed out again; ``False`` if revoked."""
        return bool(self._call(lambda c: self._settle(c, held, commit=False), timeout))

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
                self._pace(consumer)
                message = consumer.poll(self._poll_timeout())
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    self._on_error(error)
                    continue
                self._hold(message)
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised to the caller of next()/commit()
            self._failure = exc
            log.error("kafka poll loop stopped: %s", exc)
        finally:
            with self._ready:
                self._ready.notify_all()  # a waiting next() raises the failure now
            self._fail_pending_commands()
            if consumer is not None:
                try:
                    consumer.close()
                except KafkaException as exc:
                    log.warning("kafka consumer close failed: %s", exc)

    def _hold(self, message: Message) -> None:
        # A consumed message always has both; the stubs allow None for produced ones.
        partition, offset = cast(int, message.partition()), cast(int, message.offset())
        state = self._partitions.get(partition)
        if state is None or offset < state.next_offset:
            return  # not ours any more, or fetched again after a pause: we have it already
        key = message.key()
        value = message.value() or b""
        held = HeldMessage(
            topic=self._topic,
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
            value=value,
            headers=_headers(message),
            redelivered=(partition, offset) in self._returned,
            seq=next(self._seq),
            user=user_of(value),
            timestamp=max(0, message.timestamp()[1]),
            fetched_at=time.monotonic(),
        )
        self._returned.discard((partition, offset))
        if state.next_offset < 0:
            state.committed = offset  # fetching starts at the group's committed offset
        state.next_offset = offset + 1
        state.pending[offset] = held
        with self._ready:
            insort(self._lookahead, held, key=_arrival)
            self._ready.notify()

    def _pace(self, consumer: Consumer) -> None:
        """Keep the look-ahead near ``lookahead`` messages: once it is full, pause each partition that has
        its share of it waiting; resume one once half its share has been handed out, or the look-ahead is
        half empty. Per partition, not all at once: a resumed partition's first fetch was measured to take
        up to ~0.8 s (tansu), and meanwhile the others keep the look-ahead fed."""
        waiting = {p: sum(1 for held in state.pending.values() if not held.held_at)
                   for p, state in self._partitions.items()}
        total = sum(waiting.values())
        share = max(4, -(-self._lookahead_size // max(1, len(self._partitions))))
        for partition, state in self._partitions.items():
            if not state.paused and total >= self._lookahead_size and waiting[partition] >= share:
                consumer.pause([TopicPartition(self._topic, partition)])
                state.paused = True
            elif state.paused and (waiting[partition] <= share // 2 or total <= self._lookahead_size // 2):
                tp = TopicPartition(self._topic, partition, state.next_offset)
                # Seek explicitly: a resume alone was measured to stall (~1 s every eighth job with two
                # workers), most likely librdkafka's fetch back-off, which a seek resets.
                try:
                    consumer.seek(tp)
                except KafkaException as exc:  # not fetching yet: the resume starts where it should
                    log.debug("kafka seek of partition %s skipped: %s", partition, exc)
                consumer.resume([TopicPartition(self._topic, partition)])
                state.paused = False

    def _settle(self, consumer: Consumer, held: HeldMessage, *, commit: bool) -> bool:
        state = self._partitions.get(held.partition)
        if held.lost or state is None or state.pending.get(held.offset) is not held:
            return False
        if not commit:
            held.redelivered, held.held_at = True, 0.0
            with self._ready:
                insort(self._lookahead, held, key=_arrival)
                self._ready.notify()
            return True
        # Everything before the oldest message still unsettled is done: commit up to it.
        rest = [offset for offset in state.pending if offset != held.offset]
        position = min(rest) if rest else max(state.next_offset, held.offset + 1)
        if position > state.committed:
            consumer.commit(offsets=[TopicPartition(self._topic, held.partition, position)], asynchronous=False)
            state.committed = position
        del state.pending[held.offset]
        return True

    def _poll_timeout(self) -> float:
        """How long the next poll may wait. A settle command runs only once the poll returns, so while
        messages are pending (in the look-ahead, where a worker may take one at any moment, or out) the wait
        is a twentieth of the newest one's age, counted from when it was handed out or else fetched (its ack
        waits ~5% of its job's time, a few ms for a quick generation), at least 1 ms and at most
        ``poll_seconds``."""
        since = [h.held_at or h.fetched_at for state in self._partitions.values() for h in state.pending.values()]
        if not since:
            return self._poll_seconds
        return min(self._poll_seconds, max(0.001, (time.monotonic() - max(since)) / 20))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        for tp in partitions:
            self._partitions.setdefault(tp.partition, _Partition())
        # A new partition fetches (one paused before a revocation must not stay paused forever).
        paused = [tp for tp in partitions if self._partitions[tp.partition].paused]
        fetching = [tp for tp in partitions if not self._partitions[tp.partition].paused]
        if paused:
            consumer.pause(paused)
        if fetching:
            consumer.resume(fetching)
        log.info("kafka partitions assigned: %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            state = self._partitions.pop(tp.partition, None)
            if state is None:
                continue
            with self._ready:
                self._lookahead = [m for m in self._lookahead if m.partition != tp.partition]
            for held in state.pending.values():
                held.lost = True
                self._returned.add((held.partition, held.offset))
                if held.held_at:
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
