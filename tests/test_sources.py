"""Which broker, storage and base model a process picks from its environment, and the reason it gives."""

from __future__ import annotations

import pytest

from loramill.errors import InvalidInput
from loramill.sources import choose_base_model, choose_broker, choose_storage, require_base_model


@pytest.mark.parametrize(("env", "flag", "broker", "why"), [
    ({}, None, "sql", "default"),
    ({"KAFKA_BOOTSTRAP_SERVER": "kafka:9092"}, None, "kafka", "KAFKA_BOOTSTRAP_SERVER is set"),
    ({"RABBITMQ_HOST": "rabbit"}, None, "rabbitmq", "RABBITMQ_HOST is set"),
    ({"KAFKA_BOOTSTRAP_SERVER": "kafka:9092", "LORAMILL_BROKER": "SQL"}, None, "sql", "LORAMILL_BROKER"),
    ({"KAFKA_BOOTSTRAP_SERVER": "kafka:9092"}, "rabbitmq", "rabbitmq", "--broker"),
])
def test_choose_broker_from_own_then_source_system_variables(env: dict, flag: str | None, broker: str,
                                                             why: str) -> None:
    choice = choose_broker(env, flag)
    assert choice.value == broker and why in choice.reason


def test_refuse_ambiguous_broker_naming_the_variables() -> None:
    with pytest.raises(InvalidInput, match="KAFKA_BOOTSTRAP_SERVER and RABBITMQ_HOST.*LORAMILL_BROKER"):
        choose_broker({"KAFKA_BOOTSTRAP_SERVER": "k:9092", "RABBITMQ_HOST": "r"})


@pytest.mark.parametrize(("env", "storage", "why"), [
    ({}, "local", "default"),
    ({"S3_BUCKET": "avatars"}, "s3", "S3_BUCKET is set"),
    ({"S3_ENDPOINT": "minio:9000"}, "s3", "S3_ENDPOINT is set"),
    ({"S3_BUCKET": "avatars", "LORAMILL_STORAGE": "local"}, "local", "LORAMILL_STORAGE"),
])
def test_choose_storage_from_own_then_selfix_variables(env: dict, storage: str, why: str) -> None:
    choice = choose_storage(env)
    assert choice.value == storage and why in choice.reason


def test_choose_base_model_and_refuse_a_worker_with_none() -> None:
    assert choose_base_model("sd15", {}).value == "sd15"
    assert choose_base_model(None, {"flux": "/models/flux"}).value == "flux"
    several = choose_base_model(None, {"flux": "/m/f", "sd15": "/m/s"})
    assert several.value is None and "flux, sd15" in several.reason
    require_base_model(several, {"flux": "/m/f", "sd15": "/m/s"})  # jobs name one: the worker may start
    with pytest.raises(InvalidInput, match="LORAMILL_BASE_MODEL"):
        require_base_model(choose_base_model(None, {}), {})
