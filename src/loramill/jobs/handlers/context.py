"""``JobContext``: everything a handler needs for one job, and the progress callback handed to the engine.

The engine reports progress through a callback and stops when that callback raises
``StopRequested``; that one hook is how a job is throttled into events, canceled by its owner and
stopped by SIGTERM, so the engine itself knows nothing about brokers or stores.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from loramill import metrics
from loramill.engine.progress import Progress, StopRequested
from loramill.errors import TransientError
from loramill.jobs.contracts import GenerationJob, TrainingJob

if TYPE_CHECKING:
    from loramill.adapters.storage.base import Storage
    from loramill.adapters.storage.quota import StorageQuota
    from loramill.domain.ports import Store
    from loramill.engine.generation.quality import LoadPolicy
    from loramill.jobs.batching import GenerationBatcher
    from loramill.jobs.events import JobRecorder
    from loramill.jobs.handlers.models import ResidentModels
    from loramill.jobs.settings import WorkerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")



class StopReason(StrEnum):
    """Why a running job was asked to stop."""

    CANCEL = "cancel"  # its owner canceled it
    SHUTDOWN = "shutdown"  # the worker is stopping (SIGTERM): the job goes back to the queue


@dataclass
class JobContext:
    """One job being handled: its message, the worker's services, a scratch folder, and the stop signal."""

    job: TrainingJob | GenerationJob
    settings: WorkerSettings
    storage: Storage
    store: Store
    models: ResidentModels
    recorder: JobRecorder
    scratch: Path
    shutdown: threading.Event
    quota: StorageQuota | None = None  # the per-user storage quota its LoRA and images are held to (None: none)
    load_policy: LoadPolicy | None = None  # quality by load for generation jobs (None: always as asked)
    jobs_ahead: Callable[[], int] = lambda: 0  # jobs waiting behind this one, where the broker can tell
    batcher: GenerationBatcher | None = None  # shares denoising runs with the worker's other generation jobs
    queued_at: datetime | None = None  # when the job store first saw the job (the quality policy counts the wait)
    stop_reason: StopReason | None = None
    info: dict[str, object] = field(default_factory=dict)  # facts for the store and logs (resumed step…)
    _last_report: float | None = None  # None: the first report goes out at once
    _last_cancel_check: float | None = None  # None: the first report already looks
    _last_step_at: float | None = None

    def io(self, operation: str, fn: Callable[[], T]) -> T:
        """Run a storage / store call with transient failures retried."""
        return self.recorder.io(operation, fn)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of the job into ``loramill_job_stage_duration_seconds``.

        One INFO line per stage, when it ends (with its time); the start is DEBUG: the line before it
        already says where the job is, and a generation job's four stages were half its log lines.
        """
        started = time.monotonic()
        log.debug("stage %s started", name, extra={"stage": name})
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            metrics.STAGE_SECONDS.labels(kind=self.job.kind, stage=name).observe(elapsed)
            log.info("stage %s took %.2fs", name, elapsed, extra={"stage": name, "seconds": round(elapsed, 3)})

    def hold_to_quota(self, incoming: int, what: str) -> None:
        """Count ``incoming`` bytes (``what``) about to be stored for the job's user; ``QuotaExceeded`` (the
        job fails with ``storage_quota_exceeded``) if they would take the user past the storage quota."""
        quota, user = self.quota, self.job.user_id
        if quota is None:
            return
        self.io("storage.usage", lambda: quota.check(user, incoming, what=what))
        quota.added(user, incoming)

    def progress(self, report: Progress) -> None:
        """The engine's progress callback: throttled events, step timing, and the cancel / shutdown check."""
        now = time.monotonic()
        # 1. Step time of training (between two consecutive optimizer steps)
        if report.stage == "train":
            if self._last_step_at is not None:
                metrics.TRAINING_STEP_SECONDS.observe(now - self._last_step_at)
            self._last_step_at = now
        # 2. Stop here if the worker is shutting down or the owner canceled (the engine checkpoints first)
        self.check_stop(now)
        # 3. A processing event now and then, never more often than the configured interval; a stage's
        #    last step always, so a finished job's stored progress reads n/n, not the last throttled step
        last = report.step >= report.total
        if self._last_report is None or last or now - self._last_report >= self.settings.progress_interval:
            self._last_report = now
            self.recorder.progress(self.job, report.step, report.total, report.stage)

    def check_stop(self, now: float | None = None) -> None:
        """Raise ``StopRequested`` if the job must stop; ``stop_reason`` says why."""
        now = time.monotonic() if now is None else now
        if self.shutdown.is_set():
            self.stop_reason = StopReason.SHUTDOWN
            raise StopRequested("worker is shutting down")
        if self._last_cancel_check is None or now - self._last_cancel_check >= self.settings.cancel_check_interval:
            self._last_cancel_check = now
            try:
                canceled = self.store.is_cancel_requested(self.job.task_id)
            except TransientError as exc:
                log.warning("could not check for cancellation: %s", exc.message)
                canceled = False
            if canceled:
                self.stop_reason = StopReason.CANCEL
                raise StopRequested("canceled by its owner")
