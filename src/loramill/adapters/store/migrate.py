"""Apply the Alembic migrations shipped in the package, programmatically (no alembic.ini at run time)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from loramill.adapters.store.database import Database

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same for every loramill process sharing a database.
_ADVISORY_LOCK = 7_236_833_477_239_270_508


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(target: str | Database, revision: str = "head") -> None:
    """Bring the database at ``target`` (a URL or an open ``Database``) up to ``revision``.

    Safe when several processes start at once: PostgreSQL serializes them with an advisory lock,
    SQLite with its write lock (the whole upgrade is one ``BEGIN IMMEDIATE`` transaction).
    """
    db = Database(target) if isinstance(target, str) else target
    try:
        with db.translate_errors(), db.engine.connect() as conn, conn.begin():
            if db.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        if isinstance(target, str):
            db.dispose()
