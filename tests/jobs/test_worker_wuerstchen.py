"""Würstchen through the worker: generation jobs render, LoRAs and training are refused by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.store import JobStore
from loramill.engine.models.tiny import write_tiny_model
from loramill.jobs.handlers.models import ResidentModels
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.worker import Worker
from tests.jobs.test_worker import Rig
from tests.jobs.worker_helpers import EventLog, generation_job, new_task_id, selfix_job, upload_images


@pytest.fixture(scope="module")
def tiny_wuerstchen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model("wuerstchen", tmp_path_factory.mktemp("wuerstchen") / "model", seed=0)


@pytest.fixture
def rig(tmp_path: Path, tiny_sd15: Path, tiny_wuerstchen: Path) -> Iterator[Rig]:
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    broker = SqlBroker(store, lease_seconds=30)
    storage = LocalStorage(tmp_path / "storage")
    settings = WorkerSettings(models=f"sd15={tiny_sd15},wuerstchen={tiny_wuerstchen}", base_model="wuerstchen",
                              work_dir=tmp_path / "work", progress_interval=0.05, receive_timeout=0.2,
                              retry_base_seconds=0.01, handback_seconds=0)
    worker = Worker(settings, broker, store, storage, models=ResidentModels(max_resident=2))
    yield Rig(store, broker, storage, worker, EventLog(broker.consume_events))
    broker.close()
    store.close()


def test_wuerstchen_generation_job_stores_its_images(rig: Rig) -> None:
    task = rig.submit(generation_job(new_task_id(), "user-w", width=128, height=128, steps=2, numImages=2))
    assert rig.run_one() == "completed"
    done = rig.events.wait_for(task, "completed")[0]
    assert done["imagePaths"] == [f"users/user-w/generations/{task}/{n}.png" for n in range(2)]
    assert all(rig.storage.get_bytes(key).startswith(b"\x89PNG") for key in done["imagePaths"])


def test_wuerstchen_refuses_loras_and_training_by_field(rig: Rig) -> None:
    images = upload_images(rig.storage, "user-w")
    lora_task = rig.submit(selfix_job(new_task_id(), "user-w", images, baseModel="sd15", maxSteps=2))
    assert rig.run_one() == "completed"

    with_lora = rig.submit(generation_job(new_task_id(), "user-w", loras=[{"id": lora_task}]))
    training = rig.submit(selfix_job(new_task_id(), "user-w", images, baseModel="wuerstchen"))
    assert [rig.run_one(), rig.run_one()] == ["failed", "failed"]
    lora_error = rig.events.wait_for(with_lora, "failed")[0]["error"]
    assert lora_error["code"] == "lora_incompatible" and "trains no LoRAs" in lora_error["message"]
    train_error = rig.events.wait_for(training, "failed")[0]["error"]
    assert train_error["code"] == "unsupported_model"
    assert "generates with but does not train" in train_error["message"]
