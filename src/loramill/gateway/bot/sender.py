"""The bot's outbound pacing: every message it sends keeps within Telegram's limits.

Telegram allows about one message a second per chat and thirty a second overall; above that it
answers 429 with ``retry_after`` (SPEC.md 5, item 11). ``Sender`` sits in the bot session's request
pipeline, so handler replies and delivered results alike wait for a slot. Slots are reserved in
order (a queue in time rather than in memory): each send reserves the earliest moment that respects
its chat's spacing and the global token bucket, sleeps until then and goes. A 429 pushes the chat's
next slot back by ``retry_after`` and the same message is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods.base import TelegramType

from loramill.errors import Overloaded

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response, TelegramMethod

logger = logging.getLogger("loramill.bot.sender")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]


class Pacer:
    """When each message may go: per-chat spacing plus a global bucket (GCRA, i.e. a token bucket).

    Pure bookkeeping on an injected clock, so the schedule is tested without waiting.
    """

    def __init__(self, *, per_chat_interval: float = 1.0, global_rate: float = 30.0, global_burst: int = 30,
                 clock: Clock = time.monotonic) -> None:
        self.per_chat_interval = per_chat_interval
        self.emission = 1.0 / global_rate
        # With a burst of b the bucket lets b messages out back to back, then one every 1/rate seconds.
        self.tolerance = (global_burst - 1) * self.emission
        self.clock = clock
        self._theoretical = 0.0  # GCRA's "theoretical arrival time" of the next global slot
        self._chat_next: dict[int | str, float] = {}

    def reserve(self, chat_id: int | str) -> float:
        """Reserve the next slot for ``chat_id``; returns the clock time at which the send may start."""
        now = self.clock()
        start = max(now, self._chat_next.get(chat_id, now), self._theoretical - self.tolerance)
        self._theoretical = max(self._theoretical, start) + self.emission
        self._chat_next[chat_id] = start + self.per_chat_interval
        self._forget_idle(now)
        return start

    def delay(self, chat_id: int | str, seconds: float) -> None:
        """Telegram asked to wait ``seconds`` before writing to ``chat_id`` again."""
        until = self.clock() + seconds
        self._chat_next[chat_id] = max(self._chat_next.get(chat_id, until), until)

    def _forget_idle(self, now: float) -> None:
        # A chat whose next slot has passed needs no entry; keeps memory flat over millions of chats.
        if len(self._chat_next) > 1024:
            self._chat_next = {c: t for c, t in self._chat_next.items() if t > now}


class Sender(BaseRequestMiddleware):
    """Request middleware that paces every method addressed to a chat and retries on 429.

    Methods without a ``chat_id`` (getUpdates, getFile, getMe) pass straight through: the limits are
    on messages, and holding back long polling would only delay the next command.
    """

    def __init__(self, pacer: Pacer, *, max_attempts: int = 5, sleep: Sleep = asyncio.sleep) -> None:
        self.pacer = pacer
        self.max_attempts = max_attempts
        self.sleep = sleep

    async def __call__(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                       method: TelegramMethod[TelegramType]) -> Response[TelegramType]:
        chat_id = getattr(method, "chat_id", None)
        if chat_id is None:
            return await make_request(bot, method)
        for attempt in range(1, self.max_attempts + 1):
            # 1. Wait for this chat's slot (and the global bucket's).
            wait = self.pacer.reserve(chat_id) - self.pacer.clock()
            if wait > 0:
                await self.sleep(wait)
            # 2. Send; a 429 moves the chat's next slot back and the message goes round again.
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                logger.warning("Telegram asked to wait %ss before %s to chat %s (attempt %d of %d)",
                               exc.retry_after, method.__api_method__, chat_id, attempt, self.max_attempts)
                self.pacer.delay(chat_id, float(exc.retry_after))
        raise Overloaded(f"Telegram kept answering 429 to {method.__api_method__} for chat {chat_id} "
                         f"after {self.max_attempts} attempts; try again later")


def pacing_from_settings(settings: Any, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> Sender:
    """The ``Sender`` the bot settings describe."""
    pacer = Pacer(per_chat_interval=settings.per_chat_interval, global_rate=settings.global_rate,
                  global_burst=settings.global_burst, clock=clock)
    return Sender(pacer, max_attempts=settings.max_send_attempts, sleep=sleep)
