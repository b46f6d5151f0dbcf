"""Writing down a job's life: the job store first, the output topic / queue second.

The order is what makes effects happen once per ``taskId`` under at-least-once delivery. The store's
status machine lets exactly one outcome through (``transition`` refuses to leave a terminal state);
whoever loses that race, or a redelivery of a finished job, publishes the *stored* outcome instead of
its own, so every copy of the result a client sees is the same. A crash between storing and
publishing is healed by the redelivery that follows it: the job is finished, so its stored result is
published again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from loramill.adapters.broker.base import Broker
from loramill.adapters.storage.base import Storage
from loramill.domain.ports import JobRepository
from loramill.domain.records import JobRecord
from loramill.domain.status import AttemptStart, JobStatus
from loramill.errors import Conflict, LoramillError, TransientError
from loramill.jobs.contracts import ErrorInfo, GenerationJob, JobEvent, Progress, TrainingJob
from loramill.jobs.retry import RetryPolicy, retrying
from loramill.logs import redact

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = TrainingJob | GenerationJob


class JobRecorder:
    """Claims jobs and records their events in the store, then publishes them on the broker."""

    def __init__(self, store: JobRepository, broker: Broker, storage: Storage, policy: RetryPolicy,
                 should_stop: Callable[[], bool] = lambda: False, *, progress_topic: str | None = None) -> None:
        self.store = store
        self.progress_topic = progress_topic  # where processing events go on the broker (None: nowhere)
        # Told every event published, e.g. jobs/callbacks.py's HTTP status updates; must not block.
        self.observers: list[Callable[[JobEvent], None]] = []
        self.broker = broker
        self.storage = storage
        self.policy = policy
        self.should_stop = should_stop
        self._beating: set[str] = set()  # running jobs whose heartbeat the beater thread writes
        self._beat_lock = threading.Lock()
        self._beater: threading.Thread | None = None

    def io(self, operation: str, fn: Callable[[], T]) -> T:
        """``fn()`` with transient failures retried (backoff + jitter)."""
        return retrying(operation, fn, self.policy, should_stop=self.should_stop)

    # -- claiming --------------------------------------------------------------------------------

    def claim_and_start(self, job: Job, stale_after: float) -> tuple[JobRecord, AttemptStart]:
        """Claim the job and start an attempt, in one store transaction (``JobRepository.claim_job``).

        Returns the job's record as it was and ``STARTED`` (the client is told), ``BUSY`` (a live
        worker is running this job: a duplicate copy) or ``FINISHED`` (already terminal). The record
        is created ``queued`` if the gateway did not create it; ``Conflict`` if the taskId belongs to
        another user's job or another kind of job.
        """
        event = JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.PROCESSING)
        record, result = self.io("store.claim_job", lambda: self.store.claim_job(
            job.task_id, job.user_id, job.kind, job.to_payload(), priority=job.priority, stale_after=stale_after,
            event=event.to_dict()))
        if result is AttemptStart.STARTED:
            self.publish(event)
        return record, result

    def start(self, job: Job, stale_after: float) -> AttemptStart:
        """Start an attempt and tell the client: ``STARTED``, ``BUSY`` (a live worker is running this
        job: a duplicate copy) or ``FINISHED`` (already terminal). A ``processing`` job whose heartbeat
        is older than ``stale_after`` seconds belongs to a dead worker and is taken over."""
        event = JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.PROCESSING)
        result = self.io("store.start_attempt", lambda: self.store.start_attempt(
            job.task_id, stale_after=stale_after, event=event.to_dict()))
        if result is AttemptStart.STARTED:
            self.publish(event)
        return result

    def heartbeat(self, task_id: str) -> None:
        """Tell other workers this job's worker is alive; a failure only skips one beat."""
        try:
            self.store.touch(task_id)
        except LoramillError as exc:
            log.warning("job heartbeat skipped: %s", exc.message)

    @contextmanager
    def beating(self, task_id: str, every: float) -> Iterator[None]:
        """``heartbeat(task_id)`` every ``every`` seconds while the block runs, from a thread of its own, so
        long silent stages (model load, latent caching) still prove this worker is alive.

        One thread beats for all of this recorder's running jobs and ends when none is left at a beat:
        a thread started and joined per job cost more than a whole instant generation's store work.
        """
        with self._beat_lock:
            self._beating.add(task_id)
            if self._beater is None:
                self._beater = threading.Thread(target=self._beat, args=(every,), name="job-heartbeat", daemon=True)
                self._beater.start()
        try:
            yield
        finally:
            with self._beat_lock:
                self._beating.discard(task_id)

    def _beat(self, every: float) -> None:
        while True:
            time.sleep(every)
            with self._beat_lock:
                running = sorted(self._beating)
                if not running:
                    self._beater = None
                    return
            for task_id in running:
                self.heartbeat(task_id)

    def cancel_requested(self, task_id: str) -> bool:
        """Whether the job's owner asked to cancel it."""
        return self.io("store.is_cancel_requested", lambda: self.store.is_cancel_requested(task_id))

    # -- while running -----------------------------------------------------------------------------

    def progress(self, job: Job, step: int, total: int, stage: str) -> None:
        """Record and publish a ``processing`` event with progress; a failure here never fails the job."""
        progress = Progress(step=step, total_steps=total, stage=stage)
        event = JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.PROCESSING, progress=progress)
        try:
            if self.store.set_progress(job.task_id, progress.model_dump(by_alias=True, exclude_none=True)):
                self.store.append_event(job.task_id, event.to_dict())
            if self.progress_topic:
                self.broker.publish_progress(event.to_json(), task_id=job.task_id, topic=self.progress_topic)
        except TransientError as exc:
            log.warning("progress of step %d/%d not recorded: %s", step, total, exc.message)

    # -- outcomes ------------------------------------------------------------------------------------

    def finish(self, event: JobEvent) -> JobEvent:
        """Store a terminal ``event`` and publish it; returns the event that was published.

        If the job was already finished (a duplicate run lost the race), the stored outcome is
        published instead of ``event``.
        """
        status = JobStatus(event.status)
        result = event.to_dict() if status is JobStatus.COMPLETED else None
        error = event.error.model_dump() if event.error is not None else None
        # The job has run: giving up here means running it all again, so the outcome gets twice the
        # tries of any other call (with full jitter a store restart of a few seconds could outlast the
        # usual budget). A shutdown still stops the waiting at once.
        patient = RetryPolicy(2 * self.policy.attempts, self.policy.base, self.policy.cap)
        moved = retrying("store.transition", lambda: self.store.transition(
            event.task_id, status, result=result, error=error, event=event.to_dict()), patient,
            should_stop=self.should_stop)
        if not moved:
            record = self.io("store.get_job", lambda: self.store.get_job(event.task_id))
            if record is not None and JobStatus(record.status).terminal:
                log.info("job was already %s; publishing the stored outcome instead", record.status)
                event = self.stored_outcome(record)
        self.publish(event)
        return event

    def hand_back(self, task_id: str) -> None:
        """Mark the job queued again before its delivery is returned to the broker."""
        try:
            self.io("store.transition", lambda: self.store.transition(task_id, JobStatus.QUEUED))
        except (Conflict, TransientError) as exc:
            # The redelivery moves it to processing again whatever this says.
            log.warning("job not marked queued on hand-back: %s", exc.message)

    def stored_outcome(self, record: JobRecord) -> JobEvent:
        """The terminal event of a finished job, rebuilt from the store (image links signed afresh)."""
        status = JobStatus(record.status)
        if status is JobStatus.COMPLETED and record.result:
            event = JobEvent.model_validate(record.result)
            if event.image_paths:
                # Presigned links expire; a client asking again gets links that work now.
                urls = [self.storage.url(key) for key in event.image_paths]
                event.image_urls = [u for u in urls if u is not None] or event.image_urls
            return event
        error = ErrorInfo.model_validate(record.error) if record.error else None
        return JobEvent(task_id=record.id, user_id=record.user_id, status=status, error=error)

    def publish(self, event: JobEvent) -> None:
        """Put ``event`` on the output topic / queue (retrying a broker hiccup); a ``processing`` event on the
        progress topic instead, or nowhere: source systems' clients read every output message as a result."""
        body = event.to_json()
        for observe in self.observers:
            observe(event)
        if JobStatus(event.status) is JobStatus.PROCESSING:
            if self.progress_topic:
                topic = self.progress_topic
                self.io("broker.publish_progress", lambda: self.broker.publish_progress(
                    body, task_id=event.task_id, topic=topic))
            return
        self.io("broker.publish_event", lambda: self.broker.publish_event(body, task_id=event.task_id))
        # DEBUG: the worker logs each transition itself ("job started", "job completed in …").
        log.debug("published %s event", event.status, extra={"status": str(event.status)})

    def failed(self, job: Job, error: LoramillError) -> JobEvent:
        """The ``failed`` event for ``job`` and ``error``; a secret in the message is masked (events are read widely)."""
        return JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.FAILED,
                        error=ErrorInfo(code=error.code, message=redact(error.message)))
