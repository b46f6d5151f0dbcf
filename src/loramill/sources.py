"""Which broker, storage and base model a process uses, and why: loramill's own settings first, then the
variables a source system's deployment already sets.

A Selfix compose file sets ``KAFKA_*`` and ``S3_*`` only; a Tsuki one ``RABBITMQ_HOST``. Pointed at
loramill unchanged, those alone select Kafka, S3 or RabbitMQ; ``LORAMILL_BROKER`` / ``LORAMILL_STORAGE``
always win. The choice and its reason are logged once at start-up, so nobody has to guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from loramill.errors import InvalidInput

# Variables that select a broker when LORAMILL_BROKER is unset, in the order they are looked at.
BROKER_HINTS = (("KAFKA_BOOTSTRAP_SERVER", "kafka"), ("LORAMILL_RABBITMQ_URL", "rabbitmq"),
                ("RABBITMQ_HOST", "rabbitmq"))
STORAGE_HINTS = ("S3_BUCKET", "S3_ENDPOINT")


@dataclass(frozen=True)
class Choice:
    """A value and the sentence that says where it came from."""

    value: str | None
    reason: str


def choose_broker(env: Mapping[str, str], flag: str | None = None) -> Choice:
    """``--broker``, else ``LORAMILL_BROKER``, else the one a source system's variables name, else ``sql``."""
    if flag:
        return Choice(flag, "--broker flag")
    if env.get("LORAMILL_BROKER", "").strip():
        return Choice(env["LORAMILL_BROKER"].strip().lower(), "LORAMILL_BROKER")
    if env.get("LORAMILL_PRESET", "").strip().lower() == "tsuki":
        return Choice("rabbitmq", "LORAMILL_PRESET=tsuki and LORAMILL_BROKER is unset")
    hinted = {name: kind for name, kind in BROKER_HINTS if env.get(name, "").strip()}
    kinds = sorted(set(hinted.values()))
    if len(kinds) > 1:
        raise InvalidInput(f"{' and '.join(hinted)} are all set, so the broker is ambiguous; set LORAMILL_BROKER "
                           f"to one of: {', '.join(kinds)}", code="invalid_setting", field="LORAMILL_BROKER")
    if kinds:
        return Choice(kinds[0], f"{next(iter(hinted))} is set and LORAMILL_BROKER is not")
    return Choice("sql", "default (LORAMILL_BROKER unset, no KAFKA_BOOTSTRAP_SERVER or RABBITMQ_HOST)")


def choose_storage(env: Mapping[str, str]) -> Choice:
    """``LORAMILL_STORAGE``, else ``s3`` when ``S3_BUCKET`` or ``S3_ENDPOINT`` is set, else ``local``."""
    if env.get("LORAMILL_STORAGE", "").strip():
        return Choice(env["LORAMILL_STORAGE"].strip().lower(), "LORAMILL_STORAGE")
    for name in STORAGE_HINTS:
        if env.get(name, "").strip():
            return Choice("s3", f"{name} is set and LORAMILL_STORAGE is not")
    return Choice("local", "default (LORAMILL_STORAGE unset, no S3_BUCKET or S3_ENDPOINT)")


def choose_base_model(base_model: str | None, models: Mapping[str, str]) -> Choice:
    """The model a job naming none gets: ``LORAMILL_BASE_MODEL``, else the only one in ``LORAMILL_MODELS``."""
    if base_model:
        return Choice(base_model, "LORAMILL_BASE_MODEL")
    if len(models) == 1:
        return Choice(next(iter(models)), "the only model in LORAMILL_MODELS")
    if models:
        return Choice(None, f"none: jobs must name one of {', '.join(sorted(models))} (LORAMILL_MODELS)")
    return Choice(None, "none")


def require_base_model(choice: Choice, models: Mapping[str, str]) -> None:
    """A worker with no model at all could only fail every job: refuse to start, naming the variables."""
    if choice.value is None and not models:
        raise InvalidInput("no base model: set LORAMILL_BASE_MODEL to a diffusers folder or single-file checkpoint "
                           "(or LORAMILL_MODELS to name=path pairs); a worker without one could only fail every job",
                           code="invalid_setting", field="LORAMILL_BASE_MODEL")
