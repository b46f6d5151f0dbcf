"""What the job store returns: frozen snapshots of jobs, events, LoRAs, users and keys, never live ORM
objects tied to a session. The store ports (``loramill.domain.ports``) speak in these types."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from loramill.domain.status import JobStatus

T = TypeVar("T")


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: its payload as received and its life so far."""

    id: str
    kind: str
    user_id: str
    status: JobStatus
    priority: int
    payload: dict[str, Any]
    attempts: int
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    quality: dict[str, Any] | None
    cancel_requested: bool
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def task_id(self) -> str:
        """The job's ``taskId`` (its primary key)."""
        return self.id


@dataclass(frozen=True)
class EventRecord:
    """An event as published; ``id`` is the SSE event id."""

    id: int
    job_id: str
    created_at: datetime
    body: dict[str, Any]


@dataclass(frozen=True)
class LoraRecord:
    """A trained LoRA in the registry."""

    id: str
    user_id: str
    task_id: str | None
    family: str
    base_model: str | None
    trigger_word: str | None
    storage_key: str
    metrics: dict[str, Any] | None
    public: bool
    name: str | None
    created_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True)
class UserRecord:
    """A gateway user."""

    id: str
    name: str
    telegram_id: int | None
    is_admin: bool
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key's metadata; the key itself is only ever returned once, at creation."""

    id: str
    user_id: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class PendingDelivery:
    """A job whose result a Telegram chat is still waiting for."""

    task_id: str
    chat_id: int


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back for the next page (``None``: no more)."""

    items: list[T]
    next_cursor: str | None
