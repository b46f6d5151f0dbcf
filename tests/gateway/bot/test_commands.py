"""What people see when they use the commands (no worker running: jobs stay queued)."""

from __future__ import annotations

import asyncio

from tests.gateway.bot.conftest import Services, face_photos, running_bot, stand_in
from tests.gateway.bot.standin import Person


def _last_line_word(text: str | None) -> str:
    return (text or "").rsplit(" ", 1)[-1]


def test_txt2img_without_prompt_explains_usage(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            ann = Person(api, 4001)
            ann.says("/txt2img")
            reply = (await api.wait_for(ann.id, "sendmessage"))[0]
            assert "/txt2img a red fox" in (reply.text or "")

    asyncio.run(scenario())
    assert services.store.count_queued() == 0


def test_txt2img_too_long_prompt_names_limit(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            ann = Person(api, 4002)
            ann.says("/txt2img " + "fox " * 400)
            reply = (await api.wait_for(ann.id, "sendmessage"))[0]
            assert "prompt is 1599 characters long; the limit is 1000" in (reply.text or "")

    asyncio.run(scenario())
    assert services.store.count_queued() == 0


def test_txt2img_reports_queue_position(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            ann, bob = Person(api, 4003), Person(api, 4004)
            ann.says("/txt2img a cat")
            await api.wait_for(ann.id, "sendmessage", contains="position 1")
            bob.says("/txt2img a dog")
            reply = (await api.wait_for(bob.id, "sendmessage"))[0]
            assert "position 2 (1 ahead of you)" in (reply.text or "")

    asyncio.run(scenario())


def test_status_and_cancel_see_only_own_jobs(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            ann, bob = Person(api, 4005, "Ann"), Person(api, 4006, "Bob")
            ann.says("/txt2img a lighthouse")
            ann_job = _last_line_word((await api.wait_for(ann.id, "sendmessage", contains="Queued"))[0].text)
            # Bob sees none of Ann's jobs and cannot cancel hers, by id or otherwise.
            bob.says("/status")
            assert "no jobs yet" in ((await api.wait_for(bob.id, "sendmessage"))[0].text or "")
            bob.says(f"/cancel {ann_job}")
            assert f"you have no job '{ann_job}'" in ((await api.wait_for(bob.id, "sendmessage", count=2))[1].text
                                                     or "")
            bob.says("/cancel")
            assert "no queued or running jobs" in ((await api.wait_for(bob.id, "sendmessage", count=3))[2].text
                                                  or "")
            assert services.store.get_job(ann_job).status == "queued"  # type: ignore[union-attr]
            # Ann sees hers, and cancels it.
            ann.says("/status")
            status = (await api.wait_for(ann.id, "sendmessage", contains="recent jobs"))[0]
            assert f"{ann_job}: picture, queued" in (status.text or "")
            ann.says("/cancel")
            await api.wait_for(ann.id, "sendmessage", contains=f"Job {ann_job}: canceled")

    asyncio.run(scenario())


def test_avatar_without_training_says_train_first(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            ann = Person(api, 4007)
            ann.says("/avatar me on the moon")
            await api.wait_for(ann.id, "sendmessage", contains="no avatar yet")

    asyncio.run(scenario())
    assert services.store.count_queued() == 0


def test_train_with_too_many_photos_is_refused(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            ann = Person(api, 4008)
            photos = face_photos(21)
            ann.sends_album(photos[:10], group="a", caption="/train")  # an album captioned /train starts it
            ann.sends_album(photos[10:20], group="b")
            ann.sends_album(photos[20:], group="c")
            await api.wait_for(ann.id, "sendmessage", contains="I got 21 photos; at most 20")

    asyncio.run(scenario())
    assert services.store.count_queued() == 0


def test_photos_without_train_get_one_hint_per_album(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            ann = Person(api, 4009)
            ann.sends_album(face_photos(3), group="holiday")
            await api.wait_for(ann.id, "sendmessage", contains="send /train first")
            ann.says("/help")  # answered after any further hint would have been
            await api.wait_for(ann.id, "sendmessage", contains="/txt2img")
            assert len(api.sent_to(ann.id, "sendmessage")) == 2

    asyncio.run(scenario())


def test_train_accepts_images_sent_as_files(services: Services) -> None:
    async def scenario() -> str:
        async with stand_in() as api, running_bot(services, api):
            ann = Person(api, 4010)
            ann.says("/train")
            ann.sends_files(face_photos(5))
            queued = await api.wait_for(ann.id, "sendmessage", contains="Got 5 photos")
            return _last_line_word(queued[0].text)

    job = services.store.get_job(asyncio.run(scenario()))
    assert job is not None and job.kind == "train" and len(job.payload["images"]) == 5
    assert job.payload["configurationParams"]["subjectType"] == "face"


def test_group_chat_answers_commands_only(services: Services) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api):
            ann, group = Person(api, 4011), -100500
            ann.says("nice weather today", in_group=group)
            ann.says("/help", in_group=group)
            await api.wait_for(group, "sendmessage", contains="/txt2img")
            ann.says("hello bot")  # privately, anything gets an answer
            await api.wait_for(ann.id, "sendmessage", contains="/help lists")
            assert len(api.sent_to(group, "sendmessage")) == 1

    asyncio.run(scenario())
