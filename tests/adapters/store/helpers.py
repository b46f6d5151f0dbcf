"""Helpers for job store and SQL broker tests: one migrated PostgreSQL database per session, emptied
between tests (much faster than a fresh database each time)."""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url

from loramill.adapters.store import JobStore, upgrade

TABLES = ["job_events", "api_keys", "queue_messages", "loras", "users", "jobs", "telegram_deliveries"]


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` (if missing) on the server of ``server_url``, migrate it, return its URL."""
    url = make_url(server_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                         dbname="postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f"CREATE DATABASE {name}")
    target = url.set(database=name).render_as_string(hide_password=False)
    upgrade(target)
    return target


def empty(store: JobStore) -> None:
    """Delete every row, so the next test starts from a clean schema."""
    with store.db.write() as conn:
        if store.dialect == "postgresql":
            conn.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
        else:
            for table in TABLES:
                conn.exec_driver_sql(f"DELETE FROM {table}")
