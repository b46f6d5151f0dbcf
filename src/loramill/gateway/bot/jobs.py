"""What the bot's commands do, away from Telegram: submit, list and cancel a person's jobs.

Jobs are made by the HTTP API's own flows (``gateway.api.service.Gateway``), so a job from Telegram
is checked, stored, announced and published exactly like one from the API, under the same limits:
the photos are checked like uploads and stored under ``users/{userId}/images/{taskId}/``. The caller
is always the loramill user mapped to the sender's Telegram account, never an admin, so a person
only ever sees and cancels their own jobs. These are blocking calls (SQL, storage, broker): the
handlers run them in a thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from loramill.adapters.storage.base import Storage
from loramill.domain.ports import DeliveryRepository, Store
from loramill.domain.records import JobRecord, LoraRecord
from loramill.domain.status import JobStatus
from loramill.errors import NotFound
from loramill.gateway.api.service import Gateway, Principal
from loramill.gateway.api.uploads import check_image
from loramill.gateway.bot.settings import BotSettings

logger = logging.getLogger("loramill.bot")


@dataclass
class BotServices:
    """Everything the bot's commands touch."""

    settings: BotSettings
    gateway: Gateway

    @property
    def store(self) -> Store:
        return self.gateway.store

    @property
    def deliveries(self) -> DeliveryRepository:
        """Which chat waits for which job's result (rows in the job store, so a restart resends nothing)."""
        return self.gateway.store

    @property
    def storage(self) -> Storage:
        return self.gateway.storage


@dataclass(frozen=True)
class Queued:
    """A job accepted from Telegram: its id and how many queued jobs are ahead of it."""

    task_id: str
    ahead: int


def request_key(chat_id: int, message_id: int) -> str:
    """The idempotency key of the job a Telegram message asks for.

    Telegram confirms an update only when the next ``getUpdates`` asks past it, so a bot stopped right
    after handling a command is given that command again when it restarts: the same key makes the
    second handling find the job the first one queued instead of queueing another.
    """
    return f"telegram:{chat_id}:{message_id}"


def submit_generation(svc: BotServices, user_id: str, chat_id: int, prompt: str, key: str,
                      lora: LoraRecord | None = None) -> Queued:
    """Queue a Prompt2Pic generation (docs/contracts.md), with ``lora`` (their avatar) when given."""
    s, who = svc.settings, Principal(user_id)
    if lora is not None and lora.trigger_word and lora.trigger_word.lower() not in prompt.lower():
        prompt = f"{lora.trigger_word}, {prompt}"  # the LoRA learned the subject under its trigger word
    request: dict[str, Any] = {"prompt": prompt, "baseModel": s.base_model, "steps": s.steps, "width": s.width,
                               "height": s.height,
                               "loras": [{"id": lora.id, "weight": s.lora_weight}] if lora else None}
    record, _ = svc.gateway.submit_generation(who, svc.gateway.task_id_for(who, key), request, idempotency_key=key)
    return _waiting(svc, record, chat_id)


def submit_training(svc: BotServices, user_id: str, chat_id: int, photos: list[bytes], key: str) -> Queued:
    """Queue Selfix's avatar training (docs/contracts.md; face mode) on the person's photos."""
    gateway, s, who = svc.gateway, svc.settings, Principal(user_id)
    checked = [check_image(data, i, None, gateway.settings) for i, data in enumerate(photos)]
    options = {"subjectType": "face", "baseModel": s.base_model, "epochs": s.train_epochs,
               "maxSteps": s.train_max_steps}
    record, _ = gateway.submit_training(who, gateway.task_id_for(who, key), checked, [],
                                        {k: v for k, v in options.items() if v is not None}, idempotency_key=key)
    return _waiting(svc, record, chat_id)


def _waiting(svc: BotServices, record: JobRecord, chat_id: int) -> Queued:
    # After the job exists, never before: the result loop takes a row without a job for a job gone.
    svc.deliveries.expect_delivery(record.id, chat_id)
    logger.info("queued %s job from Telegram", record.kind, extra={"task_id": record.id})
    return Queued(record.id, max(svc.store.count_queued() - 1, 0))


def newest_lora(svc: BotServices, user_id: str) -> LoraRecord | None:
    """The person's most recently trained LoRA (their avatar), if any."""
    own = svc.store.list_loras(user_id, include_public=False)
    return own[0] if own else None


def recent_jobs(svc: BotServices, user_id: str, limit: int = 5) -> list[JobRecord]:
    """The person's newest jobs."""
    return svc.gateway.jobs(Principal(user_id), kind=None, status=None, cursor=None, limit=limit).items


def cancel_job(svc: BotServices, user_id: str, task_id: str | None = None) -> JobRecord:
    """Cancel ``task_id`` (default: the person's newest unfinished job).

    Someone else's job is reported exactly like a missing one, so ids cannot be probed.
    """
    who = Principal(user_id)
    if task_id is None:
        unfinished = [j for j in recent_jobs(svc, user_id, limit=50) if not JobStatus(j.status).terminal]
        if not unfinished:
            raise NotFound("you have no queued or running jobs to cancel", field="taskId")
        task_id = unfinished[0].id
    try:
        return svc.gateway.cancel(who, task_id)
    except NotFound:
        raise NotFound(f"you have no job {task_id!r}; /status lists yours", field="taskId") from None
