"""Broker adapters behind one port (``base.Broker``), chosen by name.

Each adapter's client library (confluent-kafka, aio-pika, SQLAlchemy) is imported only when that
adapter is asked for, so ``import loramill`` stays fast and a RabbitMQ deployment never loads librdkafka.
"""

from __future__ import annotations

import importlib
from typing import Any

from loramill.adapters.broker.base import Broker, Delivery
from loramill.errors import InvalidInput

# kind -> "module:class"; the class is called with the keyword settings given to make_broker.
BROKERS: dict[str, str] = {
    "sql": "loramill.adapters.broker.sql:SqlBroker",
    "kafka": "loramill.adapters.broker.kafka:KafkaBroker",
    "rabbitmq": "loramill.adapters.broker.rabbitmq:RabbitMQBroker",
}


def make_broker(kind: str, **settings: Any) -> Broker:
    """The broker adapter named ``kind``, built from ``settings`` (and, for kafka/rabbitmq, the environment).

    ``sql``: ``SqlBroker(store_or_url, lease_seconds=..., worker_id=...)``;
    ``kafka``: ``KafkaBroker(settings=None, **KafkaSettings fields)``;
    ``rabbitmq``: ``RabbitMQBroker(settings=None, **RabbitMQSettings fields)``.
    """
    target = BROKERS.get(kind)
    if target is None:
        raise InvalidInput(
            f"unknown broker {kind!r}; supported: {', '.join(sorted(BROKERS))}", field="broker"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    broker: Broker = cls(**settings)
    return broker


__all__ = ["BROKERS", "Broker", "Delivery", "make_broker"]
