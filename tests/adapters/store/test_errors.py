"""Database failures leave the store as TransientError, and never carry the password."""

from __future__ import annotations

import logging

import pytest

from loramill.adapters.store import JobStore
from loramill.adapters.store.database import normalize_url
from loramill.errors import InvalidInput, TransientError
from tests.services.common import free_port
from tests.services.postgres import PG_PASSWORD


def test_unreachable_postgresql_raises_transient_error_without_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://loramill:{PG_PASSWORD}@127.0.0.1:{free_port()}/loramill?connect_timeout=2"

    with caplog.at_level(logging.DEBUG), pytest.raises(TransientError) as caught:
        JobStore(url)

    assert caught.value.retryable and "***" in caught.value.message
    assert PG_PASSWORD not in caught.value.message and PG_PASSWORD not in caplog.text


def test_wrong_password_raises_error_without_either_password(postgres_url: str) -> None:
    wrong = postgres_url.replace(PG_PASSWORD, "wrong-pw-91c3")

    with pytest.raises(TransientError) as caught:
        JobStore(wrong)

    assert "authentication failed" in caught.value.message
    assert "wrong-pw-91c3" not in caught.value.message and PG_PASSWORD not in caught.value.message


def test_store_repr_masks_password(postgres_url: str) -> None:
    store = JobStore(postgres_url, migrate=False)

    assert PG_PASSWORD not in repr(store) and "***" in repr(store)
    store.close()


def test_normalize_postgres_urls_to_psycopg3() -> None:
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "not a url"])
def test_refuse_unsupported_database_url(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        JobStore(url)
    assert caught.value.field == "LORAMILL_DATABASE_URL"
