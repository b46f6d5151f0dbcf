"""Settings of the RabbitMQ adapter (``LORAMILL_RABBITMQ_*``) and the job queue's arguments.

The queue arguments are part of the queue's identity on the server: declaring an existing queue
with different ones fails with PRECONDITION_FAILED, so they are built in one place only.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from loramill.errors import InvalidInput

DAY_MS = 24 * 60 * 60 * 1000


class RabbitMQSettings(BaseSettings):
    """RabbitMQ adapter settings, from ``LORAMILL_RABBITMQ_*`` or keywords."""

    # extra="forbid": a misspelt keyword to make_broker("rabbitmq", ...) fails instead of being ignored.
    model_config = SettingsConfigDict(env_prefix="LORAMILL_RABBITMQ_", extra="forbid")

    # A SecretStr because the URL carries the password; logs show redacted_url() only.
    url: SecretStr = SecretStr("amqp://guest:guest@localhost:5672/")
    input_queue: str = "loramill.jobs"
    output_queue: str = Field("loramill.events", description="queue status and result events go to; empty: none")
    plain_queue: bool = Field(False, description="declare the job queue with no arguments, as clients that "
                              "declare it themselves (durable, nothing else) do; no priorities or consumer timeout")
    dead_letter_exchange: str = "loramill.dead"
    dead_letter_queue: str | None = Field(None, description="Default: '<input_queue>.dead'.")
    max_priority: int = Field(10, ge=1, le=255, description="x-max-priority of the job queue.")
    # RabbitMQ closes the channel of a delivery unacked for longer than this (default 30 min):
    # it must exceed the longest job. Honoured by RabbitMQ >= 3.12 (and 3.11.15); older servers
    # only read consumer_timeout from rabbitmq.conf.
    consumer_timeout_ms: int = Field(DAY_MS, ge=1, description="x-consumer-timeout of the job queue.")
    prefetch_count: int = Field(1, ge=1, description="Most jobs one worker holds at once; 1 = one job at a time "
                                "(the channel's prefetch itself follows receive(): see RabbitMQBroker.receive).")
    heartbeat_seconds: int = Field(60, ge=0)
    reconnect_interval_seconds: float = Field(5.0, gt=0)
    operation_timeout_seconds: float = Field(30.0, gt=0, description="Connect, publish (confirm), ack.")

    @property
    def dead_letters(self) -> str:
        return self.dead_letter_queue or f"{self.input_queue}.dead"

    def redacted_url(self) -> str:
        """The URL with its password masked, for logs and error messages."""
        url = URL(self.url.get_secret_value())
        return str(url.with_password("******")) if url.password else str(url)


def load_settings(settings: RabbitMQSettings | None = None, **overrides: Any) -> RabbitMQSettings:
    """``settings`` as given, or built from the environment and ``overrides``; errors name the variable."""
    if settings is not None and not overrides:
        return settings
    values = {**settings.model_dump(), **overrides} if settings is not None else overrides
    try:
        return RabbitMQSettings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"LORAMILL_RABBITMQ_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"RabbitMQ settings are invalid: {problems}", field="rabbitmq") from None


def job_queue_arguments(settings: RabbitMQSettings) -> dict[str, Any]:
    """Arguments of the durable job queue: dead-letter exchange, priorities, consumer timeout."""
    return {
        "x-dead-letter-exchange": settings.dead_letter_exchange,
        # Rejected jobs land in the dead-letter queue bound with the job queue's name.
        "x-dead-letter-routing-key": settings.input_queue,
        "x-max-priority": settings.max_priority,
        # An integer: a string value is silently ignored by the server (rabbitmq-server #9914).
        "x-consumer-timeout": int(settings.consumer_timeout_ms),
    }
