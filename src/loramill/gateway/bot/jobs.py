"""What the bot's commands do, away from Telegram: submit, list and cancel a person's jobs.

Jobs are made exactly as the HTTP API makes them: checked against the wire contract (SPEC.md 3.1,
3.3), stored in the JobStore owned by the person's loramill user, inputs uploaded under
``users/{userId}/images/{taskId}/``, then published on the broker. Every function takes the owner's
loramill user id and only ever reads or changes that user's jobs. These are blocking calls (SQL,
storage, broker): the handlers run them in a thread.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from loramill.adapters.broker.base import Broker
from loramill.adapters.storage.base import Storage
from loramill.adapters.store import JobRecord, JobStore, LoraRecord
from loramill.errors import LoramillError, NotFound, TransientError
from loramill.gateway.bot.deliveries import Deliveries
from loramill.gateway.bot.settings import BotSettings
from loramill.jobs.contracts import ErrorInfo, GenerationJob, JobEvent, TrainingJob, parse_job
from loramill.jobs.status import JobStatus

logger = logging.getLogger("loramill.bot")


@dataclass
class BotServices:
    """Everything the bot's commands touch."""

    settings: BotSettings
    store: JobStore
    storage: Storage
    broker: Broker
    deliveries: Deliveries


@dataclass(frozen=True)
class Queued:
    """A job accepted from Telegram: its id and how many queued jobs are ahead of it."""

    task_id: str
    ahead: int


def submit_generation(svc: BotServices, user_id: str, chat_id: int, prompt: str,
                      lora: LoraRecord | None = None) -> Queued:
    """Queue a Prompt2Pic generation (SPEC.md 3.3), with ``lora`` (their avatar) when given."""
    s = svc.settings
    if lora is not None and lora.trigger_word and lora.trigger_word.lower() not in prompt.lower():
        prompt = f"{lora.trigger_word}, {prompt}"  # the LoRA learned the subject under its trigger word
    payload: dict[str, Any] = {"taskId": uuid.uuid4().hex, "userId": user_id, "prompt": prompt,
                               "baseModel": s.base_model, "steps": s.steps, "width": s.width, "height": s.height,
                               "loras": [{"id": lora.id, "weight": s.lora_weight}] if lora else []}
    return _submit(svc, chat_id, {k: v for k, v in payload.items() if v is not None})


def submit_training(svc: BotServices, user_id: str, chat_id: int, photos: list[bytes]) -> Queued:
    """Queue Selfix's avatar training (SPEC.md 3.1, face mode) on the person's photos."""
    # 1. Upload the photos where a training job expects its inputs.
    task_id = uuid.uuid4().hex
    keys = [f"users/{user_id}/images/{task_id}/{n}.jpg" for n in range(1, len(photos) + 1)]
    try:
        for key, data in zip(keys, photos, strict=True):
            svc.storage.put_bytes(key, data, content_type="image/jpeg")
    except LoramillError:
        raise
    except Exception as exc:  # an adapter that let a raw error through; say what failed, not how
        raise TransientError(f"could not store your photos ({type(exc).__name__}); try /train again") from None
    # 2. The job: Selfix's message with face mode and the bot's defaults.
    params = {"subjectType": "face", "baseModel": svc.settings.base_model, "epochs": svc.settings.train_epochs,
              "maxSteps": svc.settings.train_max_steps}
    payload = {"taskId": task_id, "userId": user_id, "images": keys,
               "configurationParams": {k: v for k, v in params.items() if v is not None}}
    return _submit(svc, chat_id, payload)


def _submit(svc: BotServices, chat_id: int, payload: dict[str, Any]) -> Queued:
    # 1. Check it against the wire contract, as the worker will (a bad prompt is refused here, not later).
    job: TrainingJob | GenerationJob = parse_job(payload)
    # 2. Store it, remember which chat waits for it, then hand it to the workers.
    record, _ = svc.store.create_job(job.task_id, job.user_id, job.kind, job.to_payload(), priority=job.priority)
    svc.deliveries.expect(job.task_id, chat_id)
    ahead = max(svc.store.count_queued() - 1, 0)
    try:
        svc.broker.publish_job(json.dumps(job.to_payload()).encode(), task_id=job.task_id, priority=job.priority)
    except LoramillError as exc:
        # Nothing will ever run it: fail it now so /status tells the truth, then tell the person.
        event = JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.FAILED,
                         error=ErrorInfo.from_exception(exc))
        svc.store.transition(job.task_id, JobStatus.FAILED, error=exc.to_dict(), event=event.to_dict())
        raise
    logger.info("queued %s job from Telegram", job.kind, extra={"task_id": job.task_id})
    return Queued(record.id, ahead)


def newest_lora(svc: BotServices, user_id: str) -> LoraRecord | None:
    """The person's most recently trained LoRA (their avatar), if any."""
    own = svc.store.list_loras(user_id, include_public=False)
    return own[0] if own else None


def recent_jobs(svc: BotServices, user_id: str, limit: int = 5) -> list[JobRecord]:
    """The person's newest jobs."""
    return svc.store.list_jobs(user_id, limit=limit).items


def cancel_job(svc: BotServices, user_id: str, task_id: str | None = None) -> JobRecord:
    """Cancel ``task_id`` (default: the person's newest unfinished job).

    Someone else's job is reported exactly like a missing one, so ids cannot be probed.
    """
    # 1. Find the job, among the person's own only.
    if task_id is None:
        unfinished = [j for j in recent_jobs(svc, user_id, limit=50) if not JobStatus(j.status).terminal]
        if not unfinished:
            raise NotFound("you have no queued or running jobs to cancel", field="taskId")
        job = unfinished[0]
    else:
        found = svc.store.get_job(task_id)
        if found is None or found.user_id != user_id:
            raise NotFound(f"you have no job {task_id!r}; /status lists yours", field="taskId")
        job = found
    # 2. Ask for the stop: a queued job is canceled at once, a running one when its worker next looks.
    event = JobEvent(task_id=job.id, user_id=user_id, status=JobStatus.CANCELED)
    record = svc.store.request_cancel(job.id, event=event.to_dict())
    if job.status == JobStatus.QUEUED and record.status == JobStatus.CANCELED:
        # Canceled before any worker saw it, so no worker will announce it: publish the event here.
        try:
            svc.broker.publish_event(event.to_json(), task_id=job.id)
        except LoramillError as exc:
            logger.warning("could not publish the cancel event: %s", exc.message, extra={"task_id": job.id})
    return record
