"""The worker holding several generation jobs: same-LoRA ones share a denoising run, trainings run alone.

Embedded stack (SQLite store, sql broker, local folder) and the tiny SD 1.5, through ``Worker.run``.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.store import JobStore
from loramill.engine.generation.generate import GenerateRequest, Generator
from loramill.engine.generation.loras import LoraRef
from loramill.jobs.handlers.models import ResidentModels
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.worker import Worker
from tests.jobs.worker_helpers import EventLog, encode, generation_job, new_task_id, selfix_job, upload_images


class Stack:
    def __init__(self, root: Path, model: Path, batch: int) -> None:
        self.store = JobStore(f"sqlite:///{root / 'loramill.db'}")
        self.broker = SqlBroker(self.store, lease_seconds=30)
        self.storage = LocalStorage(root / "storage")
        settings = WorkerSettings(models=f"sd15={model}", base_model="sd15", work_dir=root / "work",
                                  progress_interval=0.05, cancel_check_interval=0.05, retry_base_seconds=0.01,
                                  handback_seconds=0, receive_timeout=0.1, generation_batch=batch)
        self.worker = Worker(settings, self.broker, self.store, self.storage, models=ResidentModels())
        self.events = EventLog(self.broker.consume_events)

    def submit(self, message: dict) -> str:
        self.broker.publish_job(encode(message), task_id=message["taskId"])
        return str(message["taskId"])

    def run(self, jobs: int) -> None:
        thread = threading.Thread(target=self.worker.run, kwargs={"max_jobs": self.worker.handled + jobs})
        thread.start()
        thread.join(240)
        assert not thread.is_alive(), "the worker did not finish its jobs"

    def close(self) -> None:
        self.broker.close()
        self.store.close()


@pytest.fixture
def stack(tmp_path: Path, tiny_sd15: Path) -> Iterator[Stack]:
    s = Stack(tmp_path, tiny_sd15, batch=4)
    yield s
    s.close()


def png(storage: LocalStorage, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.get_bytes(key))).convert("RGB"), dtype=np.int16)


def test_queued_generations_share_runs_and_each_image_is_its_lone_render(stack: Stack, tiny_sd15: Path,
                                                                         tmp_path: Path) -> None:
    # 1. A LoRA to generate with (a training runs alone on the worker)
    lora = stack.submit(selfix_job(new_task_id(), "u", upload_images(stack.storage, "u"), maxSteps=2))
    stack.run(1)
    stack.events.wait_for(lora, "completed")
    # 2. A first job whose run waits until the worker has taken the next four (as a long render would):
    #    they queue behind it and then share one run — the LoRA changes only the denoiser, so the two
    #    images with it and the two without render together, each with its own adapter.
    batcher = stack.worker.batcher
    run = batcher._run
    first_started = threading.Event()

    def first_run_waits_for_the_others(batch: list) -> None:
        if batcher.runs == 0:
            first_started.set()
            deadline = time.monotonic() + 120
            while len(batcher._scheduler) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
        run(batch)

    batcher._run = first_run_waits_for_the_others  # type: ignore[method-assign]
    slow = stack.submit(generation_job(new_task_id(), "u", steps=10))
    worker = threading.Thread(target=stack.run, args=(5,))
    worker.start()
    # The others are sent once the slow one's run has begun, so that run is the slow job's alone
    # whatever order the worker's threads reach the batcher in.
    assert first_started.wait(120)
    with_lora = [stack.submit(generation_job(new_task_id(), "u", seed=s, loras=[{"id": lora, "weight": 0.9}]))
                 for s in (3, 4)]
    plain = [stack.submit(generation_job(new_task_id(), "u", seed=s)) for s in (5, 6)]
    worker.join(240)
    done = {t: stack.events.wait_for(t, "completed")[0] for t in [slow, *with_lora, *plain]}
    assert stack.worker.batcher.runs == 2 and stack.worker.batcher.jobs == 5
    # 3. Batching changes nothing a user sees: each PNG is the image its request gives alone.
    weights = stack.storage.get_file(f"users/u/models/{lora}.safetensors", tmp_path / "lora.safetensors")
    alone = Generator(str(tiny_sd15))
    for task, seed, loras in [(with_lora[0], 3, [LoraRef(weights, 0.9)]), (plain[1], 6, [])]:
        request = GenerateRequest(prompt="sks, a portrait, white background", width=64, height=64, steps=2,
                                  guidance=5.0, seed=seed, loras=loras)
        expected = np.asarray(alone.generate(request)[0].image, dtype=np.int16)
        assert np.abs(png(stack.storage, done[task]["imagePaths"][0]) - expected).max() <= 2


def test_training_waits_for_held_generations_and_runs_alone(stack: Stack) -> None:
    first = stack.submit(generation_job(new_task_id(), "u", steps=20))
    training = stack.submit(selfix_job(new_task_id(), "u", upload_images(stack.storage, "u"), maxSteps=2))
    last = stack.submit(generation_job(new_task_id(), "u", seed=9))
    stack.run(3)
    for task in (first, training, last):
        stack.events.wait_for(task, "completed")
    # Store event ids are global and increasing: they order events across jobs.
    order = sorted((e.id, task, e.body["status"]) for task in (first, training, last)
                   for e in stack.store.list_events(task))
    order = [(task, status) for _, task, status in order]
    # The training started (its first event) only after the generation held before it completed,
    # and the generation after it was not taken until the training had completed.
    assert order.index((first, "completed")) < order.index((training, "processing"))
    assert order.index((training, "completed")) < next(i for i, e in enumerate(order) if e[0] == last)


def test_batch_of_one_keeps_one_job_at_a_time(tmp_path: Path, tiny_sd15: Path) -> None:
    stack = Stack(tmp_path, tiny_sd15, batch=1)
    try:
        assert stack.worker.hold == 1
        tasks = [stack.submit(generation_job(new_task_id(), "u", seed=s)) for s in (1, 2, 3)]
        stack.run(3)
        for task in tasks:
            stack.events.wait_for(task, "completed")
        assert stack.worker.batcher.runs == 3
    finally:
        stack.close()
