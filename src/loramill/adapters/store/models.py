"""SQLAlchemy 2 tables of the job store. The Alembic migrations in ``migrations/`` create exactly these
(a test compares them), so a change here needs a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in Python, naive UTC in the column, identical on SQLite and PostgreSQL.

    SQLite keeps datetimes as fixed-width text, so naive UTC values also compare correctly there.
    """

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the job store; use datetime.now(UTC)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit id.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Plain JSON, not JSONB: JSONB reorders keys, and stored events must come back exactly as published.
Json = sa.JSON(none_as_null=True)


class Base(DeclarativeBase):
    """Declarative base of the store's tables."""

    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: Json}


class Job(Base):
    """A training or generation job: its payload as received and its life so far."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_jobs_user_idempotency_key"),
        sa.Index("ix_jobs_user_created", "user_id", "created_at"),
        sa.Index("ix_jobs_status_kind", "status", "kind"),
        sa.Index("ix_jobs_created", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)  # the taskId
    kind: Mapped[str] = mapped_column(sa.String(16))  # train | generate
    user_id: Mapped[str] = mapped_column(sa.String(128))
    status: Mapped[str] = mapped_column(sa.String(16))
    priority: Mapped[int] = mapped_column(default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    attempts: Mapped[int] = mapped_column(default=0)
    progress: Mapped[dict[str, Any] | None] = mapped_column(Json)
    result: Mapped[dict[str, Any] | None] = mapped_column(Json)
    error: Mapped[dict[str, Any] | None] = mapped_column(Json)
    quality: Mapped[dict[str, Any] | None] = mapped_column(Json)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobEvent(Base):
    """An event as published; ``id`` orders them and is the SSE event id clients resume from."""

    __tablename__ = "job_events"
    __table_args__ = (sa.Index("ix_job_events_job_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(sa.String(128), sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime]
    body: Mapped[dict[str, Any]] = mapped_column(Json)


class Lora(Base):
    """A trained LoRA in the registry: who owns it, what it is for, where its weights are."""

    __tablename__ = "loras"
    __table_args__ = (sa.Index("ix_loras_user", "user_id", "created_at"), sa.Index("ix_loras_public", "public"))

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(128))
    task_id: Mapped[str | None] = mapped_column(sa.String(128))
    family: Mapped[str] = mapped_column(sa.String(32))
    base_model: Mapped[str | None] = mapped_column(sa.String(256))
    trigger_word: Mapped[str | None] = mapped_column(sa.String(64))
    storage_key: Mapped[str] = mapped_column(sa.String(1024))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(Json)
    public: Mapped[bool] = mapped_column(default=False)
    name: Mapped[str | None] = mapped_column(sa.String(256))
    created_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]


class User(Base):
    """A person using the gateway (HTTP or Telegram)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(256))
    telegram_id: Mapped[int | None] = mapped_column(sa.BigInteger, unique=True)
    is_admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]


class ApiKey(Base):
    """An API key, stored as a hash; ``prefix`` finds the row without revealing the key."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(128), sa.ForeignKey("users.id", ondelete="CASCADE"),
                                         index=True)
    prefix: Mapped[str] = mapped_column(sa.String(16), index=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class TelegramDelivery(Base):
    """A Telegram chat waiting for a job's result; ``delivered_at`` is set once the result was sent."""

    __tablename__ = "telegram_deliveries"
    __table_args__ = (sa.Index("ix_telegram_deliveries_pending", "delivered_at", "created_at"),)

    task_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    chat_id: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


class QueueMessage(Base):
    """A message of the SQL broker: ``queue`` is ``input`` (jobs), ``output`` (events) or ``dead``."""

    __tablename__ = "queue_messages"
    __table_args__ = (sa.Index("ix_queue_messages_task", "task_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    queue: Mapped[str] = mapped_column(sa.String(16))
    task_id: Mapped[str] = mapped_column(sa.String(128))
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    priority: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    available_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(sa.String(128))
    lease_expires_at: Mapped[datetime | None]
    deliveries: Mapped[int] = mapped_column(default=0)
    reason: Mapped[str | None] = mapped_column(sa.Text)


# Matches the claim's ORDER BY priority DESC, created_at, id, so a deep backlog is not sorted per claim.
sa.Index("ix_queue_messages_claim", QueueMessage.queue, QueueMessage.priority.desc(), QueueMessage.created_at,
         QueueMessage.id)
