"""The worker: take a job from the broker, run it, store and publish the outcome, acknowledge.

Delivery is at least once (a worker may die after any line); effects happen once per ``taskId``:
the store's status machine admits one outcome, a finished job's redelivery republishes its stored
result without running again, and a training redelivered mid-run continues from the checkpoint the
previous attempt left in storage. ``handle`` is the whole story of one delivery, in numbered steps.

Shutdown (SIGTERM): stop taking jobs; a running training stops at its next step with a checkpoint
saved and uploaded, the job is handed back (``nack`` with requeue) and the process exits.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from loramill import metrics
from loramill.adapters.broker.base import Broker, Delivery
from loramill.adapters.storage.base import Storage
from loramill.adapters.storage.quota import StorageQuota
from loramill.domain.ports import Store
from loramill.domain.status import AttemptStart, JobKind, JobStatus
from loramill.engine.progress import StopRequested
from loramill.errors import Conflict, LoramillError, TransientError
from loramill.jobs.batching import GenerationBatcher
from loramill.jobs.callbacks import StatusCallback
from loramill.jobs.contracts import JobEvent, failed_event_for, parse_job
from loramill.jobs.events import Job, JobRecorder
from loramill.jobs.handlers import checkpoints, handler_for
from loramill.jobs.handlers.context import JobContext, StopReason
from loramill.jobs.handlers.models import ResidentModels
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.tsuki import TsukiSettings, is_tsuki, load_tsuki_settings, translate
from loramill.logs import task_context

if TYPE_CHECKING:
    from loramill.engine.generation.quality import LoadPolicy

log = logging.getLogger(__name__)

QUEUE_DEPTH_EVERY = 30.0  # seconds; Kafka answers it with a consumer of its own, so not on every idle tick


class Outcome(StrEnum):
    """What became of one delivery, as ``Worker.handle`` returns it (equal to its string, as logs show it)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    DUPLICATE = "duplicate"  # already finished: its stored outcome was published again
    DEAD_LETTERED = "dead_lettered"  # not a job: set aside with the reason
    HANDED_BACK = "handed_back"  # stopped by shutdown or an outage: back on the queue
    SKIPPED = "skipped"  # another kind of worker's job, or running elsewhere


