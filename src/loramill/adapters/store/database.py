"""Engine and transactions for the job store, and the edge where SQL errors become loramill errors.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with ``BEGIN
IMMEDIATE``: it takes the write lock up front, so two writers queue behind the busy timeout instead
of one failing with "database is locked" when it upgrades a read lock mid-transaction. Read-only
transactions start with a plain ``BEGIN`` and run beside writers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from loramill.errors import InvalidInput, TransientError

logger = logging.getLogger("loramill.store")

SQLITE_BUSY_TIMEOUT_MS = 30_000
_READ_ONLY = "loramill_read_only"


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; ``postgres://`` and ``postgresql://`` mean psycopg 3 (the driver we ship)."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise InvalidInput("LORAMILL_DATABASE_URL is not a database URL; use sqlite:///path/to/loramill.db "
                           "or postgresql://user:password@host/db", code="invalid_setting",
                           field="LORAMILL_DATABASE_URL") from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InvalidInput(f"database {parsed.get_backend_name()!r} is not supported; use sqlite or postgresql",
                           code="invalid_setting", field="LORAMILL_DATABASE_URL")
    return parsed


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url`` configured for concurrent workers (see the module docstring)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)
    memory = parsed.database in (None, "", ":memory:")
    if not memory and parsed.database and not parsed.database.startswith("file:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed, connect_args={"check_same_thread": False,
                                                    "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
                              **({"poolclass": StaticPool} if memory else {}))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        for pragma in ("synchronous=NORMAL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


def _enable_wal(cursor: Any) -> None:
    """Switch to WAL, retrying while another connection holds the file.

    Changing the journal mode needs an exclusive lock and SQLite does not wait on the busy handler for
    it, so processes opening a new database at the same moment (serve and a worker starting together)
    got an immediate "database is locked". Once the file is in WAL mode the pragma is a no-op.
    """
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Database:
    """An engine plus the two kinds of transaction the store uses, with errors translated."""

    def __init__(self, url: str | URL) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self.dialect = self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, for logs."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction, committed on success, rolled back on error."""
        with self.translate_errors(), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (never takes SQLite's write lock)."""
        with self.translate_errors(), self.engine.connect() as conn:
            conn.execution_options(**{_READ_ONLY: True})
            with conn.begin():
                yield conn

    @contextmanager
    def translate_errors(self) -> Iterator[None]:
        """Connection failures, lock timeouts and serialization failures → ``TransientError``.

        The message names the database by its masked URL and never carries the password, even when
        the driver's own message would.
        """
        try:
            yield
        except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, exc.DisconnectionError) as error:
            raise TransientError(f"database {self.safe_url} is unavailable: {self._describe(error)}") from None
        except exc.DBAPIError as error:
            if error.connection_invalidated:
                raise TransientError(f"database {self.safe_url} dropped the connection: "
                                     f"{self._describe(error)}") from None
            raise

    def _describe(self, error: Exception) -> str:
        original = getattr(error, "orig", None) or error
        text = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
        password = self.url.password
        return text.replace(str(password), "***") if password else text

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
