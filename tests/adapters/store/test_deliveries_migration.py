"""Migration 0002 adopts the bot's delivery table: created where missing, kept with its rows where the bot
had already made it itself (before the table was part of the migrations), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from loramill.adapters.store import JobStore, upgrade
from loramill.adapters.store.migrate import HEAD, current_revision
from loramill.adapters.store.models import UTCDateTime
from loramill.domain.records import PendingDelivery
from tests.adapters.store.test_migrations import _schema_diff

# The table exactly as the bot used to create it on start-up (MetaData.create_all, outside Alembic).
_old = sa.MetaData()
OLD_DELIVERIES = sa.Table(
    "telegram_deliveries", _old,
    sa.Column("task_id", sa.String(128), primary_key=True),
    sa.Column("chat_id", sa.BigInteger, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Index("ix_telegram_deliveries_pending", "delivered_at", "created_at"),
)


@pytest.fixture(params=["sqlite", "postgresql"])
def url_at_0001(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database migrated to 0001 only: what every loramill database was before 0002."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        server = make_url(request.getfixturevalue("postgres_url"))
        name = f"loramill_0002_{request.node.name.rsplit('[', 1)[0][-20:].lower()}"
        with psycopg.connect(host=server.host, port=server.port, user=server.username, password=server.password,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        url = server.set(database=name).render_as_string(hide_password=False)
    upgrade(url, "0001")
    return url


def test_upgrade_creates_delivery_table_where_missing(url_at_0001: str) -> None:
    store = JobStore(url_at_0001)

    store.expect_delivery("t-1", 42)

    assert current_revision(store.db) == HEAD and _schema_diff(store) == []
    assert store.pending_deliveries() == [PendingDelivery("t-1", 42)]
    store.close()


def test_upgrade_keeps_table_the_bot_made_before_the_migration(url_at_0001: str) -> None:
    old = sa.create_engine(make_url(url_at_0001).set(
        drivername="postgresql+psycopg" if url_at_0001.startswith("postgresql") else "sqlite"))
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with old.begin() as conn:
        _old.create_all(conn)
        conn.execute(OLD_DELIVERIES.insert(), [
            {"task_id": "sent", "chat_id": 1, "created_at": created, "delivered_at": created},
            {"task_id": "waiting", "chat_id": 2**40, "created_at": created, "delivered_at": None}])
    old.dispose()

    store = JobStore(url_at_0001)

    assert current_revision(store.db) == HEAD and _schema_diff(store) == []
    assert store.pending_deliveries() == [PendingDelivery("waiting", 2**40)]
    assert store.delivered_at("sent") == created
    assert store.mark_delivered("waiting") and not store.mark_delivered("waiting")
    store.close()


def test_upgrade_adds_index_missing_from_an_adopted_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE telegram_deliveries (task_id VARCHAR(128) NOT NULL PRIMARY KEY, "
                             "chat_id BIGINT NOT NULL, created_at DATETIME NOT NULL, delivered_at DATETIME)")
    engine.dispose()

    store = JobStore(url)

    assert _schema_diff(store) == []
    store.close()
