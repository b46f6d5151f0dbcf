"""The job store's ports: what the worker, the gateway and the CLI may ask of the store, one concern each.

Like ``Broker`` and ``Storage``, the store is reached through small interfaces so that callers name what
they need (the worker's event recorder needs ``JobRepository`` and nothing else) and never a database.
``loramill.adapters.store.JobStore`` implements them all on SQLAlchemy (SQLite or PostgreSQL); its
mixins subclass these protocols, so mypy checks every signature against them.

Errors: ``NotFound`` and ``Conflict`` as documented per method; a database that cannot be reached
raises ``TransientError`` (retryable) from any method.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from loramill.domain.records import (
    ApiKeyRecord,
    EventRecord,
    JobRecord,
    LoraRecord,
    Page,
    PendingDelivery,
    UserRecord,
)
from loramill.domain.status import AttemptStart, JobStatus


class JobRepository(Protocol):
    """Jobs, their status machine and their events."""

    def create_job(self, task_id: str, user_id: str, kind: str, payload: Mapping[str, Any], *, priority: int = 0,
                   idempotency_key: str | None = None,
                   event: Mapping[str, Any] | None = None) -> tuple[JobRecord, bool]:
        """Store a new ``queued`` job (and ``event``, atomically); ``(record, created)``. The same id or the
        same user's ``idempotency_key`` with the same request returns the existing job; with another
        request it raises ``Conflict``."""
        ...

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or ``None``."""
        ...

    def claim_job(self, task_id: str, user_id: str, kind: str, payload: Mapping[str, Any], *, priority: int = 0,
                  stale_after: float, event: Mapping[str, Any] | None = None) -> tuple[JobRecord, AttemptStart]:
        """A worker's first write for a delivery: create the job if needed and start an attempt, atomically.
        Returns the record as it was before and what became of the attempt; ``Conflict`` if the id is
        another user's job or another kind of job."""
        ...

    def list_jobs(self, user_id: str | None = None, *, kind: str | None = None, status: str | None = None,
                  cursor: str | None = None, limit: int = 50) -> Page[JobRecord]:
        """Jobs newest first, filtered; ``user_id=None`` lists everyone's."""
        ...

    def transition(self, job_id: str, status: JobStatus | str, *, progress: Mapping[str, Any] | None = None,
                   result: Mapping[str, Any] | None = None, error: Mapping[str, Any] | None = None,
                   quality: Mapping[str, Any] | None = None, event: Mapping[str, Any] | None = None) -> bool:
        """Move the job to ``status`` with the given fields (and ``event``), atomically. ``False`` if it was
        already terminal; ``Conflict`` for a move the status machine forbids; ``NotFound``."""
        ...

    def start_attempt(self, job_id: str, *, stale_after: float,
                      event: Mapping[str, Any] | None = None) -> AttemptStart:
        """Start a new attempt unless a live worker (heard from within ``stale_after`` s) is running it."""
        ...

    def touch(self, job_id: str) -> bool:
        """Heartbeat of a running job; ``False`` if it is not processing."""
        ...

    def set_progress(self, job_id: str, progress: Mapping[str, Any]) -> bool:
        """Record progress of a processing job; ``False`` if it is not processing any more."""
        ...

    def request_cancel(self, job_id: str, *, event: Mapping[str, Any] | None = None) -> JobRecord:
        """Ask the job to stop: a queued one is canceled at once, a processing one when its worker looks."""
        ...

    def is_cancel_requested(self, job_id: str) -> bool:
        """Whether the job's owner asked to cancel it."""
        ...

    def append_event(self, job_id: str, body: Mapping[str, Any] | bytes) -> int:
        """Keep an event exactly as published; its id (the SSE event id)."""
        ...

    def list_events(self, job_id: str, after_id: int = 0, limit: int = 100) -> list[EventRecord]:
        """The job's events with ``id > after_id``, oldest first."""
        ...

    def count_queued(self, kind: str | None = None, *, user_id: str | None = None) -> int:
        """Jobs waiting to start (optionally of one kind, or of one user)."""
        ...


