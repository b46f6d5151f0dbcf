"""Job store fixtures: each store test runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loramill.adapters.store import JobStore
from tests.adapters.store.helpers import create_database, empty


@pytest.fixture(scope="session")
def pg_store_url(postgres_url: str) -> str:
    """A migrated database for store tests on the session's PostgreSQL server."""
    return create_database(postgres_url, "loramill_store_tests")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    """An empty, migrated JobStore on SQLite (a fresh file) or PostgreSQL (emptied after the test)."""
    if request.param == "sqlite":
        store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    else:
        store = JobStore(request.getfixturevalue("pg_store_url"), migrate=False)
    try:
        yield store
    finally:
        if request.param == "postgresql":
            empty(store)
        store.close()
