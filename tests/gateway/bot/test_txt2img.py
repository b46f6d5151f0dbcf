"""/txt2img end to end: the real bot long-polls a Bot API stand-in, the real worker draws, the photo arrives."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.gateway.bot.conftest import Services, decoded, running_bot, stand_in
from tests.gateway.bot.standin import Person


def test_txt2img_sends_png_to_chat(services: Services, worker: Any) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            worker()
            ann = Person(api, 1001)
            ann.says("/txt2img a red fox in the snow")
            queued = await api.wait_for(ann.id, "sendmessage", contains="Queued")
            assert "position 1" in (queued[0].text or "")
            photo = (await api.wait_for(ann.id, "sendphoto", timeout=60))[0]
            image = decoded(photo.data)
            assert image.format == "PNG" and image.size == (64, 64)
            assert photo.text == "a red fox in the snow"

    asyncio.run(scenario())
    # Ann's Telegram account became a loramill user on first contact, and the job is hers.
    ann = services.store.get_or_create_telegram_user(1001, "someone else")
    assert ann.name == "Ann"
    [job] = services.store.list_jobs(ann.id).items
    assert job.kind == "generate" and job.status == "completed"
    assert job.payload["prompt"] == "a red fox in the snow"
