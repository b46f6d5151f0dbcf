"""Shared fixtures. Service fixtures live in tests/services/ and start real services on demand."""

from __future__ import annotations

pytest_plugins = [
    "tests.services.models",
    "tests.services.postgres",
    "tests.services.s3",
    "tests.services.kafka",
    "tests.services.rabbitmq",
    "tests.services.browser",
]
