"""Build the Telegram bot and run it: long polling for commands, a loop sending results.

``loramill serve`` calls ``run_bot`` when ``LORAMILL_TELEGRAM_TOKEN`` is set. The token is registered
as a secret before anything can log, and the loggers that could quote a Bot API URL (aiogram's,
asyncio's, ours) scrub it from every record, so it appears in no log line, event or reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError
from aiogram.types import TelegramObject

from loramill.adapters.broker.base import Broker
from loramill.adapters.storage.base import Storage
from loramill.domain.ports import Store
from loramill.errors import InvalidInput
from loramill.gateway.api.service import Gateway
from loramill.gateway.bot.albums import AlbumCollector
from loramill.gateway.bot.handlers import build_router, train_callbacks
from loramill.gateway.bot.jobs import BotServices
from loramill.gateway.bot.redaction import scrub_loggers
from loramill.gateway.bot.results import ResultLoop
from loramill.gateway.bot.sender import pacing_from_settings
from loramill.gateway.bot.settings import BotSettings
from loramill.gateway.settings import GatewaySettings, load_gateway_settings
from loramill.logs import register_secret

logger = logging.getLogger("loramill.bot")
SHUTDOWN_GRACE = 10.0  # seconds commands under way get to finish when the bot stops


def build_bot(settings: BotSettings) -> Bot:
    """A ``Bot`` on the configured Bot API server whose every outbound message is paced."""
    session = AiohttpSession(api=TelegramAPIServer.from_base(settings.api_url))
    session.middleware(pacing_from_settings(settings))
    return Bot(settings.token.get_secret_value(), session=session)


class InFlight:
    """Outer middleware remembering the updates being handled, so shutdown can let them finish."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
                       event: TelegramObject, data: dict[str, Any]) -> Any:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await handler(event, data)

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the updates under way (their replies need the session)."""
        current = asyncio.current_task()
        pending = [t for t in self.tasks if t is not current]
        if pending:
            await asyncio.wait(pending, timeout=timeout)


def build_dispatcher(bot: Bot, svc: BotServices) -> Dispatcher:
    """The dispatcher with the commands and what they need (services, the /train photo collector)."""
    s = svc.settings
    albums = AlbumCollector(**train_callbacks(bot, svc), min_photos=s.album_min, max_photos=s.album_max,
                            wait=s.album_wait, ttl=s.train_session_ttl)
    in_flight = InFlight()
    dispatcher = Dispatcher(svc=svc, albums=albums, hinted_groups=deque(maxlen=256), in_flight=in_flight)
    dispatcher.update.outer_middleware(in_flight)
    dispatcher.include_router(build_router())
    return dispatcher


async def run_bot(settings: BotSettings, store: Store, storage: Storage, broker: Broker, *,
                  stop_event: asyncio.Event | None = None, gateway_settings: GatewaySettings | None = None) -> None:
    """Serve the bot until ``stop_event`` is set (or the task is cancelled).

    Jobs go through the HTTP API's flows under ``gateway_settings`` (default: read from ``LORAMILL_*``),
    so the API's limits (queue length, image sizes, prompt length) hold for the bot too.
    """
    # 1. The token is a secret from here on.
    token = settings.token.get_secret_value()
    register_secret(token)
    scrub_loggers(token)
    # 2. Services, bot, dispatcher, result loop.
    gateway = Gateway(gateway_settings or load_gateway_settings(), store, storage, broker)
    svc = BotServices(settings, gateway)
    bot = build_bot(settings)
    dispatcher = build_dispatcher(bot, svc)
    stop = stop_event or asyncio.Event()
    results = ResultLoop(bot, svc, poll_interval=settings.poll_interval)
    # 3. Poll Telegram and send results side by side until told to stop.
    tasks: list[asyncio.Task[Any]] = []
    try:
        await _prepare_polling(bot)
        polling = asyncio.create_task(dispatcher.start_polling(
            bot, handle_signals=False, close_bot_session=False, polling_timeout=settings.polling_timeout))
        sending = asyncio.create_task(results.run(stop))
        stopper = asyncio.create_task(stop.wait())
        tasks = [polling, sending, stopper]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # 4. Stop polling, let the result loop finish the sends it started; a crash of either is raised.
        stop.set()
        await _stop_polling(dispatcher, polling)
        await asyncio.gather(sending, return_exceptions=True)
        for task in done - {stopper}:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Commands already taken get their answers before the session closes.
        await dispatcher["in_flight"].wait(SHUTDOWN_GRACE)
        await dispatcher["albums"].drain()
        await bot.session.close()
        logger.info("Telegram bot stopped")


async def _prepare_polling(bot: Bot) -> None:
    """Drop a webhook left by another deployment (polling and a webhook cannot coexist); check the token."""
    try:
        await bot.delete_webhook(drop_pending_updates=False)
    except TelegramUnauthorizedError:
        raise InvalidInput("Telegram refused LORAMILL_TELEGRAM_TOKEN (Unauthorized); copy the token again from "
                           "@BotFather", code="invalid_setting", field="LORAMILL_TELEGRAM_TOKEN") from None
    except TelegramNetworkError as exc:
        # Not fatal: polling retries with backoff until the Bot API is reachable.
        logger.warning("Bot API not reachable yet (%s); polling will keep trying", exc.message)


async def _stop_polling(dispatcher: Dispatcher, polling: asyncio.Task[None]) -> None:
    if polling.done():
        return
    try:
        await dispatcher.stop_polling()
    except RuntimeError:  # "polling is not started": it never got going, so cancelling loses nothing
        polling.cancel()
    await asyncio.gather(polling, return_exceptions=True)
