"""The bot's outbound pacing: every message it sends keeps within Telegram's limits.

Telegram allows about one message a second per chat and thirty a second overall; above that it
answers 429 with ``retry_after``. ``Sender`` sits in the bot session's request
pipeline, so handler replies and delivered results alike wait their turn: messages to one chat go
one at a time, in order, at least ``per_chat_interval`` apart; then each takes a slot of a global
sliding window that lets at most ``global_rate`` messages out in any second. A 429 holds that chat
(only that chat) for ``retry_after`` seconds, and the same message is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
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
WINDOW = 1.0  # seconds: Telegram's overall limit is per second


class Pacer:
    """When the next message may go: per-chat spacing and a global sliding window, on an injected clock.

    Pure bookkeeping, so the schedule is tested without waiting.
    """

    def __init__(self, *, per_chat_interval: float = 1.0, global_rate: int = 30, clock: Clock = time.monotonic) -> None:
        self.per_chat_interval = per_chat_interval
        self.clock = clock
        self._recent: deque[float] = deque(maxlen=global_rate)  # start times of the last global_rate sends
        self._chat_free: dict[int | str, float] = {}  # when each chat may get its next message

    def chat_ready_at(self, chat_id: int | str) -> float:
        """The earliest time the next message to ``chat_id`` may go."""
        return max(self.clock(), self._chat_free.get(chat_id, 0.0))

    def take_global_slot(self) -> float:
        """Reserve a slot in the global window; returns when it starts (now, unless the window is full)."""
        now = self.clock()
        full = len(self._recent) == self._recent.maxlen
        start = max(now, self._recent[0] + WINDOW) if full else now
        self._recent.append(start)  # starts only grow, so the oldest of the last N is always at [0]
        return start

    def sent(self, chat_id: int | str, at: float) -> None:
        """A message to ``chat_id`` went at ``at``: the chat's next one waits ``per_chat_interval``."""
        self._chat_free[chat_id] = max(self._chat_free.get(chat_id, 0.0), at + self.per_chat_interval)
        if len(self._chat_free) > 4096:  # forget chats that are free again; memory stays flat
            self._chat_free = {c: t for c, t in self._chat_free.items() if t > at}

    def delay(self, chat_id: int | str, seconds: float) -> None:
        """Telegram asked to wait ``seconds`` before writing to ``chat_id`` again."""
        until = self.clock() + seconds
        self._chat_free[chat_id] = max(self._chat_free.get(chat_id, 0.0), until)


class Sender(BaseRequestMiddleware):
    """Request middleware that paces every method addressed to a chat and retries on 429.

    Methods without a ``chat_id`` (getUpdates, getFile, getMe) pass straight through: the limits are
    on messages, and holding back long polling would only delay the next command.
    """

    def __init__(self, pacer: Pacer, *, max_attempts: int = 5, sleep: Sleep = asyncio.sleep) -> None:
        self.pacer = pacer
        self.max_attempts = max_attempts
        self.sleep = sleep
        self._chat_locks: dict[int | str, tuple[asyncio.Lock, int]] = {}

    async def __call__(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                       method: TelegramMethod[TelegramType]) -> Response[TelegramType]:
        chat_id = getattr(method, "chat_id", None)
        if chat_id is None:
            return await make_request(bot, method)
        # One message per chat at a time, in the order they were asked for (asyncio locks are fair).
        lock = self._enter(chat_id)
        try:
            async with lock:
                return await self._send(make_request, bot, method, chat_id)
        finally:
            self._leave(chat_id)

    async def _send(self, make_request: NextRequestMiddlewareType[TelegramType], bot: Bot,
                    method: TelegramMethod[TelegramType], chat_id: int | str) -> Response[TelegramType]:
        for attempt in range(1, self.max_attempts + 1):
            # 1. Wait for the chat's turn, then for a slot in the global window.
            await self._until(self.pacer.chat_ready_at(chat_id))
            await self._until(self.pacer.take_global_slot())
            self.pacer.sent(chat_id, self.pacer.clock())
            # 2. Send; a 429 holds this chat back as long as Telegram asks, then the message goes again.
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                logger.warning("Telegram asked to wait %ss before %s to chat %s (attempt %d of %d)",
                               exc.retry_after, method.__api_method__, chat_id, attempt, self.max_attempts)
                self.pacer.delay(chat_id, float(exc.retry_after))
        raise Overloaded(f"Telegram kept answering 429 to {method.__api_method__} for chat {chat_id} "
                         f"after {self.max_attempts} attempts; try again later")

    async def _until(self, moment: float) -> None:
        wait = moment - self.pacer.clock()
        if wait > 0:
            await self.sleep(wait)

    def _enter(self, chat_id: int | str) -> asyncio.Lock:
        lock, users = self._chat_locks.get(chat_id) or (asyncio.Lock(), 0)
        self._chat_locks[chat_id] = (lock, users + 1)
        return lock

    def _leave(self, chat_id: int | str) -> None:
        lock, users = self._chat_locks[chat_id]
        if users == 1:
            del self._chat_locks[chat_id]  # nobody else waits for this chat: drop its lock
        else:
            self._chat_locks[chat_id] = (lock, users - 1)


def pacing_from_settings(settings: Any, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> Sender:
    """The ``Sender`` the bot settings describe."""
    pacer = Pacer(per_chat_interval=settings.per_chat_interval, global_rate=settings.global_rate, clock=clock)
    return Sender(pacer, max_attempts=settings.max_send_attempts, sleep=sleep)
