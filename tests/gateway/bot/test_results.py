"""Results reach the chat exactly once: across bot restarts, and as a message when the job failed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loramill.gateway.bot.deliveries import Deliveries
from tests.gateway.bot.conftest import Services, decoded, running_bot, stand_in
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
    assert Deliveries(services.store.db).delivered_at(task_id) is not None
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
