"""One place that reads the environment and builds the worker's parts: store, storage, broker, settings.

Each adapter owns its settings class (``StoreSettings``, ``StorageSettings``, ``KafkaSettings``, …) with
its own variable names, Selfix's ``KAFKA_*`` and ``S3_*`` included as they are; this module only
gathers them, registers every secret with the log redactor before anything is logged, and builds.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from loramill.adapters.broker import Broker, make_broker
from loramill.adapters.storage import Storage, StorageSettings, load_storage_settings, make_storage
from loramill.adapters.store import JobStore, StoreSettings
from loramill.errors import InvalidInput
from loramill.jobs.settings import WorkerSettings, load_worker_settings
from loramill.logs import register_environment_secrets, register_secret
from loramill.sources import Choice, choose_base_model, choose_broker, choose_storage, require_base_model

log = logging.getLogger("loramill.config")


@dataclass
class Config:
    """The settings of every part a worker needs."""

    worker: WorkerSettings
    storage: StorageSettings
    store: StoreSettings
    chosen: dict[str, Choice] = field(default_factory=dict)  # broker, storage, base model: value and why

    def log_choices(self) -> None:
        """One start-up line saying which broker, storage and base model are used, and why each."""
        parts = {name: f"{c.value or '-'} ({c.reason})" for name, c in self.chosen.items()}
        log.info("using broker %s, storage %s, base model %s", parts["broker"], parts["storage"],
                 parts["base model"], extra={k.replace(" ", "_"): c.value for k, c in self.chosen.items()})

    def require_worker_ready(self) -> None:
        """Fail at start, naming the variable, where every job would fail (no base model at all)."""
        require_base_model(self.chosen["base model"], self.worker.model_map)


def load_config(**worker_overrides: Any) -> Config:
    """Read every part's settings from the environment (``worker_overrides`` win for the worker's own).

    Broker and storage follow ``loramill.sources``: loramill's own variables, else a source system's.
    """
    register_environment_secrets(os.environ)
    broker = choose_broker(os.environ, worker_overrides.pop("broker", None))
    storage = choose_storage(os.environ)
    worker = load_worker_settings(**worker_overrides, broker=broker.value)
    storage_settings = load_storage_settings()
    storage_settings.backend = storage.value or "local"
    chosen = {"broker": broker, "storage": storage,
              "base model": choose_base_model(worker.base_model, worker.model_map)}
    return Config(worker=worker, storage=storage_settings, store=StoreSettings(), chosen=chosen)


def open_store(config: Config) -> JobStore:
    """The job store ``LORAMILL_DATABASE_URL`` names (migrated to the current schema)."""
    return JobStore.from_settings(config.store)


def open_storage(config: Config) -> Storage:
    """Local folder or S3, as ``LORAMILL_STORAGE`` / ``S3_*`` say."""
    return make_storage(config.storage)


def open_broker(config: Config, store: JobStore) -> Broker:
    """The broker ``LORAMILL_BROKER`` names; the ``sql`` broker shares the job store's database."""
    kind = config.worker.broker
    progress = config.worker.progress_topic
    if kind == "sql":
        retention = config.worker.sql_event_retention_seconds
        return make_broker("sql", store_or_url=store, lease_seconds=config.worker.sql_lease_seconds,
                           event_retention_seconds=retention or None)
    if kind == "kafka":
        from loramill.adapters.broker.kafka_config import load_settings as kafka_settings

        kafka = kafka_settings()
        if kafka.sasl_password is not None:
            register_secret(kafka.sasl_password)
        _check_distinct("KAFKA_TOPIC_INPUT", kafka.topic_input, "KAFKA_TOPIC_OUTPUT", kafka.topic_output)
        _check_distinct("KAFKA_TOPIC_INPUT", kafka.topic_input, "LORAMILL_PROGRESS_TOPIC", progress)
        broker = make_broker("kafka", settings=kafka)
        if progress and kafka.create_topics:
            # Now, not on the first progress event: a client subscribed to a topic that does not exist
            # yet would only see it after its next metadata refresh (minutes).
            broker.create_topics([progress])  # type: ignore[attr-defined]
        return broker
    from loramill.adapters.broker.rabbitmq_config import load_settings as rabbitmq_settings
    from loramill.jobs.tsuki import rabbitmq_overrides

    rabbitmq = rabbitmq_settings(**rabbitmq_overrides(os.environ, config.worker.preset))
    if config.worker.job_kinds == {"generate"} and "LORAMILL_RABBITMQ_PREFETCH_COUNT" not in os.environ:
        # A generation-only worker holds several jobs to batch them; RabbitMQ only hands it that many
        # if the prefetch allows. A worker that also trains keeps 1: a prefetched job would wait
        # behind a training of hours instead of going to an idle worker.
        rabbitmq = rabbitmq.model_copy(update={"prefetch_count": config.worker.held_deliveries})
    register_secret(rabbitmq.url)
    _check_distinct("LORAMILL_RABBITMQ_INPUT_QUEUE", rabbitmq.input_queue, "LORAMILL_RABBITMQ_OUTPUT_QUEUE",
                    rabbitmq.output_queue)
    _check_distinct("LORAMILL_RABBITMQ_INPUT_QUEUE", rabbitmq.input_queue, "LORAMILL_PROGRESS_TOPIC", progress)
    return make_broker("rabbitmq", settings=rabbitmq)


def _check_distinct(name_in: str, value_in: str, name_out: str, value_out: str | None) -> None:
    # A worker reading its own events would treat each as a malformed job.
    if value_in == value_out:
        raise InvalidInput(f"{name_in} and {name_out} are both {value_in!r}; jobs and results need separate "
                           "topics / queues", code="invalid_setting", field=name_out)
