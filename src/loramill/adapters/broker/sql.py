"""The ``sql`` broker: the job store's ``queue_messages`` table is the queue (the embedded default).

A worker looks at the ready jobs at the head of the queue (``ORDER BY priority DESC, created_at, id``),
chooses one fairly between users (``loramill.domain.fairness``) and takes it by a lease: a compare-and-set
``UPDATE … WHERE id = ? AND (unleased OR lease expired)`` (in a ``BEGIN IMMEDIATE`` transaction on
SQLite). So two workers racing for one job get one each or one and nothing, never the same job. A background thread
renews held leases, so a two-hour training keeps its job; a worker that dies stops renewing, the
lease runs out and the job is delivered again (``redelivered=True``, deliveries counted). A job
delivered ``max_deliveries`` times without an ack is dead-lettered instead of crashing workers forever.

A waiting worker wakes as soon as a job is queued in its process, or on PostgreSQL in any process
(``sql_doorbell``); otherwise it polls, every 5 ms backing off to 200 ms.

Lease times come from each worker's clock: workers on several machines need NTP-synced clocks
(skew well under ``lease_seconds``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

import sqlalchemy as sa

from loramill.adapters.broker.base import Broker, Delivery
from loramill.adapters.broker.sql_doorbell import CHANNEL, PgListener, doorbell_for
from loramill.adapters.store import JobStore
from loramill.adapters.store.models import Job, QueueMessage, utcnow
from loramill.domain.fairness import FAIR_CANDIDATES, FAIR_WINDOW_SECONDS, Candidate, choose, user_of
from loramill.errors import LoramillError

logger = logging.getLogger("loramill.broker.sql")
q = cast(sa.Table, QueueMessage.__table__)

# The statements of every job's claim and ack, built once with bound parameters (building and hashing
# a SQLAlchemy statement per call cost as much as running it).
_now = sa.bindparam("now", type_=q.c.available_at.type)
_message_id = sa.bindparam("message_id", type_=q.c.id.type)
READY = sa.and_(q.c.queue == "input", q.c.available_at <= _now,
                sa.or_(q.c.lease_expires_at.is_(None), q.c.lease_expires_at < _now))
# Fair share between users (domain/fairness.py): the FAIR_CANDIDATES oldest ready messages of the highest
# priorities are weighed, each with its user (the job row's, else the one the body names), against how
# many jobs each of those users started lately in the job store, by any worker.
FAIR_WINDOW = timedelta(seconds=FAIR_WINDOW_SECONDS)
_jobs = cast(sa.Table, Job.__table__)
_candidates = (sa.select(q.c.id).where(READY).order_by(q.c.priority.desc(), q.c.created_at, q.c.id)
               .limit(FAIR_CANDIDATES))
# The body is read only where no job row names the user (a client that skipped the gateway).
CANDIDATES = (sa.select(q.c.id, q.c.deliveries, q.c.priority, _jobs.c.user_id,
                        sa.case((_jobs.c.user_id.is_(None), q.c.body), else_=sa.null()).label("orphan_body"))
              .select_from(q.outerjoin(_jobs, _jobs.c.id == q.c.task_id))
              .where(q.c.id.in_(_candidates), READY)
              .order_by(q.c.priority.desc(), q.c.created_at, q.c.id))
STARTED = (sa.select(_jobs.c.user_id, sa.func.count())
           .where(_jobs.c.user_id.in_(sa.bindparam("users", expanding=True)),
                  _jobs.c.started_at >= sa.bindparam("since", type_=_now.type))
           .group_by(_jobs.c.user_id))
TAKE = (q.update().where(q.c.id == _message_id, READY)
        .values(lease_owner=sa.bindparam("token"), lease_expires_at=sa.bindparam("expires", type_=_now.type),
                deliveries=q.c.deliveries + 1)
        .returning(q.c.id, q.c.task_id, q.c.body, q.c.priority, q.c.deliveries))
ACK = q.delete().where(q.c.id == _message_id, q.c.queue == "input")
SWEEP_EVERY = 60.0  # seconds between two sweeps of old events


@dataclass(frozen=True)
class DeadLetter:
    """A message moved aside, with why."""

    id: int
    task_id: str
    body: bytes
    reason: str | None
    deliveries: int


class SqlBroker(Broker):
    """Broker on the job store's database (SQLite or PostgreSQL)."""

    name = "sql"

    def __init__(self, store_or_url: JobStore | str | None = None, *, lease_seconds: float = 60.0,
                 worker_id: str | None = None, max_deliveries: int | None = 10, poll_min: float = 0.005,
                 poll_max: float = 0.2, event_retention_seconds: float | None = 86400.0) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self._own_store = not isinstance(store_or_url, JobStore)
        self.store = store_or_url if isinstance(store_or_url, JobStore) else JobStore(store_or_url)
        self._db = self.store.db
        self.lease = timedelta(seconds=lease_seconds)
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.max_deliveries = max_deliveries
        self._poll = (poll_min, poll_max)
        self._held: dict[int, str] = {}  # message id → lease token of this claim
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._bell = doorbell_for(self._db)
        self._listener: PgListener | None = None
        # Events nobody consumes (``loramill serve`` reads outcomes from the job store, not from here)
        # would pile up forever; older ones are swept as new ones are published. None keeps them all.
        self.event_retention = None if event_retention_seconds is None else timedelta(seconds=event_retention_seconds)
        self._swept_at = 0.0

    # ---- publishing ----------------------------------------------------------------------------

    def publish_job(self, body: bytes, *, task_id: str, priority: int = 0) -> None:
        """Queue a job; higher ``priority`` first, then oldest first."""
        self._insert("input", body, task_id, int(priority))

    def publish_event(self, body: bytes, *, task_id: str) -> None:
        """Queue an event for ``consume_events`` (kept ``event_retention_seconds`` if nobody takes it)."""
        self._insert("output", body, task_id, 0)
        if self.event_retention is not None and time.monotonic() - self._swept_at >= SWEEP_EVERY:
            self._swept_at = time.monotonic()
            self.sweep_events()

    def publish_progress(self, body: bytes, *, task_id: str, topic: str) -> None:
        """Queue a progress event apart from the results (one ``progress`` queue whatever ``topic`` says:
        the embedded queue has no topics; swept like the other events)."""
        self._insert("progress", body, task_id, 0)

    def sweep_events(self) -> int:
        """Delete events older than the retention; how many went."""
        if self.event_retention is None:
            return 0
        with self._db.write() as conn:
            gone = conn.execute(q.delete().where(q.c.queue.in_(("output", "progress")),
                                                 q.c.created_at < utcnow() - self.event_retention)).rowcount
        if gone:
            logger.info("dropped %d unconsumed event(s) older than %s", gone, self.event_retention)
        return int(gone or 0)

    def _insert(self, queue: str, body: bytes, task_id: str, priority: int) -> None:
        now = utcnow()
        with self._db.write() as conn:
            conn.execute(q.insert(), {"queue": queue, "task_id": task_id, "body": bytes(body), "priority": priority,
                                      "created_at": now, "available_at": now, "deliveries": 0})
            if queue == "input":
                self._notify(conn)
        if queue == "input":
            self._bell.ring()

    def _notify(self, conn: sa.Connection) -> None:
        """Tell workers in other processes (PostgreSQL delivers it when the transaction commits)."""
        if self._db.dialect == "postgresql":
            conn.execute(sa.text(f"NOTIFY {CHANNEL}"))

    # ---- consuming jobs ------------------------------------------------------------------------

    def receive(self, timeout: float) -> Delivery | None:
        """Claim the next ready job within ``timeout`` s: at once when one is queued (see the module
        docstring), else by polling every 5 ms backing off to 200 ms."""
        deadline = time.monotonic() + max(0.0, timeout)
        delay = self._poll[0]
        self._listen()
        while not self._closed.is_set():
            seen = self._bell.rings  # read before looking: a job queued after the look rings past it
            delivery = self._claim()
            if delivery is not None:
                return delivery
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            rang = self._bell.wait(seen, min(delay, remaining))
            delay = self._poll[0] if rang else min(delay * 2, self._poll[1])
        return None

    def _listen(self) -> None:
        """On PostgreSQL, start listening for jobs queued by other processes (once, by the first receive)."""
        if self._listener is None and self._db.dialect == "postgresql":
            conninfo = self._db.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._listener = PgListener(conninfo, self._bell, f"sql-listen-{self.worker_id}").start()

    def _claim(self) -> Delivery | None:
        now = utcnow()
        token = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        # Looking takes no lock (idle polling must not take SQLite's write lock); taking is a compare-and-set
        # on "still ready", so two workers that chose the same job get it once: the loser looks again.
        for _ in range(10):
            # 1. The candidates at the head of the queue, and how much their users were served lately
            with self._db.read() as conn:
                rows = conn.execute(CANDIDATES, {"now": now}).all()
                if not rows:
                    return None
                users = [row.user_id or user_of(bytes(row.orphan_body or b"")) for row in rows]
                named = sorted({user for user in users if user is not None})
                served: dict[str, int] = {}
                if named:
                    served = {user: int(count) for user, count in
                              conn.execute(STARTED, {"users": named, "since": now - FAIR_WINDOW}).tuples()}
            # 2. The fair choice among them (domain/fairness.py)
            row = rows[choose([Candidate(user, row.priority) for user, row in zip(users, rows, strict=True)],
                              served)]
            # 3. Take it, unless another worker did first; one delivered too often goes aside instead
            with self._db.write() as conn:
                if self.max_deliveries is not None and row.deliveries >= self.max_deliveries:
                    conn.execute(q.update().where(q.c.id == row.id, READY).values(
                        queue="dead", lease_owner=None, lease_expires_at=None,
                        reason=f"delivered {row.deliveries} times without an ack; the job probably crashes "
                               "or outlives its worker"), {"now": now})
                    logger.warning("dead-lettered message %s after %s deliveries", row.id, row.deliveries)
                    continue
                claimed = conn.execute(TAKE, {"message_id": row.id, "now": now, "token": token,
                                              "expires": now + self.lease}).first()
            if claimed is not None:
                break
        else:
            return None
        with self._lock:
            self._held[claimed.id] = token
        self._ensure_heartbeat()
        return Delivery(body=bytes(claimed.body), delivery_id=str(claimed.id), redelivered=claimed.deliveries > 1,
                        headers={"task_id": claimed.task_id, "priority": claimed.priority,
                                 "deliveries": claimed.deliveries})

    def ack(self, delivery: Delivery) -> None:
        """The outcome is stored: delete the message, whoever holds it now (ack is final)."""
        message_id = self._release(delivery)
        with self._db.write() as conn:
            conn.execute(ACK, {"message_id": message_id})

    def nack(self, delivery: Delivery, *, requeue: bool = True) -> None:
        """Hand the job back at once (``requeue``), or dead-letter it."""
        if not requeue:
            self.dead_letter(delivery, "rejected by the worker without requeue")
            return
        token = self._held.get(int(delivery.delivery_id))
        message_id = self._release(delivery)
        with self._db.write() as conn:
            conn.execute(q.update().where(q.c.id == message_id, q.c.lease_owner == token)
                         .values(lease_owner=None, lease_expires_at=None, available_at=utcnow()))
            self._notify(conn)
        self._bell.ring()

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to the ``dead`` queue with ``reason``."""
        message_id = self._release(delivery)
        with self._db.write() as conn:
            conn.execute(q.update().where(q.c.id == message_id, q.c.queue == "input")
                         .values(queue="dead", reason=reason[:4000], lease_owner=None, lease_expires_at=None))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Messages moved aside, oldest first (for operators and tests)."""
        query = (sa.select(q.c.id, q.c.task_id, q.c.body, q.c.reason, q.c.deliveries)
                 .where(q.c.queue == "dead").order_by(q.c.id).limit(limit))
        with self._db.read() as conn:
            return [DeadLetter(r.id, r.task_id, bytes(r.body), r.reason, r.deliveries) for r in conn.execute(query)]

    def _release(self, delivery: Delivery) -> int:
        message_id = int(delivery.delivery_id)
        with self._lock:
            self._held.pop(message_id, None)
        return message_id

    # ---- events and metrics --------------------------------------------------------------------

    def consume_events(self, timeout: float) -> list[bytes]:
        """Take (and remove) up to 100 events in publication order, waiting up to ``timeout`` s for one."""
        deadline = time.monotonic() + max(0.0, timeout)
        delay = self._poll[0]
        pick = sa.select(q.c.id, q.c.body).where(q.c.queue == "output").order_by(q.c.id).limit(100)
        if self._db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        while True:
            with self._db.write() as conn:
                rows = conn.execute(pick).all()
                if rows:
                    conn.execute(q.delete().where(q.c.id.in_([r.id for r in rows])))
                    return [bytes(r.body) for r in rows]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                return []
            self._closed.wait(min(delay, remaining))
            delay = min(delay * 2, self._poll[1])

    def queue_depth(self) -> int:
        """Jobs ready to be claimed now."""
        query = sa.select(sa.func.count()).select_from(q).where(READY)
        with self._db.read() as conn:
            return int(conn.execute(query, {"now": utcnow()}).scalar() or 0)

    # ---- leases --------------------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat_stop.clear()
                self._heartbeat = threading.Thread(target=self._beat, name=f"sql-lease-{self.worker_id}",
                                                   daemon=True)
                self._heartbeat.start()

    def _beat(self) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.05)
        while not self._heartbeat_stop.wait(interval):
            with self._lock:
                held = dict(self._held)
            if held:
                try:
                    self._renew(held)
                except LoramillError as exc:  # keep beating: the database may be back next tick
                    logger.warning("could not renew leases: %s", exc.message)

    def _renew(self, held: dict[int, str]) -> None:
        tokens = list(held.values())
        with self._db.write() as conn:
            conn.execute(q.update().where(q.c.lease_owner.in_(tokens), q.c.queue == "input")
                         .values(lease_expires_at=utcnow() + self.lease))
            kept = set(conn.execute(sa.select(q.c.lease_owner).where(q.c.lease_owner.in_(tokens))).scalars())
        for message_id, token in held.items():
            if token not in kept:
                logger.warning("lost the lease on message %s; another worker may be running it", message_id)
                with self._lock:
                    self._held.pop(message_id, None)

    def close(self) -> None:
        """Stop renewing leases, hand held jobs back to the queue, release connections."""
        self._closed.set()
        self._bell.ring()  # a receive() waiting in another thread returns now
        if self._listener is not None:
            self._listener.stop()
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        with self._lock:
            held = dict(self._held)
        for message_id in held:
            try:
                self.nack(Delivery(body=b"", delivery_id=str(message_id)))
            except LoramillError as exc:
                logger.warning("could not hand message %s back: %s (its lease will expire)", message_id, exc.message)
        if self._own_store:
            self.store.close()