class Worker:
    """Consumes jobs from ``broker`` until ``stop()`` (SIGTERM) or ``max_jobs`` deliveries."""

    def __init__(self, settings: WorkerSettings, broker: Broker, store: Store, storage: Storage,
                 *, models: ResidentModels | None = None) -> None:
        self.settings = settings
        self.broker = broker
        self.store = store
        self.storage = storage
        if models is None:
            from loramill.engine.generation.serving import ServingSettings

            serving = ServingSettings(precision=settings.generation_precision,
                                      channels_last=settings.generation_channels_last,
                                      compile=settings.generation_compile,
                                      sampler=settings.generation_sampler,
                                      openvino=settings.generation_openvino)
            models = ResidentModels(lora_cache_size=settings.lora_cache_size, serving=serving)
        self.models = models
        self.shutdown = threading.Event()
        self.recorder = JobRecorder(store, broker, storage, settings.retry_policy, self.shutdown.is_set,
                                    progress_topic=settings.progress_topic)
        self.load_policy: LoadPolicy | None = None
        if settings.generation_target_seconds is not None:
            from loramill.engine.generation.quality import LoadPolicy, few_step_family, levels_for

            levels = levels_for(settings.few_step_lora, few_step_family(settings.few_step_lora),
                                torch_unet=not settings.generation_openvino)
            self.load_policy = LoadPolicy(settings.generation_target_seconds, workers=max(1, settings.workers),
                                          levels=levels)
        self.quota = StorageQuota(storage, settings.user_storage_bytes)
        self._running: set[str] = set()  # task ids being handled now
        self.batcher = GenerationBatcher(max_images=settings.generation_batch,
                                         max_overtaken=settings.generation_max_overtaken)
        self.handled = 0
        self._depth_checked = 0.0
        # LORAMILL_PRESET=tsuki: that system's requests are translated, and its gateway told over HTTP
        self.tsuki: TsukiSettings | None = load_tsuki_settings() if settings.preset == "tsuki" else None
        self.callback: StatusCallback | None = None
        if self.tsuki is not None and self.tsuki.api_gateway_url:
            self.callback = StatusCallback(self.tsuki, storage)
            self.recorder.observers.append(self.callback.observe)

    def close(self) -> None:
        """Send the status updates still queued, then let go of them (the broker and store are the caller's)."""
        if self.callback is not None:
            self.callback.close()

    def stop(self) -> None:
        """Stop taking jobs; a running job stops at its next step and is handed back."""
        if not self.shutdown.is_set():
            log.info("shutdown requested: finishing up")
        self.shutdown.set()

    def run(self, max_jobs: int | None = None) -> None:
        """Handle deliveries until stopped; a failing broker is waited out, never fatal.

        With generation batching on (``generation_batch`` > 1) the worker holds up to ``hold`` generation
        deliveries at once, each handled in a thread of its own, so that their denoising can share runs
        (jobs/batching.py). Anything else (a training, an unreadable message) runs alone: the worker
        first lets the generations it holds finish, and takes nothing more until it is done.
        """
        log.info("worker started", extra={"broker": self.broker.name, "jobs": self.settings.jobs, "hold": self.hold})
        slots = threading.Semaphore(self.hold)
        pool = ThreadPoolExecutor(max_workers=self.hold, thread_name_prefix="job") if self.hold > 1 else None
        failures = 0
        try:
            while not self.shutdown.is_set() and (max_jobs is None or self.handled < max_jobs):
                # 1. A free slot (with batching: while every slot is busy there is nothing to take)
                if not slots.acquire(timeout=self.settings.receive_timeout):
                    continue
                # 2. The next delivery, waiting out a broker outage
                try:
                    delivery = self.broker.receive(self.settings.receive_timeout)
                    failures = 0
                except TransientError as exc:
                    slots.release()
                    failures += 1
                    wait = self.settings.retry_policy.delay(min(failures, 8))
                    log.warning("receiving failed (%s); trying again in %.1fs", exc.message, wait)
                    self.shutdown.wait(wait)
                    continue
                if delivery is None:
                    slots.release()
                    self._observe_queue_depth()
                    continue
                self.handled += 1
                # 3. A generation beside the others held; anything else alone, once they have finished
                if pool is not None and _is_generation(delivery.body):
                    pool.submit(self._handle_in_slot, delivery, slots)
                    continue
                for _ in range(self.hold - 1):
                    slots.acquire()
                try:
                    self._handle_safely(delivery)
                finally:
                    for _ in range(self.hold):
                        slots.release()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # held generations finish (or hand back on shutdown) first
        log.info("worker stopped after %d deliveries", self.handled)

    @property
    def hold(self) -> int:
        """Deliveries held at once (``WorkerSettings.held_deliveries``)."""
        return self.settings.held_deliveries

    @property
    def current_task(self) -> str | None:
        """One task this worker is running now (``None`` when idle)."""
        return next(iter(self._running), None)

    def _handle_in_slot(self, delivery: Delivery, slots: threading.Semaphore) -> None:
        try:
            self._handle_safely(delivery)
        finally:
            slots.release()

    def _handle_safely(self, delivery: Delivery) -> None:
        try:
            self.handle(delivery)
        except Exception:  # noqa: BLE001 - a bug in handling one message must not stop the worker
            log.exception("handling a delivery failed unexpectedly; giving it back")
            self._give_back(delivery)

    def handle(self, delivery: Delivery) -> Outcome:
        """One delivery from message to acknowledgement; returns what became of it."""
        # 1. Read the message (a source system's format translated first): anything that is not a job is
        #    set aside with the reason, never retried
        body = self._translate(delivery.body)
        try:
            job = parse_job(body)
        except LoramillError as exc:
            return self._dead_letter(delivery, exc, body)
        with task_context(job.task_id):
            # 2. Only the kinds this worker runs; another worker takes the rest
            if job.kind not in self.settings.job_kinds:
                log.info("not a %s worker; handing the %s job back", self.settings.jobs, job.kind)
                self._give_back(delivery)
                return Outcome.SKIPPED
            started = time.monotonic()
            metrics.IN_PROGRESS.labels(kind=job.kind).inc()
            self._running.add(job.task_id)
            try:
                # 3. Claim and start it (one store transaction); a job already finished only has its
                #    stored outcome published again
                try:
                    record, started_as = self.recorder.claim_and_start(job, self.settings.job_stale_seconds)
                except Conflict as exc:
                    return self._dead_letter(delivery, exc)
                if started_as is AttemptStart.BUSY:
                    started_as = self._await_other_run(job)
                if started_as is AttemptStart.FINISHED:
                    return self._republish(delivery, job.kind, job.task_id)
                if started_as is AttemptStart.BUSY:
                    log.info("job is still running on another worker; handing this copy back")
                    self._give_back(delivery)
                    return Outcome.SKIPPED
                log.info("job started (attempt %d)", record.attempts + 1,
                         extra={"kind": job.kind, "attempt": record.attempts + 1, "redelivered": delivery.redelivered})
                # 4. Run it: fetch inputs, dataset, engine, upload — its events throttled on the way
                ctx = JobContext(job=job, settings=self.settings, storage=self.storage, store=self.store,
                                 models=self.models, recorder=self.recorder, scratch=self._scratch(job),
                                 quota=self.quota,
                                 shutdown=self.shutdown, load_policy=self.load_policy, jobs_ahead=self._jobs_ahead,
                                 batcher=self.batcher, queued_at=record.created_at)
                with self._heartbeat(job.task_id):
                    outcome, event = self._run(ctx)
                if outcome == Outcome.HANDED_BACK:
                    # 5a. Stopped by shutdown or an outage: the checkpoint is in storage, the job goes back
                    self.recorder.hand_back(job.task_id)
                    self.broker.nack(delivery, requeue=True)
                    log.info("job handed back to the queue")
                    return Outcome.HANDED_BACK
                # 5b. Store the outcome, publish it, and only then acknowledge the delivery
                assert event is not None
                published = self.recorder.finish(event)
                self.broker.ack(delivery)
                final = Outcome(published.status)
                metrics.JOBS.labels(kind=job.kind, status=final).inc()
                took = time.monotonic() - started
                metrics.JOB_SECONDS.labels(kind=job.kind, status=final).observe(took)
                log.info("job %s in %.2fs", final, took,
                         extra={"kind": job.kind, "status": final, "seconds": round(took, 3),
                                **{k: v for k, v in ctx.info.items() if isinstance(v, int | float | str)}})
                self._clean_up(ctx, final)
                return final
            except TransientError as exc:
                # The store or the broker stayed down through every retry: give the job back; if
                # even that fails, the broker redelivers it on its own (lease, rebalance, reconnect).
                log.error("job handed back after an outage: %s", exc.message)
                self._give_back(delivery)
                return Outcome.HANDED_BACK
            finally:
                self._running.discard(job.task_id)
                metrics.IN_PROGRESS.labels(kind=job.kind).dec()

    def _run(self, ctx: JobContext) -> tuple[Outcome, JobEvent | None]:
        """Run the job's handler and turn how it ended into an outcome and its terminal event."""
        job = ctx.job
        try:
            return Outcome.COMPLETED, handler_for(job.kind)(ctx)
        except StopRequested:
            if ctx.stop_reason is StopReason.CANCEL:
                log.info("job canceled by its owner; its checkpoint is kept")
                return Outcome.CANCELED, JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.CANCELED)
            return Outcome.HANDED_BACK, None
        except TransientError as exc:
            log.warning("job hit a transient failure after retries: %s", exc.message)
            self.shutdown.wait(self.settings.handback_seconds)
            return Outcome.HANDED_BACK, None
        except LoramillError as exc:
            log.warning("job failed: [%s] %s", exc.code, exc.message, extra={"code": exc.code})
            return Outcome.FAILED, self.recorder.failed(job, exc)
        except Exception as exc:  # noqa: BLE001 - a bug must fail one job, not the worker
            log.exception("job failed with an unexpected error")
            # The engine may have stopped half-way through changing the resident pipeline.
            self.models.drop_all()
            error = LoramillError(f"internal error ({type(exc).__name__}); the worker log has the details "
                                  f"for task {job.task_id}")
            return Outcome.FAILED, self.recorder.failed(job, error)

    def _await_other_run(self, job: Job) -> AttemptStart:
        """A copy of a job that a live worker is running (a producer's retry, a rebalance, a redelivery
        after a crash): hold it and watch the store. If that run ends, this copy only republishes its
        outcome; if its heartbeat stops (the worker died), this worker takes the job over. Holding the
        delivery, rather than handing it straight back, keeps the broker from counting a redelivery
        loop as a poison message; the wait is bounded by the stale window."""
        log.info("job is running on another worker; waiting for it to end or go silent")
        deadline = time.monotonic() + self.settings.job_stale_seconds + 2 * self.settings.job_heartbeat_seconds
        while not self.shutdown.wait(self.settings.job_heartbeat_seconds):
            started_as = self.recorder.start(job, stale_after=self.settings.job_stale_seconds)
            if started_as is not AttemptStart.BUSY or time.monotonic() > deadline:
                return started_as
        return AttemptStart.BUSY

    @contextmanager
    def _heartbeat(self, task_id: str) -> Iterator[None]:
        """Touch the job in the store every few seconds while it runs (``JobRecorder.beating``), so long
        silent stages (model load, latent caching) still prove this worker is alive."""
        with self.recorder.beating(task_id, self.settings.job_heartbeat_seconds):
            yield

    def _give_back(self, delivery: Delivery) -> None:
        """Return ``delivery`` to the queue after a pause (so a hot loop cannot spin); never raises."""
        self.shutdown.wait(self.settings.handback_seconds)
        try:
            self.broker.nack(delivery, requeue=True)
        except LoramillError as exc:
            log.error("could not hand the delivery back (%s); the broker will redeliver it", exc.message)

    def _republish(self, delivery: Delivery, kind: str, task_id: str) -> Outcome:
        """A delivery of a finished job: publish its stored outcome again, run nothing."""
        record = self.recorder.io("store.get_job", lambda: self.store.get_job(task_id))
        assert record is not None
        log.info("job already %s; republishing its stored outcome", record.status)
        self.recorder.publish(self.recorder.stored_outcome(record))
        self.broker.ack(delivery)
        metrics.DUPLICATES.labels(kind=kind).inc()
        return Outcome.DUPLICATE

    def _translate(self, body: bytes) -> bytes:
        """A Tsuki request as loramill's generation job (with the preset on); anything else as it is."""
        if self.tsuki is None or not is_tsuki(body):
            return body
        translated = translate(body, self.tsuki)
        task_id = json.loads(translated).get("taskId")
        if self.callback is not None and isinstance(task_id, str):
            self.callback.watch(task_id)  # before parsing: a refused request is reported failed too
        return translated

    def _dead_letter(self, delivery: Delivery, error: LoramillError, body: bytes | None = None) -> Outcome:
        """Set a message that is not a runnable job aside, with the reason; answer it if it names a task.

        ``body`` is the message as read (translated from a source system's format); the original goes aside.
        """
        body = delivery.body if body is None else body
        reason = f"{error.code}: {error.message}"
        # An event (input and output crossed in the configuration) must not be answered with
        # another event: that would loop, and would fail the job it reports on.
        event = None if _is_event(body) else failed_event_for(body, error)
        with task_context(event.task_id if event else None):
            log.warning("message dead-lettered: %s", reason, extra={"code": error.code})
            try:
                if event is not None and not isinstance(error, Conflict):
                    self._answer_unreadable(event, body)
                self.recorder.io("broker.dead_letter", lambda: self.broker.dead_letter(delivery, reason))
            except TransientError as exc:
                log.error("dead-lettering failed (%s); the message will come back", exc.message)
        metrics.DEAD_LETTERS.labels(code=error.code).inc()
        return Outcome.DEAD_LETTERED

    def _answer_unreadable(self, event: JobEvent, body: bytes) -> None:
        """Tell the sender (matching by taskId) that its message was refused, unless that task already ended.

        A garbled copy of a finished job must not contradict the outcome the client already has.
        """
        record = self.recorder.io("store.get_job", lambda: self.store.get_job(event.task_id))
        if record is not None and JobStatus(record.status).terminal:
            return
        if record is None:
            # A client that reads the job store (not the topic) must find the task too, and failed.
            self.recorder.io("store.create_job", lambda: self.store.create_job(
                event.task_id, event.user_id or "", _kind_of(body), {"refused": _excerpt(body)}))
        error = event.error.model_dump() if event.error else None
        self.recorder.io("store.transition", lambda: self.store.transition(
            event.task_id, JobStatus.FAILED, error=error, event=event.to_dict()))
        self.recorder.publish(event)

    def _clean_up(self, ctx: JobContext, final: Outcome) -> None:
        """Drop what a finished job no longer needs: its scratch folder, and a completed training's checkpoints."""
        if not self.settings.keep_work:
            shutil.rmtree(ctx.scratch, ignore_errors=True)
        if ctx.job.kind == JobKind.TRAIN and final == Outcome.COMPLETED:
            try:
                checkpoints.delete_all(self.storage, ctx.job.task_id, self.recorder.io)
            except LoramillError as exc:  # only costs space; the next cleanup pass can take it
                log.warning("checkpoints of the finished job not deleted: %s", exc.message)

    def _scratch(self, job: Job) -> Path:
        """The job's scratch folder, emptied; a generation job writes nothing there, so it is not made."""
        folder = self.settings.work_dir / "jobs" / job.task_id
        if job.kind == JobKind.TRAIN:
            shutil.rmtree(folder, ignore_errors=True)  # a previous attempt's leftovers; its checkpoint is in storage
            folder.mkdir(parents=True)
        return folder

    def _jobs_ahead(self) -> int:
        """Jobs waiting in the queue now (0 where the broker cannot tell or does not answer)."""
        try:
            depth = self.broker.queue_depth()
        except LoramillError as exc:
            log.debug("queue depth unavailable: %s", exc.message)
            return 0
        if depth is not None:
            metrics.QUEUE_DEPTH.labels(broker=self.broker.name).set(depth)
        return depth or 0

    def _observe_queue_depth(self) -> None:
        now = time.monotonic()
        if now - self._depth_checked < QUEUE_DEPTH_EVERY:
            return
        self._depth_checked = now
        try:
            depth = self.broker.queue_depth()
        except LoramillError as exc:
            log.debug("queue depth unavailable: %s", exc.message)
            return
        if depth is not None:
            metrics.QUEUE_DEPTH.labels(broker=self.broker.name).set(depth)


def _is_event(body: bytes) -> bool:
    """Whether ``body`` is a status event (a JSON object with ``status``) rather than a job."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and "status" in data and "taskId" in data


def _kind_of(body: bytes) -> str:
    """The kind a refused message was meant to be, as ``parse_job`` would read it (a training unless it has a
    ``prompt`` and no ``images``)."""
    return JobKind.GENERATE if _is_generation(body) else JobKind.TRAIN


def _excerpt(body: bytes, limit: int = 2000) -> str:
    """The start of a refused message, kept with its failed row so an operator can see what came."""
    return body[:limit].decode("utf-8", "replace")


def _is_generation(body: bytes) -> bool:
    """Whether ``body`` reads as a generation job (``prompt`` without ``images``, as ``parse_job`` decides)."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and "prompt" in data and "images" not in data
