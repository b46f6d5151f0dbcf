"""``JobStore``: jobs, events, the LoRA registry, users and API keys, the bot's deliveries in one SQL database.

It implements every store port of ``loramill.domain.ports`` (one mixin per port: jobs.py, loras.py,
users.py, deliveries.py); callers are typed against the ports, and only the composition roots
(``loramill.config``, the CLI) and the ``sql`` broker, which shares its database, name this class.

SQLite by default (``sqlite:///<LORAMILL_HOME>/loramill.db``), PostgreSQL by URL. The schema is
brought up to date by the packaged Alembic migrations when the store opens. SQL and connection
errors leave this class as ``TransientError`` (retryable); the password never appears in them.
"""

from __future__ import annotations

import logging

from loramill.adapters.store.database import Database
from loramill.adapters.store.deliveries import DeliveriesMixin
from loramill.adapters.store.jobs import JobsMixin
from loramill.adapters.store.loras import LorasMixin
from loramill.adapters.store.migrate import upgrade
from loramill.adapters.store.settings import StoreSettings
from loramill.adapters.store.users import UsersMixin
from loramill.domain.ports import Store

logger = logging.getLogger("loramill.store")


class JobStore(JobsMixin, LorasMixin, UsersMixin, DeliveriesMixin, Store):
    """The SQL job store: ``loramill.domain.ports.Store`` on SQLAlchemy (the methods are in the mixins)."""

    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.db = Database(url or StoreSettings().database_url)
        if migrate:
            upgrade(self.db)
        logger.info("job store at %s", self.db.safe_url)

    @classmethod
    def from_settings(cls, settings: StoreSettings | None = None) -> JobStore:
        """The store ``LORAMILL_DATABASE_URL`` names."""
        return cls((settings or StoreSettings()).database_url)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.db.dialect

    def close(self) -> None:
        """Close pooled connections."""
        self.db.dispose()

    def __repr__(self) -> str:
        return f"JobStore({self.db.safe_url!r})"
