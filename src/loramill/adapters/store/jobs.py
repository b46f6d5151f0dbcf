"""Jobs and their events in the store: idempotent create, the status machine enforced in SQL, listing.

The statements a job's life runs on every delivery and every status poll are built once (below) with
bound parameters: building and hashing a SQLAlchemy statement per call cost as much as running it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import exc

from loramill.adapters.store.database import Database
from loramill.adapters.store.models import Job, JobEvent, utcnow
from loramill.adapters.store.records import to_record
from loramill.domain.ports import JobRepository
from loramill.domain.records import EventRecord, JobRecord, Page
from loramill.domain.status import AttemptStart, JobStatus, sources_of
from loramill.errors import Conflict, InvalidInput, NotFound

jobs = cast(sa.Table, Job.__table__)
events = cast(sa.Table, JobEvent.__table__)
MAX_PAGE = 200
_job_id: sa.BindParameter[str] = sa.bindparam("job_id")
GET_JOB = jobs.select().where(jobs.c.id == _job_id)
INSERT_EVENT = events.insert()


class JobsMixin(JobRepository):
    """Job and event methods of ``JobStore``."""

    db: Database

    def create_job(self, task_id: str, user_id: str, kind: str, payload: Mapping[str, Any], *, priority: int = 0,
                   idempotency_key: str | None = None,
                   event: Mapping[str, Any] | None = None) -> tuple[JobRecord, bool]:
        """Store a new ``queued`` job (and ``event``, if given, in the same transaction); ``(record, created)``.

        Idempotent: the same ``task_id`` (or the same user's ``idempotency_key``) with the same payload
        returns the existing job and ``created=False``; with a different payload it raises ``Conflict``.
        """
        now = utcnow()
        try:
            with self.db.write() as conn:
                record = self._insert_job(conn, task_id, user_id, kind, payload, priority, idempotency_key, now)
                if event is not None:
                    conn.execute(INSERT_EVENT, {"job_id": task_id, "created_at": now, "body": dict(event)})
            return record, True
        except exc.IntegrityError:
            pass  # the id or the idempotency key is taken: decide between "same job" and "conflict"
        existing = self.get_job(task_id)
        if existing is None and idempotency_key is not None:
            with self.db.read() as conn:
                found = conn.execute(jobs.select().where(jobs.c.user_id == user_id,
                                                         jobs.c.idempotency_key == idempotency_key)).first()
            existing = to_record(JobRecord, found) if found else None
        if existing is None:  # deleted between the insert and the read; rare enough to ask for a retry
            raise Conflict(f"job {task_id!r} was being created concurrently; retry")
        if existing.payload != dict(payload) or existing.user_id != user_id or existing.kind != kind:
            if existing.id == task_id:
                raise Conflict(f"taskId {task_id!r} is already used by a different job; use a new taskId",
                               field="taskId")
            raise Conflict(f"idempotency key {idempotency_key!r} was already used for job {existing.id!r} "
                           "with a different request; use a new key", field="idempotencyKey")
        return existing, False

    def _insert_job(self, conn: sa.Connection, task_id: str, user_id: str, kind: str, payload: Mapping[str, Any],
                    priority: int, idempotency_key: str | None, now: datetime) -> JobRecord:
        conn.execute(jobs.insert(), {
            "id": task_id, "kind": kind, "user_id": user_id, "status": JobStatus.QUEUED.value, "priority": priority,
            "payload": dict(payload), "attempts": 0, "cancel_requested": False, "idempotency_key": idempotency_key,
            "created_at": now, "updated_at": now})
        return to_record(JobRecord, conn.execute(GET_JOB, {"job_id": task_id}).one())

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or ``None`` if there is none with this id."""
        with self.db.read() as conn:
            row = conn.execute(GET_JOB, {"job_id": job_id}).first()
        return to_record(JobRecord, row) if row else None

    def claim_job(self, task_id: str, user_id: str, kind: str, payload: Mapping[str, Any], *, priority: int = 0,
                  stale_after: float, event: Mapping[str, Any] | None = None) -> tuple[JobRecord, AttemptStart]:
        """A worker's first write for a delivery, in one transaction: the job is created ``queued`` if the
        gateway did not create it, then an attempt starts as in ``start_attempt``. Returns the record as it
        was before this attempt and ``STARTED`` (``event`` appended), ``BUSY`` or ``FINISHED`` (``AttemptStart``).

        Raises ``Conflict`` if ``task_id`` is another user's job or another kind of job. The same user and
        kind under the same id is the same job, even if the gateway stored the request in another normal form.
        """
        for last_try in (False, True):
            now = utcnow()
            try:
                with self.db.write() as conn:
                    row = conn.execute(GET_JOB, {"job_id": task_id}).first()
                    record = (to_record(JobRecord, row) if row is not None else
                              self._insert_job(conn, task_id, user_id, kind, payload, priority, None, now))
                    if record.user_id != user_id or record.kind != kind:
                        raise Conflict(f"taskId {task_id!r} is already used by a different job; use a new taskId",
                                       field="taskId")
                    if record.status.terminal:
                        return record, AttemptStart.FINISHED
                    return record, self._start_in(conn, task_id, now, stale_after, event)
            except exc.IntegrityError:
                # Created by someone else between our look and our insert (PostgreSQL; SQLite's BEGIN
                # IMMEDIATE serializes writers): it exists now, so the second time round reads it.
                if last_try:
                    raise
        raise AssertionError("unreachable")

    def list_jobs(self, user_id: str | None = None, *, kind: str | None = None, status: str | None = None,
                  cursor: str | None = None, limit: int = 50) -> Page[JobRecord]:
        """Jobs newest first, filtered; ``user_id=None`` lists everyone's (admin)."""
        query = jobs.select().order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        query = query.limit(max(1, min(limit, MAX_PAGE)) + 1)
        for column, value in ((jobs.c.user_id, user_id), (jobs.c.kind, kind), (jobs.c.status, status)):
            if value is not None:
                query = query.where(column == value)
        if cursor:
            created, last_id = _decode_cursor(cursor)
            query = query.where(sa.or_(jobs.c.created_at < created,
                                       sa.and_(jobs.c.created_at == created, jobs.c.id < last_id)))
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        items = [to_record(JobRecord, r) for r in rows[: max(1, min(limit, MAX_PAGE))]]
        more = len(rows) > len(items)
        return Page(items, _encode_cursor(items[-1]) if more and items else None)

    def transition(self, job_id: str, status: JobStatus | str, *, progress: Mapping[str, Any] | None = None,
                   result: Mapping[str, Any] | None = None, error: Mapping[str, Any] | None = None,
                   quality: Mapping[str, Any] | None = None, event: Mapping[str, Any] | None = None) -> bool:
        """Move the job to ``status`` and store the given fields, atomically; ``True`` if it moved.

        Returns ``False`` (and changes nothing) when the job is already terminal: a late or duplicate
        worker loses quietly. Raises ``Conflict`` for a move the status machine forbids otherwise
        (queued → completed) and ``NotFound`` for an unknown job. Moving to ``processing`` counts an
        attempt; ``event``, if given, is appended in the same transaction.
        """
        new = JobStatus(status)
        now = utcnow()
        fields = {name: dict(value) for name, value in (("progress", progress), ("result", result),
                                                         ("error", error), ("quality", quality)) if value is not None}
        with self.db.write() as conn:
            moved = conn.execute(_transition_statement(new, tuple(fields)),
                                 {"job_id": job_id, "now": now, **{f"new_{k}": v for k, v in fields.items()}}).rowcount
            if moved:
                if event is not None:
                    conn.execute(INSERT_EVENT, {"job_id": job_id, "created_at": now, "body": dict(event)})
                return True
            current = conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        if current is None:
            raise NotFound(f"no job {job_id!r}", field="taskId")
        if JobStatus(current).terminal:
            return False
        raise Conflict(f"job {job_id!r} is {current}; it cannot become {new.value}")

    def start_attempt(self, job_id: str, *, stale_after: float,
                      event: Mapping[str, Any] | None = None) -> AttemptStart:
        """Move the job to ``processing`` for a new attempt, unless another worker is running it.

        A ``processing`` job is taken over only when its worker has not touched it (``touch``) for
        ``stale_after`` seconds: a copy of a job that is running elsewhere is not run twice, while a
        dead worker's job is taken over once its heartbeat stops. Returns ``STARTED`` (``event``
        appended), ``BUSY`` (running elsewhere) or ``FINISHED`` (already terminal).
        """
        with self.db.write() as conn:
            return self._start_in(conn, job_id, utcnow(), stale_after, event)

    def _start_in(self, conn: sa.Connection, job_id: str, now: datetime, stale_after: float,
                  event: Mapping[str, Any] | None) -> AttemptStart:
        """``start_attempt`` inside the caller's transaction."""
        values = {"job_id": job_id, "now": now, "stale_before": now - timedelta(seconds=stale_after)}
        if conn.execute(START_ATTEMPT, values).rowcount:
            if event is not None:
                conn.execute(INSERT_EVENT, {"job_id": job_id, "created_at": now, "body": dict(event)})
            return AttemptStart.STARTED
        current = conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        if current is None:
            raise NotFound(f"no job {job_id!r}", field="taskId")
        return AttemptStart.BUSY if current == JobStatus.PROCESSING else AttemptStart.FINISHED

    def touch(self, job_id: str) -> bool:
        """Heartbeat of a running job (see ``start_attempt``); ``False`` if it is not processing."""
        with self.db.write() as conn:
            return bool(conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.status == "processing")
                                     .values(updated_at=utcnow())).rowcount)

    def set_progress(self, job_id: str, progress: Mapping[str, Any]) -> bool:
        """Record progress of a processing job; ``False`` if the job is not processing any more."""
        with self.db.write() as conn:
            return bool(conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.status == "processing")
                                     .values(progress=dict(progress), updated_at=utcnow())).rowcount)

    def request_cancel(self, job_id: str, *, event: Mapping[str, Any] | None = None) -> JobRecord:
        """Ask for the job to stop. A queued job is canceled at once (``event`` appended); a processing
        job keeps running until its worker sees ``cancel_requested``; a terminal job is left as it is.
        """
        now = utcnow()
        with self.db.write() as conn:
            conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.status.in_(["queued", "processing"]))
                         .values(cancel_requested=True, updated_at=now))
            canceled = conn.execute(jobs.update().where(jobs.c.id == job_id, jobs.c.status == "queued")
                                    .values(status="canceled", finished_at=now)).rowcount
            if canceled and event is not None:
                conn.execute(events.insert().values(job_id=job_id, created_at=now, body=dict(event)))
        record = self.get_job(job_id)
        if record is None:
            raise NotFound(f"no job {job_id!r}", field="taskId")
        return record

    def is_cancel_requested(self, job_id: str) -> bool:
        """Whether the job's owner asked to cancel it (workers poll this between steps)."""
        with self.db.read() as conn:
            return bool(conn.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar())

    def append_event(self, job_id: str, body: Mapping[str, Any] | bytes) -> int:
        """Keep an event exactly as published; returns its id (the SSE event id)."""
        data = json.loads(body) if isinstance(body, bytes) else dict(body)
        with self.db.write() as conn:
            result = conn.execute(events.insert().values(job_id=job_id, created_at=utcnow(), body=data))
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def list_events(self, job_id: str, after_id: int = 0, limit: int = 100) -> list[EventRecord]:
        """The job's events with ``id > after_id``, oldest first."""
        query = (events.select().where(events.c.job_id == job_id, events.c.id > after_id)
                 .order_by(events.c.id).limit(max(1, min(limit, 1000))))
        with self.db.read() as conn:
            return [to_record(EventRecord, r) for r in conn.execute(query)]

    def count_queued(self, kind: str | None = None, *, user_id: str | None = None) -> int:
        """Jobs waiting to start (optionally of one kind, or of one user)."""
        query = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == "queued")
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        if user_id is not None:
            query = query.where(jobs.c.user_id == user_id)
        with self.db.read() as conn:
            return int(conn.execute(query).scalar() or 0)


