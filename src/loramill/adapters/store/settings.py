"""Job store settings: ``LORAMILL_DATABASE_URL``, defaulting to SQLite under ``LORAMILL_HOME``."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_database_url() -> str:
    """``sqlite:///<LORAMILL_HOME or ~/.loramill>/loramill.db``."""
    home = Path(os.environ.get("LORAMILL_HOME") or "~/.loramill").expanduser()
    return f"sqlite:///{home / 'loramill.db'}"


class StoreSettings(BaseSettings):
    """Where jobs, events, LoRAs, users and (for the ``sql`` broker) queue messages are kept."""

    model_config = SettingsConfigDict(env_prefix="LORAMILL_", extra="ignore", populate_by_name=True)

    database_url: str = Field(default_factory=default_database_url,
                              description="SQLAlchemy URL: sqlite:///file.db or postgresql://user:pw@host/db")
