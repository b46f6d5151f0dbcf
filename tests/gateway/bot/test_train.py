"""/train with an album of face photos, then /avatar: the person's own LoRA draws their picture."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.gateway.bot.conftest import Services, decoded, face_photos, running_bot, stand_in
from tests.gateway.bot.standin import Person


def test_train_album_then_avatar_sends_photo(services: Services, worker: Any) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            worker()
            ann = Person(api, 2002)
            # 1. /train, then one album of five photos: the bot queues one face-mode training.
            ann.says("/train")
            await api.wait_for(ann.id, "sendmessage", contains="photos of your face")
            ann.sends_album(face_photos(5), group="album-1")
            queued = await api.wait_for(ann.id, "sendmessage", contains="Got 5 photos")
            train_id = (queued[0].text or "").rsplit(" ", 1)[-1]
            # 2. The worker trains; the bot says the avatar is ready.
            await api.wait_for(ann.id, "sendmessage", contains="avatar is ready", timeout=90)
            # 3. /avatar draws with that LoRA, and the picture arrives.
            ann.says("/avatar portrait in a space suit")
            await api.wait_for(ann.id, "sendmessage", contains="Queued", count=2)
            photo = (await api.wait_for(ann.id, "sendphoto", timeout=60))[0]
            assert decoded(photo.data).format == "PNG"
            assert photo.text == "sks, portrait in a space suit"

        training = services.store.get_job(train_id)
        assert training is not None and training.status == "completed"
        assert training.payload["configurationParams"]["subjectType"] == "face"
        assert len(training.payload["images"]) == 5
        assert all(k.startswith(f"users/{training.user_id}/images/{train_id}/") for k in training.payload["images"])
        generation = services.store.list_jobs(training.user_id, kind="generate").items[0]
        assert generation.payload["loras"] == [{"id": train_id, "weight": 1.0}]

    asyncio.run(scenario())