def _encode_cursor(record: JobRecord) -> str:
    raw = json.dumps([record.created_at.isoformat(), record.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, last_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created), str(last_id)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidInput("cursor is not one this API returned; start again without it",
                           code="invalid_cursor", field="cursor") from None


# A new attempt: a queued job, or a processing one whose worker went silent (see ``start_attempt``).
_now = sa.bindparam("now", type_=jobs.c.updated_at.type)
START_ATTEMPT = (jobs.update()
                 .where(jobs.c.id == _job_id,
                        sa.or_(jobs.c.status == "queued",
                               sa.and_(jobs.c.status == "processing",
                                       jobs.c.updated_at < sa.bindparam("stale_before", type_=jobs.c.updated_at.type))))
                 .values(status="processing", updated_at=_now, attempts=jobs.c.attempts + 1,
                         started_at=sa.func.coalesce(jobs.c.started_at, _now)))


@functools.cache
def _transition_statement(new: JobStatus, fields: tuple[str, ...]) -> sa.Update:
    """The UPDATE of ``transition`` to ``new`` setting ``fields`` (one per combination, built once)."""
    values: dict[str, Any] = {"status": new.value, "updated_at": _now}
    if new is JobStatus.PROCESSING:
        values |= {"attempts": jobs.c.attempts + 1, "started_at": sa.func.coalesce(jobs.c.started_at, _now)}
    if new.terminal:
        values["finished_at"] = _now
    for name in fields:  # bound as new_<name>: SQLAlchemy reserves a column's own name for its SET clause
        values[name] = sa.bindparam(f"new_{name}", type_=jobs.c[name].type)
    return (jobs.update().where(jobs.c.id == _job_id, jobs.c.status.in_([s.value for s in sources_of(new)]))
            .values(**values))
