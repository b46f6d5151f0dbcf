"""The gateway's flows: turn an authenticated request into a stored, published job, and read jobs back.

Routes call these and stay thin; nothing here knows about HTTP. Every lookup is scoped to the caller:
another user's job, LoRA or file is ``NotFound``, exactly like one that does not exist, so ids leak
nothing. Admins see everything.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loramill.adapters.broker.base import Broker
from loramill.adapters.storage.base import Storage
from loramill.adapters.storage.quota import StorageQuota
from loramill.domain.keys import caption_key, owned_by, upload_key, validate_key
from loramill.domain.ports import Store
from loramill.domain.records import JobRecord, LoraRecord, Page
from loramill.domain.status import JobKind, JobStatus
from loramill.errors import Conflict, InvalidInput, LoramillError, NotFound, Overloaded, TransientError
from loramill.gateway.api import metrics
from loramill.gateway.api.quotas import RateLimiter
from loramill.gateway.api.uploads import CheckedImage
from loramill.gateway.settings import GatewaySettings
from loramill.jobs.contracts import ErrorInfo, GenerationJob, JobEvent, TrainingJob, parse_job

logger = logging.getLogger("loramill.gateway")

# a fixed namespace so the same user + Idempotency-Key always names the same task
_IDEMPOTENCY_NS = uuid.UUID("6b1f3c1e-0d57-4b8e-9d0c-6c7e2f1a9b44")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user id, and whether their key may see everyone's things."""

    user_id: str
    is_admin: bool = False

    def owns(self, owner_id: str) -> bool:
        return self.is_admin or owner_id == self.user_id