class LoraRepository(Protocol):
    """The registry of trained LoRAs."""

    def create_lora(self, *, user_id: str, family: str, storage_key: str, task_id: str | None = None,
                    lora_id: str | None = None, base_model: str | None = None, trigger_word: str | None = None,
                    metrics: Mapping[str, Any] | None = None, name: str | None = None,
                    public: bool = False) -> LoraRecord:
        """Register a LoRA (id: ``lora_id`` or the training's ``task_id``); repeating it for the same user
        and task updates it, the same id for anything else is a ``Conflict``."""
        ...

    def get_lora(self, lora_id: str, *, include_deleted: bool = False) -> LoraRecord | None:
        """The LoRA, or ``None`` (also when deleted, unless ``include_deleted``)."""
        ...

    def resolve_lora(self, lora_id: str, user_id: str) -> LoraRecord:
        """The LoRA ``user_id`` may use (theirs or a public one); ``NotFound`` otherwise."""
        ...

    def list_loras(self, user_id: str | None, *, include_public: bool = True,
                   family: str | None = None) -> list[LoraRecord]:
        """The user's LoRAs (and public ones), newest first."""
        ...

    def delete_lora(self, lora_id: str, *, user_id: str | None = None) -> bool:
        """Soft-delete; ``user_id`` restricts it to the owner. ``True`` if deleted."""
        ...

    def set_lora_public(self, lora_id: str, public: bool, *, user_id: str | None = None) -> bool:
        """Share the LoRA with everyone, or stop; ``user_id`` restricts it to the owner."""
        ...


class UserRepository(Protocol):
    """Users and their API keys."""

    def create_user(self, name: str, *, is_admin: bool = False, telegram_id: int | None = None,
                    user_id: str | None = None) -> UserRecord:
        """A new user."""
        ...

    def get_user(self, user_id: str) -> UserRecord | None:
        """The user, or ``None``."""
        ...

    def get_or_create_telegram_user(self, telegram_id: int, name: str) -> UserRecord:
        """The user behind a Telegram account, created on first contact."""
        ...

    def create_api_key(self, user_id: str) -> tuple[ApiKeyRecord, str]:
        """A new key: ``(record, plaintext)``; the plaintext is never stored or shown again."""
        ...

    def verify_api_key(self, plaintext: str) -> UserRecord | None:
        """The owner of this unrevoked key, or ``None``."""
        ...

    def revoke_api_key(self, key_id: str, *, user_id: str | None = None) -> bool:
        """Revoke a key; ``True`` if it was active."""
        ...

    def list_api_keys(self, user_id: str) -> list[ApiKeyRecord]:
        """The user's keys (metadata only), oldest first."""
        ...


class DeliveryRepository(Protocol):
    """Which Telegram chat waits for which job's result, and whether it has been sent."""

    def expect_delivery(self, task_id: str, chat_id: int) -> None:
        """Remember that ``chat_id`` waits for ``task_id`` (repeating it changes nothing)."""
        ...

    def pending_deliveries(self, limit: int = 100) -> list[PendingDelivery]:
        """Results not sent yet, oldest first."""
        ...

    def mark_delivered(self, task_id: str) -> bool:
        """Record that the result reached the chat; ``False`` if it already had."""
        ...

    def delivered_at(self, task_id: str) -> datetime | None:
        """When the result of ``task_id`` was sent (``None``: not yet, or not a bot job)."""
        ...


class Store(JobRepository, LoraRepository, UserRepository, DeliveryRepository, Protocol):
    """All of the job store, for the composition roots that hand its parts out (``loramill serve``)."""

    @property
    def dialect(self) -> str:
        """The database behind it (``sqlite``, ``postgresql``), for logs and health checks."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
