"""Settings of the Kafka adapter and the librdkafka configuration built from them.

Selfix's deployments set ``KAFKA_*`` variables (docs/contracts.md, "Environment variables") and must work unchanged, so those fields
read exactly those names; loramill's own knobs use the ``LORAMILL_KAFKA_`` prefix. The SASL password
is a ``SecretStr``: it leaves this module only inside the dict handed to confluent-kafka, never in a
repr, a log line or an error message.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loramill.errors import InvalidInput

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
# Mechanisms that authenticate with a username and password taken from the environment.
PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaSettings(BaseSettings):
    """Kafka adapter settings: Selfix's ``KAFKA_*`` names as they are, plus ``LORAMILL_KAFKA_*``."""

    # extra="forbid": a misspelt keyword to make_broker("kafka", ...) fails instead of being ignored.
    model_config = SettingsConfigDict(env_prefix="LORAMILL_KAFKA_", populate_by_name=True, extra="forbid")

    # Selfix contract (docs/contracts.md): exactly these variable names, no prefix.
    bootstrap_server: str = Field("localhost:9092", validation_alias="KAFKA_BOOTSTRAP_SERVER")
    security_protocol: str = Field("PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL")
    sasl_mechanism: str | None = Field(None, validation_alias="KAFKA_SASL_MECHANISM")
    sasl_username: str | None = Field(None, validation_alias="KAFKA_SASL_USERNAME")
    sasl_password: SecretStr | None = Field(None, validation_alias="KAFKA_SASL_PASSWORD")
    group_id: str = Field("loramill-workers", validation_alias="KAFKA_GROUP_ID")
    topic_input: str = Field("loramill.jobs", validation_alias="KAFKA_TOPIC_INPUT")
    topic_output: str = Field("loramill.events", validation_alias="KAFKA_TOPIC_OUTPUT")

    # loramill's own settings (LORAMILL_KAFKA_*).
    dead_letter_topic: str | None = Field(None, description="Default: '<topic_input>.dlq'.")
    events_group_id: str | None = Field(
        None, description="Group that consume_events() reads the output topic with. Default: '<group_id>.events'."
    )
    client_id: str = "loramill"
    ssl_ca_location: str | None = Field(None, description="CA bundle for SSL / SASL_SSL listeners.")
    # The poll loop keeps polling while a job runs, so the default 5 min is safe even for hour-long jobs.
    max_poll_interval_ms: int = Field(300_000, ge=1)
    # Also how long a group's first join can take: tansu completes it after half of this.
    session_timeout_ms: int = Field(45_000, ge=1)
    heartbeat_interval_ms: int | None = Field(None, ge=1)
    # cooperative-sticky moves only the partitions that must move when a worker joins, so a running
    # job on a partition that stays is not revoked (eager strategies revoke everything each time).
    assignment_strategy: str = "cooperative-sticky"
    poll_seconds: float = Field(0.2, gt=0, description="How long one poll() of the background loop waits.")
    # How long the broker may hold the workers' fetch when the partition has nothing new. Kafka answers
    # as soon as a message arrives, so there this only sets how often an idle worker asks (100/s at 10 ms;
    # raise it for very many workers); some Kafka-protocol brokers (tansu) answer only when it runs out,
    # and librdkafka's 500 ms default then made every job wait 250 ms on average.
    fetch_wait_max_ms: int = Field(10, ge=0, le=300_000)
    publish_timeout_seconds: float = Field(30.0, gt=0)
    create_topics: bool = Field(True, description="Create missing topics (input, output, dead-letter).")
    # A worker holds at most one job per partition (kafka_consumer): the input topic needs as many
    # partitions as all workers together hold jobs (LORAMILL_GENERATION_BATCH batches up to 2 x 8 each).
    topic_partitions: int = Field(16, ge=1)
    topic_replication_factor: int = Field(-1, description="-1: the broker's default.")
    extra_config: dict[str, Any] = Field(
        default_factory=dict, description="More librdkafka properties, as JSON in the environment."
    )

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        protocol = self.security_protocol.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol!r} is not supported; use one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        self.security_protocol = protocol
        if not protocol.startswith("SASL_"):
            return self
        mechanism = (self.sasl_mechanism or "").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r} with {protocol}: set one of {', '.join(SASL_MECHANISMS)}"
            )
        self.sasl_mechanism = mechanism
        if mechanism in PASSWORD_MECHANISMS and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"{protocol} with {mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        return self

    @property
    def dead_letter(self) -> str:
        return self.dead_letter_topic or f"{self.topic_input}.dlq"

    @property
    def events_group(self) -> str:
        return self.events_group_id or f"{self.group_id}.events"

    @property
    def cooperative(self) -> bool:
        return self.assignment_strategy == "cooperative-sticky"


def load_settings(settings: KafkaSettings | None = None, **overrides: Any) -> KafkaSettings:
    """``settings`` as given, or built from the environment and ``overrides``; errors name the variable."""
    if settings is not None and not overrides:
        return settings
    values = {**settings.model_dump(), **overrides} if settings is not None else overrides
    try:
        return KafkaSettings(**values)
    except ValidationError as exc:
        # pydantic's messages never echo SecretStr values, but input_value of other fields could be
        # long; keep only the field and the message.
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"Kafka settings are invalid: {problems}", field="kafka") from None


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """Connection and security properties every Kafka client (producer, consumer, admin) shares."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_server,
        "security.protocol": settings.security_protocol,
        "client.id": settings.client_id,
    }
    if settings.sasl_mechanism and settings.security_protocol.startswith("SASL_"):
        config["sasl.mechanism"] = settings.sasl_mechanism
    if settings.sasl_username:
        config["sasl.username"] = settings.sasl_username
    if settings.sasl_password is not None:
        config["sasl.password"] = settings.sasl_password.get_secret_value()
    if settings.ssl_ca_location:
        config["ssl.ca.location"] = settings.ssl_ca_location
    config.update(settings.extra_config)
    return config


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """A producer that does not lose or duplicate a job when a broker hiccups."""
    config = {
        **client_config(settings),
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": int(settings.publish_timeout_seconds * 1000),
    }
    # Each publish waits for its own delivery report, so there is never a batch to gather: librdkafka's
    # 5 ms linger only delayed every job and event by 5 ms. (extra_config may still set it.)
    if "linger.ms" not in config and "queue.buffering.max.ms" not in config:
        config["linger.ms"] = 0
    return config


def job_consumer_config(settings: KafkaSettings) -> dict[str, Any]:
    """The worker's consumer: offsets are committed by hand, only after the job's result is stored."""
    config = {
        **client_config(settings),
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": settings.assignment_strategy,
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        "session.timeout.ms": settings.session_timeout_ms,
    }
    if settings.heartbeat_interval_ms is not None:
        config["heartbeat.interval.ms"] = settings.heartbeat_interval_ms
    config.setdefault("fetch.wait.max.ms", settings.fetch_wait_max_ms)  # extra_config wins
    return config


def events_consumer_config(settings: KafkaSettings) -> dict[str, Any]:
    """The reader of the output topic (gateway, tests): at-most-once is fine for status events."""
    return {
        **client_config(settings),
        "group.id": settings.events_group,
        "enable.auto.commit": True,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
    }


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` safe to log: secrets replaced by asterisks."""
    return {k: ("**********" if "password" in k or "secret" in k else v) for k, v in config.items()}