class Gateway:
    """Jobs, LoRAs and files as the API offers them, over the store, storage and broker ports."""

    def __init__(self, settings: GatewaySettings, store: Store, storage: Storage, broker: Broker) -> None:
        self.settings, self.store, self.storage, self.broker = settings, store, storage, broker
        self.rate = RateLimiter(settings.user_rate_limit, settings.user_rate_burst)
        self.quota = StorageQuota(storage, settings.user_storage_bytes)

    # ---- creating jobs -----------------------------------------------------------------------------

    def task_id_for(self, who: Principal, idempotency_key: str | None) -> str:
        """A fresh task id, or the one this user's ``Idempotency-Key`` always maps to."""
        if idempotency_key is None:
            return str(uuid.uuid4())
        if not 1 <= len(idempotency_key) <= 128 or not idempotency_key.isprintable():
            raise InvalidInput("Idempotency-Key must be 1-128 printable characters; a UUID works",
                               code="invalid_idempotency_key", field="Idempotency-Key")
        return str(uuid.uuid5(_IDEMPOTENCY_NS, f"{who.user_id}\x00{idempotency_key}"))

    def submit_training(self, who: Principal, task_id: str, images: Sequence[CheckedImage],
                        image_keys: Sequence[str], options: Mapping[str, Any], *, priority: int = 0,
                        idempotency_key: str | None = None) -> tuple[JobRecord, bool]:
        """Store the uploads under the user's prefix and queue a training job; ``(job, created)``."""
        # 1. A repeat of an accepted request is not held to the queue limit
        accepted = self._existing(who, task_id) is not None
        if not accepted:
            self.check_capacity(who)
        # 2. Keys the caller gave must be theirs and exist
        keys = [self._own_key(who, key, f"imageKeys[{i}]") for i, key in enumerate(image_keys)]
        for i, key in enumerate(keys):
            if not self.storage.exists(key):
                raise NotFound(f"imageKeys[{i}]: nothing is stored under {key!r}; upload the image instead",
                               field=f"imageKeys[{i}]")
        # 3. Uploads go under users/{userId}/images/{taskId}/, named by content so a retry names the same keys
        uploads = {upload_key(who.user_id, task_id, i, image.digest, image.extension): image
                   for i, image in enumerate(images)}
        # 4. The job in Selfix's format, checked by the same parser the worker uses before anything is stored
        job = parse_job({"taskId": task_id, "userId": who.user_id, "images": keys + list(uploads),
                         "configurationParams": dict(options), "priority": priority})
        # Captions are keyed by their image, not their own bytes: a repeat (same Idempotency-Key) must not
        # rewrite the accepted job's captions, so only a new job's are stored.
        captions = {caption_key(key): image.caption.encode() for key, image in uploads.items()
                    if image.caption and not accepted}
        self.quota.check(who.user_id, sum(len(image.data) for image in uploads.values())
                         + sum(map(len, captions.values())), what="these uploads", field="images")
        for key, image in uploads.items():
            self.storage.put_bytes(key, image.data, image.content_type)
            self.quota.added(who.user_id, len(image.data))
        # 5. Captions beside their images (the worker looks for one beside every image key)
        for key, text in captions.items():
            self.storage.put_bytes(key, text, "text/plain; charset=utf-8")
            self.quota.added(who.user_id, len(text))
        return self._queue(who, job, idempotency_key)

    def submit_generation(self, who: Principal, task_id: str, request: Mapping[str, Any], *,
                          idempotency_key: str | None = None) -> tuple[JobRecord, bool]:
        """Queue a generation job after checking its prompt length and that every LoRA is usable."""
        if self._existing(who, task_id) is None:
            self.check_capacity(who)
        for name in ("prompt", "negativePrompt"):
            text = request.get(name) or ""
            if len(text) > self.settings.max_prompt_chars:
                raise InvalidInput(f"{name} is {len(text)} characters long; the limit is "
                                   f"{self.settings.max_prompt_chars} (LORAMILL_MAX_PROMPT_CHARS); shorten it",
                                   code="prompt_too_long", field=name)
        for i, lora in enumerate(request.get("loras") or []):
            self.usable_lora(who, str(lora.get("id")), field=f"loras[{i}].id")
        payload = {k: v for k, v in request.items() if v is not None}
        payload |= {"taskId": task_id, "userId": who.user_id}
        return self._queue(who, parse_job(payload), idempotency_key)

    def put_job(self, who: Principal, job_id: str, body: Mapping[str, Any]) -> tuple[JobRecord, bool]:
        """Create the job under a client-chosen id, or return it if this user already did (Cog's PUT).

        Client-chosen ids are scoped to their user: the job is stored under an id derived from (user, id),
        as with ``Idempotency-Key``, so one user's id can neither be taken nor probed by another (a global
        id answered "taken" for someone else's job). ``job()`` finds it by the client's id again.
        """
        if body.get("taskId") not in (None, job_id):
            raise InvalidInput(f"taskId in the body ({body.get('taskId')!r}) differs from the path ({job_id!r})",
                               code="invalid_field", field="taskId")
        task_id = self.task_id_for(who, job_id)
        request = {k: v for k, v in body.items() if k not in ("taskId", "userId")}
        try:
            if "images" in request:
                options = request.get("configurationParams") or {}
                return self.submit_training(who, task_id, [], request["images"], options,
                                            priority=int(request.get("priority") or 0), idempotency_key=job_id)
            return self.submit_generation(who, task_id, request, idempotency_key=job_id)
        except Conflict:
            raise Conflict(f"job id {job_id!r} already names one of your jobs, with a different request; use a "
                           "new id", field="taskId") from None

    def check_capacity(self, who: Principal | None = None) -> None:
        """``Overloaded`` (429 + Retry-After) when the caller submits too fast (``LORAMILL_USER_RATE_LIMIT``),
        has ``LORAMILL_USER_QUEUE_LIMIT`` jobs waiting, or the queue holds ``LORAMILL_QUEUE_LIMIT`` jobs."""
        # 1. This user's share first: their flood is refused before it can fill the queue everyone shares
        if who is not None:
            wait = self.rate.take(who.user_id)
            if wait > 0:
                self._refuse(f"more than {self.settings.user_rate_limit:g} jobs per second from one key "
                             f"(LORAMILL_USER_RATE_LIMIT, bursts of {self.settings.user_rate_burst}: "
                             f"LORAMILL_USER_RATE_BURST); retry in {wait:.1f} s", "rate_limited", max(1, round(wait)))
            mine = self.store.count_queued(user_id=who.user_id)
            if mine >= self.settings.user_queue_limit:
                self._refuse(f"you have {mine} jobs waiting; the limit per user is {self.settings.user_queue_limit} "
                             "(LORAMILL_USER_QUEUE_LIMIT); submit more as they start", "user_queue_full",
                             self.settings.retry_after_seconds)
        # 2. The queue everyone shares
        queued = self.store.count_queued()
        if queued >= self.settings.queue_limit:
            error = Overloaded(f"{queued} jobs are waiting; the limit is {self.settings.queue_limit} "
                               f"(LORAMILL_QUEUE_LIMIT); retry in {self.settings.retry_after_seconds} s",
                               code="queue_full")
            error.retry_after = self.settings.retry_after_seconds  # type: ignore[attr-defined]
            metrics.REJECTED.inc()
            raise error

    def _refuse(self, message: str, code: str, retry_after: int) -> None:
        error = Overloaded(message, code=code)
        error.retry_after = retry_after  # type: ignore[attr-defined]
        metrics.REJECTED.inc()
        raise error

    def _existing(self, who: Principal, task_id: str) -> JobRecord | None:
        job = self.store.get_job(task_id)
        if job is None:
            return None
        if job.user_id != who.user_id:
            raise Conflict(f"job id {task_id!r} is taken; choose another id", field="taskId")
        return job

    def _queue(self, who: Principal, job: TrainingJob | GenerationJob,
               idempotency_key: str | None) -> tuple[JobRecord, bool]:
        # The store first, then the broker: a job on the queue always has a row to report on. The
        # store decides whether a repeat is the same job (returned) or a different one (Conflict).
        # The queued event is stored with the job, in its transaction.
        queued = JobEvent(task_id=job.task_id, user_id=who.user_id, status=JobStatus.QUEUED).to_dict()
        record, created = self.store.create_job(job.task_id, who.user_id, job.kind, job.to_payload(),
                                                priority=job.priority, idempotency_key=idempotency_key, event=queued)
        if not created:
            return record, False
        try:
            self.broker.publish_job(_json(job.to_payload()), task_id=job.task_id, priority=job.priority)
        except LoramillError as exc:
            # Nothing will ever run it: fail it now rather than leave it queued forever.
            error = TransientError(f"the job queue is unavailable ({exc.message}); submit again")
            self.store.transition(job.task_id, JobStatus.FAILED, error=error.to_dict(),
                                  event=JobEvent(task_id=job.task_id, user_id=who.user_id, status=JobStatus.FAILED,
                                                 error=ErrorInfo.from_exception(error)).to_dict())
            raise error from None
        metrics.SUBMITTED.labels(kind=job.kind).inc()
        logger.info("queued %s job", job.kind, extra={"task_id": job.task_id})
        return record, True

    # ---- reading and cancelling --------------------------------------------------------------------

    def job(self, who: Principal, job_id: str) -> JobRecord:
        """The caller's job (any job for an admin); ``NotFound`` otherwise."""
        job = self.store.get_job(job_id)
        if (job is None or not who.owns(job.user_id)) and 1 <= len(job_id) <= 128 and job_id.isprintable():
            job = self.store.get_job(self.task_id_for(who, job_id))  # an id the caller chose (PUT)
        if job is None or not who.owns(job.user_id):
            raise NotFound(f"no job {job_id!r}", field="id")
        return job

    def jobs(self, who: Principal, *, kind: str | None, status: str | None, cursor: str | None,
             limit: int) -> Page[JobRecord]:
        """The caller's jobs newest first (everyone's for an admin), one page at a time."""
        return self.store.list_jobs(None if who.is_admin else who.user_id, kind=JobKind.from_public(kind) if kind else None,
                                    status=status, cursor=cursor, limit=limit)

    def cancel(self, who: Principal, job_id: str) -> JobRecord:
        """Withdraw a queued job now, or ask a running one to stop at its next step. Only this id."""
        job = self.job(who, job_id)
        if job.status.terminal:
            raise Conflict(f"job {job_id!r} is already {job.status.value}; only queued or processing jobs "
                           "can be canceled", code="job_finished", field="id")
        event = JobEvent(task_id=job.id, user_id=job.user_id, status=JobStatus.CANCELED).to_dict()
        record = self.store.request_cancel(job.id, event=event)
        if record.status is JobStatus.CANCELED and job.status is JobStatus.QUEUED:
            self._publish_event_quietly(job.id, event)
        return record

    def _publish_event_quietly(self, task_id: str, event: dict[str, Any]) -> None:
        # The store already holds the event; the broker copy is for outside listeners (the bot, Selfix).
        try:
            self.broker.publish_event(_json(event), task_id=task_id)
        except LoramillError as exc:
            logger.warning("could not publish %s event: %s", event.get("status"), exc.message,
                           extra={"task_id": task_id})

    # ---- LoRAs and files ---------------------------------------------------------------------------

    def usable_lora(self, who: Principal, lora_id: str, *, field: str = "id") -> LoraRecord:
        """A LoRA the caller owns, or a public one; ``NotFound`` naming ``field`` otherwise."""
        lora = self.store.get_lora(lora_id)
        if lora is None or not (lora.public or who.owns(lora.user_id)):
            raise NotFound(f"{field}: no LoRA {lora_id!r} of yours (or public); list them with GET /v1/loras",
                           field=field)
        return lora

    def own_lora(self, who: Principal, lora_id: str) -> LoraRecord:
        """A LoRA the caller owns (admins: any); public ones of others are visible but not theirs."""
        lora = self.store.get_lora(lora_id)
        if lora is None or not who.owns(lora.user_id):
            raise NotFound(f"no LoRA {lora_id!r}", field="id")
        return lora

    def loras(self, who: Principal) -> list[LoraRecord]:
        return self.store.list_loras(None if who.is_admin else who.user_id)

    def delete_lora(self, who: Principal, lora_id: str) -> None:
        lora = self.own_lora(who, lora_id)
        self.store.delete_lora(lora.id)
        # Its file goes too: a deleted LoRA is never used again, and the storage quota counts what is stored.
        if owned_by(lora.storage_key, lora.user_id):
            self.storage.delete(lora.storage_key)
            self.quota.forget(lora.user_id)

    def set_public(self, lora_id: str, public: bool) -> LoraRecord:
        if not self.store.set_lora_public(lora_id, public):
            raise NotFound(f"no LoRA {lora_id!r}", field="id")
        return self.store.get_lora(lora_id)  # type: ignore[return-value]

    def file_key(self, who: Principal, key: str) -> str:
        """``key`` if it is in the caller's folder and stored; ``NotFound`` otherwise."""
        try:
            key = self._own_key(who, key, "key")
        except InvalidInput:
            raise NotFound(f"no file {key[:200]!r}", field="key") from None  # no such key can exist
        if not self.storage.exists(key):
            raise NotFound(f"no file {key!r}", field="key")
        return key

    def _own_key(self, who: Principal, key: str, field: str) -> str:
        try:
            key = validate_key(key)
        except InvalidInput as exc:
            raise InvalidInput(f"{field}: {exc.message}", code=exc.code, field=field) from None
        if not (who.is_admin or owned_by(key, who.user_id)):
            raise NotFound(f"{field}: no file {key!r} of yours", field=field)
        return key


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")
