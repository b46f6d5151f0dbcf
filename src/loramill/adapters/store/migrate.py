"""Apply the Alembic migrations shipped in the package, programmatically (no alembic.ini at run time)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import exc

from loramill.adapters.store.database import Database
from loramill.errors import TransientError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision in migrations/versions (a test holds it to Alembic's own answer, so a new
# migration cannot land without moving it).
HEAD = "0002"
# Any constant works; it only has to be the same for every loramill process sharing a database.
_ADVISORY_LOCK = 7_236_833_477_239_270_508


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def current_revision(db: Database) -> str | None:
    """The revision the database is at; ``None`` when it was never migrated (or cannot be read now)."""
    try:
        with db.read() as conn:
            return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except (TransientError, exc.DBAPIError):
        return None  # no such table yet, or the database is down: the upgrade below says which


def upgrade(target: str | Database, revision: str = "head") -> None:
    """Bring the database at ``target`` (a URL or an open ``Database``) up to ``revision``.

    Safe when several processes start at once: PostgreSQL serializes them with an advisory lock,
    SQLite with its write lock (the whole upgrade is one ``BEGIN IMMEDIATE`` transaction).
    """
    db = Database(target) if isinstance(target, str) else target
    try:
        # Every start but the first finds the schema current; importing and running Alembic only to
        # learn that took ~0.15 s of CPU on each worker's and server's start-up.
        if revision == "head" and current_revision(db) == HEAD:
            return
        from alembic import command

        with db.translate_errors(), db.engine.connect() as conn, conn.begin():
            if db.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})")
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        if isinstance(target, str):
            db.dispose()
