"""Results reach the chat exactly once: across bot restarts, and as a message when the job failed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loramill.domain.status import JobStatus
from loramill.gateway.api.service import Gateway
from loramill.gateway.bot.app import build_bot
from loramill.gateway.bot.jobs import BotServices
from loramill.gateway.bot.results import ResultLoop
from loramill.gateway.settings import GatewaySettings
from tests.gateway.bot.conftest import Services, bot_settings, decoded, png_bytes, running_bot, stand_in
from tests.gateway.bot.standin import Person


async def _until_finished(services: Services, task_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await asyncio.to_thread(services.store.get_job, task_id)
        if job is not None and job.status.terminal:
            return str(job.status)
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {task_id} did not finish in {timeout}s")


def test_restart_delivers_result_finished_while_down_once(services: Services, worker: Any) -> None:
    async def scenario() -> str:
        async with stand_in() as api:
            ann = Person(api, 5001)
            # 1. The bot queues the job, then goes down.
            async with running_bot(services, api):
                ann.says("/txt2img a windmill at dusk")
                task_id = ((await api.wait_for(ann.id, "sendmessage", contains="Queued"))[0].text or "").split()[-1]
            # 2. The worker finishes it while no bot runs.
            worker()
            assert await _until_finished(services, task_id) == "completed"
            assert api.sent_to(ann.id, "sendphoto") == []
            # 3. The bot comes back and sends it.
            async with running_bot(services, api):
                photo = (await api.wait_for(ann.id, "sendphoto", timeout=20))[0]
                assert decoded(photo.data).format == "PNG"
            # 4. Another restart sends nothing more: a few result rounds, then a reply proves it is live.
            async with running_bot(services, api):
                await asyncio.sleep(0.5)
                ann.says("/help")
                await api.wait_for(ann.id, "sendmessage", contains="/txt2img")
            assert len(api.sent_to(ann.id, "sendphoto")) == 1
            return task_id

    task_id = asyncio.run(scenario())
    assert services.store.delivered_at(task_id) is not None
    # The restarted bot was given the unconfirmed /txt2img again; it found the job instead of adding one.
    owner = services.store.get_job(task_id).user_id  # type: ignore[union-attr]
    assert [j.id for j in services.store.list_jobs(owner).items] == [task_id]


def test_failed_job_sends_its_error_message(services: Services, worker: Any) -> None:
    async def scenario() -> None:
        async with stand_in() as api, running_bot(services, api, base_model="no-such-model"):
            worker()
            ann = Person(api, 5002)
            ann.says("/txt2img a boat")
            failure = (await api.wait_for(ann.id, "sendmessage", contains="failed", timeout=30))[0]
            assert "Your picture failed: baseModel: 'no-such-model' is not a model this worker has" in (
                failure.text or "")
            assert api.sent_to(ann.id, "sendphoto") == []

    asyncio.run(scenario())


def _finished_generation(services: Services, chat_id: int, image: bytes | None) -> str:
    """A generation job of a Telegram user that a worker has completed (its image stored, if given)."""
    user = services.store.get_or_create_telegram_user(chat_id, "Ann")
    task_id = f"done-{chat_id}"
    key = f"users/{user.id}/generations/{task_id}/0.png"
    services.store.create_job(task_id, user.id, "generate", {"taskId": task_id, "userId": user.id, "prompt": "a kite"})
    services.store.transition(task_id, JobStatus.PROCESSING)
    if image is not None:
        services.storage.put_bytes(key, image, "image/png")
    services.store.transition(task_id, JobStatus.COMPLETED, result={"taskId": task_id, "imagePaths": [key]})
    return task_id


async def _run_loop(services: Services, api: Any, task_id: str, chat_id: int, until: Any) -> ResultLoop:
    settings = bot_settings(f"http://127.0.0.1:{api.port}")
    bot = build_bot(settings)
    svc = BotServices(settings, Gateway(GatewaySettings(), services.store, services.storage, services.broker))
    svc.deliveries.expect_delivery(task_id, chat_id)
    loop = ResultLoop(bot, svc, poll_interval=0.02, retry_base=0.05)
    stop = asyncio.Event()
    running = asyncio.create_task(loop.run(stop))
    try:
        await until()
    finally:
        stop.set()
        await running
        await bot.session.close()
    return loop


def test_result_retried_after_server_error_arrives_once(services: Services) -> None:
    chat_id = 5003
    png = png_bytes()
    task_id = _finished_generation(services, chat_id, png)

    async def scenario() -> None:
        async with stand_in() as api:
            api.fail_next("sendPhoto")  # Telegram answers 500 once
            await _run_loop(services, api, task_id, chat_id, lambda: api.wait_for(chat_id, "sendphoto"))
            await asyncio.sleep(0.2)  # several more rounds of the loop
            assert [m for m, _ in api.refused] == ["sendphoto"]
            photos = api.sent_to(chat_id, "sendphoto")
            assert len(photos) == 1 and photos[0].data == png

    asyncio.run(scenario())
    assert services.store.delivered_at(task_id) is not None


def test_result_with_missing_image_is_given_up(services: Services) -> None:
    chat_id = 5004
    task_id = _finished_generation(services, chat_id, None)

    async def scenario() -> None:
        async with stand_in() as api:
            async def given_up() -> None:
                while services.store.delivered_at(task_id) is None:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(_run_loop(services, api, task_id, chat_id, given_up), 20)
            assert api.sent_to(chat_id, "sendphoto") == []

    asyncio.run(scenario())



def test_avatar_note_shows_quality_when_the_training_evaluated_itself() -> None:
    from datetime import UTC, datetime

    from loramill.domain.records import JobRecord
    from loramill.domain.status import JobStatus
    from loramill.gateway.bot.results import quality_note

    now = datetime.now(UTC)

    def job(metrics: dict[str, Any]) -> JobRecord:
        return JobRecord(id="t1", kind="train", user_id="u", status=JobStatus.COMPLETED, priority=0, payload={},
                         attempts=1, progress=None, result={"metrics": metrics}, error=None, quality=None,
                         cancel_requested=False, idempotency_key=None, created_at=now, updated_at=now,
                         started_at=now, finished_at=now)

    note = quality_note(job({"trainingTime": 30, "consistency": 0.8123, "preservation": 0.954}))
    assert note == "\nQuality: likeness to your photos 0.81, other pictures kept as they were 0.95 (1.00 is perfect)."
    assert quality_note(job({"trainingTime": 30, "finalLoss": 0.1})) == ""
