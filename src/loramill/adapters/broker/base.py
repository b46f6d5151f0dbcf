"""The broker port: how jobs reach workers and events reach clients, whatever carries them.

Three adapters implement it (``sql``, ``kafka``, ``rabbitmq``); the worker and the gateway see only
this interface. The port is synchronous on purpose: the worker runs the engine in its own thread and
each adapter keeps its connection alive on its own (lease heartbeat, paused Kafka partition with a
live poll loop, AMQP I/O loop in a background thread), so a two-hour training never starves a
heartbeat.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from loramill.errors import InvalidInput


@dataclass
class Delivery:
    """One job message handed to a worker. Held until ``ack``, ``nack`` or ``dead_letter``."""

    body: bytes
    delivery_id: str
    redelivered: bool = False
    headers: dict[str, Any] = field(default_factory=dict)


class Broker(ABC):
    """Publish jobs and events; consume jobs with explicit acknowledgement."""

    name: str = "broker"

    @abstractmethod
    def publish_job(self, body: bytes, *, task_id: str, priority: int = 0) -> None:
        """Put a job on the input topic / queue."""

    @abstractmethod
    def publish_event(self, body: bytes, *, task_id: str) -> None:
        """Put a status or result event on the output topic / queue."""

    def publish_progress(self, body: bytes, *, task_id: str, topic: str) -> None:
        """Put a ``processing`` event on ``topic`` (``LORAMILL_PROGRESS_TOPIC``), apart from the results on
        the output topic / queue: clients of the source systems read every output message as a result."""
        raise InvalidInput(f"the {self.name} broker cannot publish progress on a topic of its own; unset "
                           "LORAMILL_PROGRESS_TOPIC", code="invalid_setting", field="LORAMILL_PROGRESS_TOPIC")

    @abstractmethod
    def receive(self, timeout: float) -> Delivery | None:
        """Wait up to ``timeout`` seconds for the next job; ``None`` when there is none.

        While a delivery is held the adapter keeps it owned by this worker (lease heartbeat,
        paused partition, unacked AMQP delivery) without the caller doing anything.
        """

    @abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """The job's outcome is stored: never deliver it again."""

    @abstractmethod
    def nack(self, delivery: Delivery, *, requeue: bool = True) -> None:
        """Give the job back (``requeue=True``: another worker, or this one later, gets it again)."""

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a message that is not a job (or can never succeed) aside, with the reason."""

    def consume_events(self, timeout: float) -> list[bytes]:
        """Read events from the output topic / queue (for clients and tests); optional."""
        raise NotImplementedError(f"{self.name} broker does not expose event consumption")

    def queue_depth(self) -> int | None:
        """Jobs waiting, where the broker can tell (for metrics and backpressure)."""
        return None

    def close(self) -> None:  # noqa: B027  (optional hook: adapters without connections need nothing)
        """Release connections; held deliveries return to the queue."""
