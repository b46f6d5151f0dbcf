"""The bot token appears in no log line, reply, stored job or event, and no settings error."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from loramill.errors import InvalidInput
from loramill.gateway.bot.app import run_bot
from loramill.gateway.bot.settings import BotSettings, load_bot_settings
from tests.gateway.bot.conftest import TOKEN, Services, face_photos, running_bot, stand_in
from tests.gateway.bot.standin import Person


def test_token_stays_out_of_logs_replies_and_store(services: Services, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> list[str]:
        async with stand_in() as api, running_bot(services, api):
            ann = Person(api, 6001)
            # A photo download that fails: aiohttp's error quotes the file URL, which holds the token.
            ann.says("/train")
            ann.sends_album(face_photos(5), group="gone")
            api.files.clear()
            await api.wait_for(ann.id, "sendmessage", contains="could not fetch your photos")
            ann.says("/txt2img a tree")
            await api.wait_for(ann.id, "sendmessage", contains="Queued")
            ann.says("/status")
            await api.wait_for(ann.id, "sendmessage", contains="recent jobs")
            return [s.text or "" for s in api.sent]

    replies = asyncio.run(scenario())
    assert "/file/bot***/photos/" in caplog.text  # the failed download was logged, its URL masked
    assert TOKEN not in caplog.text
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    assert all(TOKEN not in reply for reply in replies)
    stored = []
    for job in services.store.list_jobs(None).items:
        stored.append(json.dumps(job.payload))
        stored += [json.dumps(e.body) for e in services.store.list_events(job.id)]
    assert stored and all(TOKEN not in text for text in stored)


def test_settings_hide_token() -> None:
    settings = BotSettings(token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())


def test_settings_error_names_variable_not_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAMILL_TELEGRAM_TOKEN", TOKEN)
    monkeypatch.setenv("LORAMILL_TELEGRAM_ALBUM_MIN", "not-a-number")
    with pytest.raises(InvalidInput) as caught:
        load_bot_settings()
    assert "LORAMILL_TELEGRAM_ALBUM_MIN" in caught.value.message and TOKEN not in caught.value.message


def test_settings_without_token_says_where_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAMILL_TELEGRAM_TOKEN", raising=False)
    with pytest.raises(InvalidInput, match="LORAMILL_TELEGRAM_TOKEN: is not set; get a token from @BotFather"):
        load_bot_settings()


def test_run_bot_with_refused_token_names_setting(services: Services) -> None:
    wrong = "987654321:AAWrongTokenWrongTokenWrongToken-xyz"

    async def scenario() -> None:
        async with stand_in() as api:
            settings = BotSettings(token=wrong, api_url=f"http://127.0.0.1:{api.port}")
            await run_bot(settings, services.store, services.storage, services.broker)

    with pytest.raises(InvalidInput) as caught:
        asyncio.run(scenario())
    assert "Telegram refused LORAMILL_TELEGRAM_TOKEN" in caught.value.message
    assert wrong not in caught.value.message
