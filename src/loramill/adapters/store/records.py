"""What the job store returns: frozen snapshots, never live ORM objects tied to a session."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Row

from loramill.jobs.status import JobStatus

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
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back for the next page (``None``: no more)."""

    items: list[T]
    next_cursor: str | None


def to_record(cls: type[T], row: Row[Any]) -> T:
    """Build ``cls`` from the row's columns of the same names (extra columns are ignored)."""
    mapping = row._mapping
    values = {name: mapping[name] for name in _field_names(cls)}  # type: ignore[arg-type]
    if "status" in values:
        values["status"] = JobStatus(values["status"])
    return cls(**values)


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    # dataclasses.fields() builds its tuple on every call; a status poll reads a record every few ms.
    return tuple(f.name for f in dataclasses.fields(cls))
