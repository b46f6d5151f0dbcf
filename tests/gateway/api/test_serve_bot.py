"""``loramill serve`` runs the Telegram bot beside the API only when a token is set, and stops it cleanly."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from loramill.gateway.serve import bot_available, start_bot
from tests.gateway.api.conftest import make_api
from tests.gateway.bot.conftest import TOKEN
from tests.gateway.bot.standin import BotApiStandIn, Person


def test_serve_starts_bot_only_with_token_and_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAMILL_TELEGRAM_TOKEN", raising=False)
    assert not bot_available()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    telegram = BotApiStandIn(TOKEN)
    url = asyncio.run_coroutine_threadsafe(telegram.start(), loop).result(10)
    monkeypatch.setenv("LORAMILL_TELEGRAM_TOKEN", TOKEN)
    monkeypatch.setenv("LORAMILL_TELEGRAM_API_URL", url)
    api = make_api(tmp_path)
    try:
        assert bot_available()
        bot = start_bot(api.store, api.storage, api.broker, api.settings)
        loop.call_soon_threadsafe(Person(telegram, 77).says, "/help")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not telegram.sent_to(77, "sendmessage"):
            time.sleep(0.1)
        bot.shutdown()
    finally:
        asyncio.run_coroutine_threadsafe(telegram.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        api.broker.close()
        api.store.close()

    assert telegram.sent_to(77, "sendmessage"), "the bot never answered /help"
    assert not bot.thread.is_alive()
