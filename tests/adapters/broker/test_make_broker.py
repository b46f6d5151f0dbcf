"""make_broker: kinds dispatched through one table, adapters imported only when asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loramill.adapters.broker import make_broker
from loramill.errors import InvalidInput


def test_reject_unknown_broker_kind_listing_supported() -> None:
    with pytest.raises(InvalidInput) as raised:
        make_broker("redis")
    assert all(kind in raised.value.message for kind in ("sql", "kafka", "rabbitmq"))


def test_import_broker_package_without_client_libraries() -> None:
    code = (
        "import sys, loramill.adapters.broker; "
        "print(sorted(m for m in ('confluent_kafka', 'aio_pika', 'sqlalchemy') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "confluent_kafka" not in loaded and "aio_pika" not in loaded


def test_build_kafka_broker_from_keywords(kafka_bootstrap: str) -> None:
    broker = make_broker("kafka", bootstrap_server=kafka_bootstrap, topic_input="factory.jobs",
                         topic_output="factory.events")
    try:
        assert broker.name == "kafka"
    finally:
        broker.close()


def test_reject_misspelt_setting_keyword() -> None:
    with pytest.raises(InvalidInput, match="topic_inptu"):
        make_broker("kafka", topic_inptu="jobs")

