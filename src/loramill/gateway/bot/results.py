"""Send finished jobs' results to the Telegram chats that asked for them, exactly once each.

The loop reads the chats still waiting (the store's ``DeliveryRepository``: a row per job submitted
through the bot, written when it is queued), and for each job that has reached a terminal
state sends the picture(s), the "avatar ready" note or the failure's message, then marks the row
delivered. All sends go through the bot's paced session (``sender.Sender``). A send that fails is
tried again with exponential backoff: forever through a Telegram or network outage, a few times for
anything else (an image gone from storage). A restart picks up the rows still pending and skips those
delivered; the one gap left is a crash between Telegram accepting a photo and the mark being written,
which resends that result once rather than losing it.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from typing import Any

from aiogram import Bot
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramServerError,
)
from aiogram.types import BufferedInputFile

from loramill.domain.keys import generations_prefix
from loramill.domain.records import JobRecord, PendingDelivery
from loramill.domain.status import JobKind, JobStatus
from loramill.errors import Overloaded, TransientError
from loramill.gateway.bot.jobs import BotServices
from loramill.logs import redact

logger = logging.getLogger("loramill.bot.results")

CAPTION_LIMIT = 1024  # Telegram's limit on a photo caption
# The chat is gone or refuses the bot: retrying can never deliver, so the row is closed.
UNDELIVERABLE = (TelegramForbiddenError, TelegramNotFound, TelegramBadRequest)
# Telegram or the network is down: worth waiting out however long it takes (with backoff).
OUTAGE = (TelegramNetworkError, TelegramServerError, Overloaded, TransientError)
MAX_OTHER_FAILURES = 5  # anything else (an image missing from storage) is given up after this many tries
MAX_BACKOFF = 300.0


class ResultLoop:
    """Polls for finished Telegram jobs and sends their results."""

    def __init__(self, bot: Bot, svc: BotServices, *, poll_interval: float = 1.0, retry_base: float = 2.0) -> None:
        self.bot = bot
        self.svc = svc
        self.poll_interval = poll_interval
        self.retry_base = retry_base  # first wait after a failed send; doubles with each failure
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # task id -> (failed tries, next try at)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then let sends already under way finish."""
        while not stop.is_set():
            try:
                await self.deliver_ready()
            except Exception as exc:  # the store is down for a moment: try again next round
                logger.warning("checking for finished Telegram jobs failed: %s", redact(str(exc)))
            try:
                await asyncio.wait_for(stop.wait(), self.poll_interval)
            except TimeoutError:
                pass
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def deliver_ready(self) -> int:
        """One round: start delivering every waiting job that has finished; returns how many started."""
        pending = await asyncio.to_thread(self.svc.deliveries.pending_deliveries)
        started = 0
        for item in pending:
            if item.task_id in self._in_flight or time.monotonic() < self._failures.get(item.task_id, (0, 0.0))[1]:
                continue
            job = await asyncio.to_thread(self.svc.store.get_job, item.task_id)
            if job is not None and not JobStatus(job.status).terminal:
                continue
            task = asyncio.create_task(self._deliver(item, job))
            self._in_flight[item.task_id] = task
            task.add_done_callback(self._forget)
            started += 1
        return started

    def _forget(self, task: asyncio.Task[None]) -> None:
        for key, running in list(self._in_flight.items()):
            if running is task:
                del self._in_flight[key]

    async def _deliver(self, item: PendingDelivery, job: JobRecord | None) -> None:
        try:
            if job is not None:
                await self._send_result(item.chat_id, job)
        except UNDELIVERABLE as exc:
            logger.warning("result cannot reach chat %s, giving up: %s", item.chat_id, redact(str(exc)),
                           extra={"task_id": item.task_id})
        except Exception as exc:
            if self._retry_later(item, exc):
                return
        self._failures.pop(item.task_id, None)
        await asyncio.to_thread(self.svc.deliveries.mark_delivered, item.task_id)

    def _retry_later(self, item: PendingDelivery, exc: Exception) -> bool:
        """Schedule another try with exponential backoff; ``False`` when this result is given up."""
        tries = self._failures.get(item.task_id, (0, 0.0))[0] + 1
        outage = isinstance(exc, OUTAGE)
        text = redact(f"{type(exc).__name__}: {exc}")
        if not outage and tries >= MAX_OTHER_FAILURES:
            logger.error("giving up sending the result to chat %s after %d tries: %s", item.chat_id, tries, text,
                         extra={"task_id": item.task_id})
            return False
        wait = min(self.retry_base * 2 ** (tries - 1), MAX_BACKOFF)
        self._failures[item.task_id] = (tries, time.monotonic() + wait)
        logger.warning("sending the result to chat %s failed (try %d), again in %.0fs: %s", item.chat_id, tries,
                       wait, text, extra={"task_id": item.task_id})
        return True

    async def _send_result(self, chat_id: int, job: JobRecord) -> None:
        status = JobStatus(job.status)
        if status is JobStatus.CANCELED:
            return  # the person asked for it; /cancel already said so
        if status is JobStatus.FAILED:
            error = job.error or {}
            what = "avatar training" if job.kind == JobKind.TRAIN else "picture"
            await self.bot.send_message(chat_id, f"Your {what} failed: {error.get('message') or 'unknown error'} "
                                                 f"(job {job.id})")
            return
        if job.kind == JobKind.TRAIN:
            await self.bot.send_message(chat_id, "Your avatar is ready. Send /avatar followed by a description, "
                                                 "e.g. /avatar portrait in a space suit" + quality_note(job))
            return
        prompt = str(job.payload.get("prompt", ""))
        keys = await asyncio.to_thread(self._image_keys, job)
        if not keys:
            await self.bot.send_message(chat_id, f"Your picture finished but no image was stored (job {job.id}); "
                                                 "try /txt2img again")
        for key in keys:
            data = await asyncio.to_thread(self.svc.storage.get_bytes, key)
            photo = BufferedInputFile(data, filename=posixpath.basename(key))
            await self.bot.send_photo(chat_id, photo, caption=prompt[:CAPTION_LIMIT] or None)

    def _image_keys(self, job: JobRecord) -> list[str]:
        # The worker's result lists the images; older or partial results fall back to the storage layout.
        result: dict[str, Any] = job.result or {}
        keys = result.get("imagePaths") or result.get("image_paths")
        if keys:
            return [str(k) for k in keys]
        return sorted(self.svc.storage.list(generations_prefix(job.user_id, job.id)))


def quality_note(job: JobRecord) -> str:
    """A line on how well the avatar learned, when the training evaluated itself; empty otherwise."""
    metrics: dict[str, Any] = (job.result or {}).get("metrics") or {}
    parts = []
    if isinstance(metrics.get("consistency"), (int, float)):
        parts.append(f"likeness to your photos {metrics['consistency']:.2f}")
    if isinstance(metrics.get("preservation"), (int, float)):
        parts.append(f"other pictures kept as they were {metrics['preservation']:.2f}")
    # both are similarities from 0 to 1 (CLIP, engine/evaluation); 1 is a perfect score
    return f"\nQuality: {', '.join(parts)} (1.00 is perfect)." if parts else ""
