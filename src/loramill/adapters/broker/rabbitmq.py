"""The ``rabbitmq`` broker: durable priority queue, manual ack, dead-letter exchange, via aio-pika.

What long jobs need from RabbitMQ (aio-pika #342): the connection lives on an event loop in the
adapter's own thread (``LoopThread``), so heartbeats go on while the worker's thread trains for
hours; a prefetch that follows the worker (``receive``), so a busy worker holds only its own jobs;
the queue's ``x-consumer-timeout`` above the longest job; ack only after the result is stored.
``connect_robust`` reconnects and restores the consumer after a broker restart; jobs are persistent
and published with confirms, so a restart loses none. A delivery whose channel died is requeued by
the server: acking it later is a no-op with a warning, and the job comes again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelInvalidStateError

from loramill.adapters.broker.base import Broker, Delivery
from loramill.adapters.broker.loop_thread import LoopThread
from loramill.adapters.broker.rabbitmq_config import RabbitMQSettings, job_queue_arguments, load_settings
from loramill.domain.fairness import FAIR_CANDIDATES, Candidate, ServedLog, choose, user_of
from loramill.errors import InvalidInput, LoramillError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")

REASON_HEADER = "x-loramill-reason"
ORIGIN_HEADER = "x-loramill-origin"  # the queue a dead letter came from
# When loramill queued the job (ns since the epoch): the order of arrival, which requeues can blur.
QUEUED_AT_HEADER = "x-loramill-queued-at"
# Once the fair window opens, RabbitMQ pushes the jobs the queue said it holds back to back (64 in ~4 ms
# on one host); if none comes for GATHER_SECONDS, another worker took the rest. After those, the gathering
# goes on while more come within TRAILING_SECONDS of each other.
GATHER_SECONDS = 0.2
TRAILING_SECONDS = 0.005


class RabbitMQBroker(Broker):
    """Broker port on RabbitMQ. ``RabbitMQBroker()`` reads ``LORAMILL_RABBITMQ_*``; keywords override."""

    name = "rabbitmq"

    def __init__(self, settings: RabbitMQSettings | None = None, **overrides: Any) -> None:
        self.settings = load_settings(settings, **overrides)
        self._loop = LoopThread(f"loramill-amqp[{self.settings.input_queue}]")
        self._inbox: queue.Queue[AbstractIncomingMessage] = queue.Queue()
        self._held: dict[str, AbstractIncomingMessage] = {}
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified when a held delivery is settled
        self._served = ServedLog()
        self._prefetch = 1
        self._window_open = False
        self._flood_user: str | None = None  # the one user a full window held, and how many jobs to take
        self._flood_left = 0  # before another user's job can be within the window (see receive)
        self._alone: tuple[str | None, int] | None = None  # the user whose jobs were all the queue held, how many
        self._seq = itertools.count(1)
        self._consuming = False
        self._closed = False
        self._progress_queues: set[str] = set()  # declared already
        try:
            self._call(self._open(), "connect")
        except BaseException:
            self._loop.stop()
            raise

    async def _open(self) -> None:
        s = self.settings
        self._connection: AbstractRobustConnection = await aio_pika.connect_robust(
            s.url.get_secret_value(),
            heartbeat=s.heartbeat_seconds,
            reconnect_interval=s.reconnect_interval_seconds,
            timeout=s.operation_timeout_seconds,
            client_properties={"connection_name": f"loramill {s.input_queue}"},
        )
        self._warn_if_consumer_timeout_ignored()
        # Publishing and consuming on separate channels: a publish error closes only its channel,
        # never the one holding a running job's delivery.
        self._publisher: AbstractRobustChannel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._consumer: AbstractRobustChannel = await self._connection.channel()
        # Channel-wide, so receive() can open and close its look-ahead window (see there).
        await self._consumer.set_qos(prefetch_count=self._prefetch, global_=True)
        self._dead_exchange = await self._publisher.declare_exchange(
            s.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead = await self._publisher.declare_queue(s.dead_letters, durable=True)
        await dead.bind(self._dead_exchange, routing_key=s.input_queue)
        if s.output_queue:
            self._events = await self._publisher.declare_queue(s.output_queue, durable=True)
        self._jobs = await self._declare_jobs_queue()

    async def _declare_jobs_queue(self) -> aio_pika.abc.AbstractRobustQueue:
        """The job queue, with loramill's arguments unless it must be plain or already is.

        A queue's arguments are part of its identity: declaring it with others than it was made with fails
        (PRECONDITION_FAILED) and closes the channel. Clients that declare the queue plain themselves
        (Tsuki's) would fail the same way if loramill made it first with arguments, hence
        ``plain_queue``; and a queue someone already made plain is used as it is.
        """
        s = self.settings
        if s.plain_queue:
            return await self._consumer.declare_queue(s.input_queue, durable=True)
        probe = await self._connection.channel()  # a failed declare closes its channel: not the consumer's
        try:
            await probe.declare_queue(s.input_queue, durable=True, arguments=job_queue_arguments(s))
            await probe.close()
        except aiormq.exceptions.ChannelPreconditionFailed:
            # Made plain by a client? Then a plain declare matches; if that fails too, the queue has other
            # arguments of its own, and the first declare's error (naming the setting) is the one to raise.
            plain = await self._connection.channel()
            await plain.declare_queue(s.input_queue, durable=True)
            await plain.close()
            log.warning("queue %r was declared plain (no arguments) by someone else: using it as it is, so "
                        "without priorities, consumer timeout or server-side dead-lettering; set "
                        "LORAMILL_RABBITMQ_PLAIN_QUEUE=true to make this the intent", s.input_queue)
            return await self._consumer.declare_queue(s.input_queue, durable=True)
        return await self._consumer.declare_queue(s.input_queue, durable=True, arguments=job_queue_arguments(s))

    def _warn_if_consumer_timeout_ignored(self) -> None:
        transport = self._connection.transport
        version = transport.connection.server_properties.get("version", "") if transport else ""
        text = version.decode() if isinstance(version, bytes) else str(version)
        numbers = tuple(int(p) for p in text.split(".")[:2] if p.isdigit())
        if numbers and numbers < (3, 12):
            log.warning(
                "RabbitMQ %s ignores x-consumer-timeout: set consumer_timeout in rabbitmq.conf above the "
                "longest job, or a long job's channel is closed after 30 minutes",
                text,
            )

    # -- publishing ------------------------------------------------------------------------------

    def publish_job(self, body: bytes, *, task_id: str, priority: int = 0) -> None:
        message = aio_pika.Message(
            body,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=max(0, min(int(priority), self.settings.max_priority)),
            message_id=task_id,
            content_type="application/json",
            headers={"taskId": task_id, QUEUED_AT_HEADER: time.time_ns()},
        )
        self._call(self._publish(lambda: self._publisher.default_exchange, message, self.settings.input_queue),
                   "publish a job")

    def publish_event(self, body: bytes, *, task_id: str) -> None:
        if not self.settings.output_queue:
            return  # no output queue (LORAMILL_PRESET=tsuki: its clients hear from the status callback)
        message = aio_pika.Message(
            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=task_id,
            content_type="application/json", headers={"taskId": task_id},
        )
        self._call(self._publish(lambda: self._publisher.default_exchange, message, self.settings.output_queue),
                   "publish an event")

    def publish_progress(self, body: bytes, *, task_id: str, topic: str) -> None:
        message = aio_pika.Message(
            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=task_id,
            content_type="application/json", headers={"taskId": task_id},
        )

        async def declare_and_publish() -> None:
            if topic not in self._progress_queues:
                await self._publisher.declare_queue(topic, durable=True)
                self._progress_queues.add(topic)
            await self._publish(lambda: self._publisher.default_exchange, message, topic)

        self._call(declare_and_publish(), "publish progress")

    async def _publish(self, exchange: Callable[[], aio_pika.abc.AbstractExchange], message: aio_pika.Message,
                       routing_key: str) -> None:
        """Publish with a broker confirm; while the connection is being restored, wait and retry."""
        deadline = time.monotonic() + self.settings.operation_timeout_seconds
        while True:
            try:
                await exchange().publish(message, routing_key=routing_key, mandatory=True)
                return
            except (ChannelInvalidStateError, aiormq.exceptions.ConnectionClosed, ConnectionError) as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                log.info("RabbitMQ unavailable (%s); publishing again once reconnected", type(exc).__name__)
                await asyncio.wait_for(self._publisher.ready(), remaining)

    # -- consuming jobs --------------------------------------------------------------------------

    def receive(self, timeout: float) -> Delivery | None:
        """The next job, chosen fairly between users (``loramill.domain.fairness``) among the jobs ready.

        The channel's prefetch follows what the worker does: while it waits, one job may be pushed to it
        (it wakes at once); when that job's user was served lately, the window opens to
        ``FAIR_CANDIDATES`` jobs, the fair choice is kept and the others go back to the queue, each to its
        old place (they come again with ``redelivered`` set). Between receives nothing is pushed beyond
        what the worker holds, so a worker busy with a long training hoards no job an idle one could run.

        When a full window held one user's jobs only, and the queue holds N more behind them, no other
        user's job can come within the window before N more jobs are taken: until then (N divided among
        the queue's consumers) the worker takes the head as it comes, without looking, so one user's long
        flood costs a look once per window, not one per job. When a look saw the whole queue and it was one
        user's (and this worker its only consumer), the next receive only asks the queue how many jobs it
        holds: one fewer means nothing was queued since, and the head is taken without looking.
        """
        self._start_consuming()
        deadline = time.monotonic() + timeout
        # 1. Within LORAMILL_RABBITMQ_PREFETCH_COUNT deliveries held (an ack makes room)
        with self._room:
            while len(self._held) >= self.settings.prefetch_count:
                if not self._room.wait(max(0.0, deadline - time.monotonic())):
                    return None
        chosen: AbstractIncomingMessage | None = None
        others: list[AbstractIncomingMessage] = []
        try:
            # 2. The first job pushed to this worker
            self._limit(len(self._held) + 1)
            first = self._next_message(deadline)
            if first is None:
                return None
            # 3. Its user served lately? Then look at the jobs behind it, and choose
            served = self._served.counts()
            user = user_of(first.body)
            candidates = [first]
            if user is not None and user == self._flood_user and self._flood_left > 0:
                self._flood_left -= 1  # only this user's jobs can be within the window (see above)
            elif served.get(user or "", 0) > 0 and not self._nothing_new(user):
                behind, consumers = self._look_ahead(candidates)
                self._alone = None
                if all(user_of(m.body) == user for m in candidates):
                    if len(candidates) >= FAIR_CANDIDATES:
                        self._flood_user, self._flood_left = user, behind // consumers
                    elif consumers == 1:
                        self._alone = (user, len(candidates) - 1)
            candidates = _in_arrival_order(candidates)
            index = choose([Candidate(user_of(m.body), int(m.priority or 0)) for m in candidates], served)
            chosen = candidates[index]
            others = candidates[:index] + candidates[index + 1:]
        finally:
            # 4. Close the window before handing back what was not chosen, so nothing is pushed again
            if self._window_open or others:
                self._limit(len(self._held) + (1 if chosen is not None else 0))
                others += self._drain_inbox()
                if others:
                    self._call(_requeue(others), "hand back the jobs not chosen")
        delivery_id = f"{chosen.delivery_tag}#{next(self._seq)}"
        with self._lock:
            self._held[delivery_id] = chosen
        self._served.record(user_of(chosen.body))
        return Delivery(
            body=chosen.body, delivery_id=delivery_id, redelivered=bool(chosen.redelivered),
            headers=_plain_headers(chosen.headers),
        )

    def _nothing_new(self, user: str | None) -> bool:
        """Whether the queue is still only ``user``'s jobs the last look saw, less the one taken (see receive)."""
        if self._alone is None or self._alone[0] != user:
            return False
        ready, consumers = self._call(self._depth(), "read the queue depth")
        left = self._alone[1] - 1
        self._alone = (user, left) if consumers == 1 and ready == left else None
        return self._alone is not None

    def _look_ahead(self, candidates: list[AbstractIncomingMessage]) -> tuple[int, int]:
        """Open the window and fill ``candidates`` with the jobs it brings; (jobs ready behind it, consumers).

        Counted first: the queue says how many jobs it holds ready before the window opens, and that many
        come (up to the window), however slowly. Then, since the count can lag behind requeues the queue is
        still processing, whatever else comes back to back (``TRAILING_SECONDS`` apart).
        """
        candidates += self._drain_inbox()
        ready, consumers = self._call(self._depth(), "read the queue depth")
        self._limit(len(self._held) + FAIR_CANDIDATES)
        expected = min(ready, FAIR_CANDIDATES - len(candidates))
        behind = ready - expected
        while len(candidates) < FAIR_CANDIDATES:
            wait = GATHER_SECONDS if expected > 0 else TRAILING_SECONDS
            pushed = self._next_message(time.monotonic() + wait)
            if pushed is None:
                break  # all came (or another worker took the rest meanwhile)
            candidates.append(pushed)
            expected -= 1
        return behind, consumers

    async def _depth(self) -> tuple[int, int]:
        """Jobs ready in the queue, and its consumers."""
        declared = await self._jobs.declare()
        return int(declared.message_count or 0), max(1, int(declared.consumer_count or 1))

    def _next_message(self, deadline: float) -> AbstractIncomingMessage | None:
        """The next job pushed to this worker whose channel is alive, waiting until ``deadline``."""
        while True:
            try:
                message = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if not _channel_gone(message):
                return message  # one delivered on a channel that has died was requeued by the server

    def _drain_inbox(self) -> list[AbstractIncomingMessage]:
        found: list[AbstractIncomingMessage] = []
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return found
            if not _channel_gone(message):
                found.append(message)

    def _limit(self, count: int) -> None:
        """Let RabbitMQ push at most ``count`` unacked jobs to this worker (``basic.qos``, channel-wide)."""
        count = max(1, count)  # 0 would mean "no limit"
        if count != self._prefetch:
            self._call(self._consumer.set_qos(prefetch_count=count, global_=True), "set the prefetch")
            self._prefetch = count
        self._window_open = count > len(self._held) + 1

    def _start_consuming(self) -> None:
        with self._lock:
            if self._consuming:
                return
            self._consuming = True

        async def on_message(message: AbstractIncomingMessage) -> None:
            self._inbox.put(message)

        # Started on first receive() only: a gateway that just publishes must not take jobs.
        self._call(self._jobs.consume(on_message), "start consuming")

    def ack(self, delivery: Delivery) -> None:
        self._settle(delivery, "ack", lambda message: message.ack())

    def nack(self, delivery: Delivery, *, requeue: bool = True) -> None:
        if not requeue:
            # Through dead_letter, so the reason travels with it like on the other brokers.
            self.dead_letter(delivery, "rejected by the worker without requeue")
            return
        self._settle(delivery, "nack", lambda message: message.nack(requeue=True))

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        message = self._held.get(delivery.delivery_id)
        if message is None or _channel_gone(message):
            self._settle(delivery, "dead_letter", lambda m: m.ack())  # warns and forgets
            return
        copy = aio_pika.Message(
            message.body,
            headers={**(message.headers or {}), REASON_HEADER: reason, ORIGIN_HEADER: self.settings.input_queue},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type=message.content_type,
            message_id=message.message_id,
        )
        # Published (and confirmed) first, acked second: a failure between leaves a duplicate dead
        # letter, never a lost job.
        self._call(self._publish(lambda: self._dead_exchange, copy, self.settings.input_queue),
                   "publish a dead letter")
        log.warning("dead-lettered %s: %s", message.message_id or delivery.delivery_id, reason,
                    extra={"task_id": message.message_id})
        self._settle(delivery, "dead_letter", lambda m: m.ack())

    def _settle(self, delivery: Delivery, what: str,
                action: Callable[[AbstractIncomingMessage], Awaitable[None]]) -> None:
        with self._lock:
            message = self._held.pop(delivery.delivery_id, None)
            self._room.notify_all()

        async def settle() -> bool:
            if message is None:
                return False
            try:
                await action(message)
                return True
            except CONNECTION_EXCEPTIONS:
                return False  # its channel is gone; the server requeued the delivery

        if not self._call(settle(), what):
            log.warning("RabbitMQ %s of %s ignored: its channel closed, so it will be delivered again",
                        what, delivery.delivery_id)

    # -- events, depth, lifecycle ------------------------------------------------------------------

    def consume_events(self, timeout: float) -> list[bytes]:
        """Events from the output queue: waits up to ``timeout`` for the first, then takes what is there."""
        if not self.settings.output_queue:
            return []

        async def drain() -> list[bytes]:
            bodies: list[bytes] = []
            deadline = time.monotonic() + timeout
            while True:
                message = await self._events.get(no_ack=True, fail=False, timeout=timeout + 5)
                if message is not None:
                    bodies.append(message.body)
                elif bodies or time.monotonic() >= deadline:
                    return bodies
                else:
                    await asyncio.sleep(0.05)

        return self._call(drain(), "read events", timeout + self.settings.operation_timeout_seconds)

    def queue_depth(self) -> int | None:
        """Jobs ready in the input queue (not counting the ones workers hold)."""
        return self._call(self._depth(), "read the queue depth")[0]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Unacked deliveries go back to the queue when the channel closes.
            self._call(self._connection.close(), "close")
        except LoramillError as exc:
            log.warning("RabbitMQ close: %s", exc.message)
        finally:
            self._loop.stop()

    def _call(self, coroutine: Coroutine[Any, Any, T], action: str, timeout: float | None = None) -> T:
        """Run ``coroutine`` on the I/O loop; AMQP errors come out as loramill's."""
        timeout = self.settings.operation_timeout_seconds + 5 if timeout is None else timeout
        try:
            return self._loop.run(coroutine, timeout)
        except TimeoutError:
            raise TransientError(f"RabbitMQ did not {action} within {timeout:.0f}s") from None
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise InvalidInput(
                f"RabbitMQ refused to {action}: {self._scrub(exc)}. A queue with other arguments exists: "
                "delete it or choose another LORAMILL_RABBITMQ_INPUT_QUEUE",
                field="LORAMILL_RABBITMQ_INPUT_QUEUE",
            ) from None
        except (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.ChannelAccessRefused) as exc:
            raise InvalidInput(
                f"RabbitMQ refused to {action}: {self._scrub(exc)}; check the user, password and vhost in "
                f"LORAMILL_RABBITMQ_URL ({self.settings.redacted_url()})",
                code="broker_auth_failed",
                field="LORAMILL_RABBITMQ_URL",
            ) from None
        except CONNECTION_EXCEPTIONS as exc:
            raise TransientError(f"RabbitMQ could not {action}: {type(exc).__name__}: {self._scrub(exc)}") from None

    def _scrub(self, exc: BaseException) -> str:
        """``exc``'s text without the URL's password, whatever library put it there."""
        text = str(exc)
        url = self.settings.url.get_secret_value()
        password = aio_pika.connection.make_url(url).password
        return text.replace(url, self.settings.redacted_url()).replace(password, "******") if password else text


def _in_arrival_order(messages: list[AbstractIncomingMessage]) -> list[AbstractIncomingMessage]:
    """``messages`` by priority, then by when they were queued, where every one says (loramill's do); else as
    delivered. RabbitMQ requeues a message to its old place only "if possible", so after the look-aheads'
    requeues the delivery order can differ from the order of arrival."""
    stamps = [(m.headers or {}).get(QUEUED_AT_HEADER) for m in messages]
    if len(messages) < 2 or not all(isinstance(s, int) for s in stamps):
        return messages
    order = sorted(range(len(messages)), key=lambda i: (-int(messages[i].priority or 0), stamps[i]))
    return [messages[i] for i in order]


async def _requeue(messages: list[AbstractIncomingMessage]) -> None:
    """Give ``messages`` back to their queue, each to its old place (a gone channel requeued it already)."""
    for message in messages:
        try:
            await message.nack(requeue=True)
        except CONNECTION_EXCEPTIONS:
            pass


def _channel_gone(message: AbstractIncomingMessage) -> bool:
    try:
        return bool(message.channel.is_closed)
    except ChannelInvalidStateError:
        return True


def _plain_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """AMQP headers with byte strings decoded where they are text."""
    plain: dict[str, Any] = {}
    for name, value in (headers or {}).items():
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                pass
        plain[name] = value
    return plain
