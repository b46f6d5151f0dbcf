"""The worker in this process on the embedded stack (SQLite store, sql broker, local folder) and a tiny SD 1.5.

The same ``Worker`` runs on Kafka, RabbitMQ and S3 in the end-to-end tests; here each behaviour is
checked quickly, one model load for the whole module.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loramill import metrics
from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.base import Storage
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.store import JobStore
from loramill.errors import TransientError
from loramill.jobs.handlers.models import ResidentModels
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.worker import Worker
from tests.jobs.worker_helpers import (
    EventLog,
    encode,
    generation_job,
    new_task_id,
    raw_bytes_and_order,
    selfix_job,
    upload_images,
)


@dataclass
class Rig:
    store: JobStore
    broker: SqlBroker
    storage: Storage
    worker: Worker
    events: EventLog

    def submit(self, message: dict) -> str:
        self.broker.publish_job(encode(message), task_id=message["taskId"])
        return str(message["taskId"])

    def run_one(self) -> str:
        """Receive and handle exactly one delivery; its outcome."""
        delivery = self.broker.receive(10)
        assert delivery is not None, "no job was delivered"
        return self.worker.handle(delivery)


class FlakyStorage(Storage):
    """A storage whose first ``failures`` downloads fail like an S3 outage would."""

    def __init__(self, inner: Storage, failures: int) -> None:
        self.inner, self.failures = inner, failures

    def get_file(self, key: str, path: Path) -> Path:
        if self.failures > 0:
            self.failures -= 1
            raise TransientError(f"S3 download of {key!r} failed: SlowDown, retry later")
        return self.inner.get_file(key, path)

    def put_bytes(self, *a, **k): return self.inner.put_bytes(*a, **k)  # noqa: E704
    def put_file(self, *a, **k): return self.inner.put_file(*a, **k)  # noqa: E704
    def get_bytes(self, *a, **k): return self.inner.get_bytes(*a, **k)  # noqa: E704
    def exists(self, *a, **k): return self.inner.exists(*a, **k)  # noqa: E704
    def delete(self, *a, **k): return self.inner.delete(*a, **k)  # noqa: E704
    def list(self, *a, **k): return self.inner.list(*a, **k)  # noqa: E704
    def url(self, *a, **k): return self.inner.url(*a, **k)  # noqa: E704


@pytest.fixture(scope="module")
def resident() -> ResidentModels:
    """One resident model cache for the module: the tiny model loads once, as in a real worker."""
    return ResidentModels()


@pytest.fixture
def rig(tmp_path: Path, tiny_sd15: Path, resident: ResidentModels) -> Iterator[Rig]:
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    broker = SqlBroker(store, lease_seconds=30)
    storage = LocalStorage(tmp_path / "storage")
    settings = WorkerSettings(models=f"sd15={tiny_sd15}", base_model="sd15", work_dir=tmp_path / "work",
                              progress_interval=0.05, cancel_check_interval=0.05, retry_base_seconds=0.01,
                              handback_seconds=0, receive_timeout=0.2)
    worker = Worker(settings, broker, store, storage, models=resident)
    yield Rig(store, broker, storage, worker, EventLog(broker.consume_events))
    broker.close()
    store.close()


def test_train_selfix_job_to_model_path_and_result_event(rig: Rig) -> None:
    images = upload_images(rig.storage, "user-7")
    task = rig.submit(selfix_job(new_task_id(), "user-7", images))

    assert rig.run_one() == "completed"

    done = rig.events.wait_for(task, "completed")[0]
    assert done["modelPath"] == f"users/user-7/models/{task}.safetensors"
    assert rig.storage.exists(done["modelPath"])
    assert isinstance(done["metrics"]["trainingTime"], int) and done["metrics"]["finalLoss"] > 0
    body = next(b for b in rig.events.raw if json.loads(b).get("status") == "completed")
    assert raw_bytes_and_order(body) == ["taskId", "userId", "status", "modelPath", "metrics"]
    assert list(json.loads(body)["metrics"]) == ["trainingTime", "finalLoss"]
    # Results only on the output queue (LORAMILL_PROGRESS_TOPIC unset); the job store has the whole story.
    assert [e["status"] for e in rig.events.events(task)] == ["completed"]
    stored = [e.body["status"] for e in rig.store.list_events(task)]
    assert stored[0] == "processing" and stored[-1] == "completed"
    lora = rig.store.get_lora(task)
    assert lora is not None and lora.user_id == "user-7" and lora.trigger_word == "sks" and lora.family == "sd15"
    assert rig.storage.list(f"checkpoints/{task}/") == []  # the finished job's checkpoints are not kept


def test_republish_stored_result_on_duplicate_delivery(rig: Rig) -> None:
    images = upload_images(rig.storage, "user-8")
    message = selfix_job(new_task_id(), "user-8", images)
    task = rig.submit(message)
    assert rig.run_one() == "completed"
    first = rig.events.wait_for(task, "completed")[0]
    stored = Path(rig.storage.root) / first["modelPath"]  # type: ignore[attr-defined]
    written_at = stored.stat().st_mtime_ns

    rig.submit(message)
    assert rig.run_one() == "duplicate"

    again = rig.events.wait_for(task, "completed", count=2)
    assert again[0] == again[1]
    assert stored.stat().st_mtime_ns == written_at  # nothing trained or uploaded again
    assert rig.store.get_job(task).attempts == 1  # type: ignore[union-attr]


def test_dead_letter_poison_messages_and_process_next_job(rig: Rig) -> None:
    rig.broker.publish_job(b"{not json", task_id="poison-1")
    rig.broker.publish_job(b'{"taskId": "t-bad", "userId": "u", "images": "not-a-list"}', task_id="t-bad")
    images = upload_images(rig.storage, "user-9")
    task = rig.submit(selfix_job(new_task_id(), "user-9", images, maxSteps=2))

    outcomes = [rig.run_one() for _ in range(3)]

    assert outcomes == ["dead_lettered", "dead_lettered", "completed"]
    reasons = [d.reason or "" for d in rig.broker.dead_letters()]
    assert reasons[0].startswith("invalid_json:") and "images" in reasons[1]
    refused = rig.events.wait_for("t-bad", "failed")[0]
    assert refused["error"]["code"] == "invalid_field" and "images" in refused["error"]["message"]
    rig.events.wait_for(task, "completed")


def test_store_failed_row_for_job_refused_at_parse_time(rig: Rig) -> None:
    # A client that reads status from the job store (not the topic) must find the refused task, failed.
    rig.broker.publish_job(b'{"taskId": "t-refused", "userId": "u-r", "prompt": "x", "steps": "many"}',
                           task_id="t-refused")

    assert rig.run_one() == "dead_lettered"

    record = rig.store.get_job("t-refused")
    assert record is not None and record.status == "failed" and record.kind == "generate"
    assert record.user_id == "u-r" and "steps" in record.error["message"]  # type: ignore[index]
    assert [e.body["status"] for e in rig.store.list_events("t-refused")] == ["failed"]
    assert rig.events.wait_for("t-refused", "failed")[0]["error"]["code"] == "invalid_field"


def test_fail_job_naming_unknown_base_model_and_configured_ones(rig: Rig) -> None:
    task = rig.submit(generation_job(new_task_id(), "user-1", baseModel="sdxl-turbo"))

    assert rig.run_one() == "failed"

    error = rig.events.wait_for(task, "failed")[0]["error"]
    assert error["code"] == "unknown_base_model"
    assert "baseModel" in error["message"] and "sd15" in error["message"]


def test_generate_images_with_own_lora_and_refuse_someone_elses(rig: Rig) -> None:
    images = upload_images(rig.storage, "owner")
    lora_task = rig.submit(selfix_job(new_task_id(), "owner", images, maxSteps=2))
    assert rig.run_one() == "completed"

    mine = rig.submit(generation_job(new_task_id(), "owner", numImages=2, loras=[{"id": lora_task, "weight": 0.8}]))
    theirs = rig.submit(generation_job(new_task_id(), "stranger", loras=[{"id": lora_task}]))
    # In either order: the stranger, never served, may go first (fair share between users)
    assert sorted([rig.run_one(), rig.run_one()]) == ["completed", "failed"]

    done = rig.events.wait_for(mine, "completed")[0]
    assert done["imagePaths"] == [f"users/owner/generations/{mine}/0.png", f"users/owner/generations/{mine}/1.png"]
    assert all(rig.storage.get_bytes(key).startswith(b"\x89PNG") for key in done["imagePaths"])
    assert rig.events.wait_for(theirs, "failed")[0]["error"]["code"] == "not_found"


def test_cancel_running_training_at_next_step(rig: Rig) -> None:
    images = upload_images(rig.storage, "user-c")
    task = rig.submit(selfix_job(new_task_id(), "user-c", images, maxSteps=2000, checkpointEverySteps=2))
    canceler = threading.Thread(target=_when_training(rig, task, lambda: rig.store.request_cancel(task)))
    canceler.start()

    outcome = rig.run_one()
    canceler.join()

    assert outcome == "canceled"
    assert rig.store.get_job(task).status == "canceled"  # type: ignore[union-attr]
    assert rig.events.wait_for(task, "canceled")
    assert rig.storage.list(f"checkpoints/{task}/")  # the work done so far is kept


def test_hand_back_on_shutdown_then_resume_from_checkpoint(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="loramill")
    images = upload_images(rig.storage, "user-s")
    task = rig.submit(selfix_job(new_task_id(), "user-s", images, maxSteps=8, checkpointEverySteps=2))
    stopper = threading.Thread(target=_when_training(rig, task, rig.worker.stop))
    stopper.start()

    assert rig.run_one() == "handed_back"
    stopper.join()
    assert rig.store.get_job(task).status == "queued"  # type: ignore[union-attr]
    saved = sorted(rig.storage.list(f"checkpoints/{task}/"))
    checkpoint_step = max(int(k.split("/")[2].removeprefix("step-")) for k in saved)

    # The worker starts again, gets the job back and finishes it from that step.
    rig.worker.shutdown.clear()
    assert rig.run_one() == "completed"
    resumed = [r for r in caplog.records if "resuming training from checkpoint step" in r.getMessage()]
    assert resumed and resumed[-1].resumed_from_step == checkpoint_step
    assert rig.store.get_lora(task).metrics["steps"] == 8  # type: ignore[union-attr]
    assert len(rig.events.wait_for(task, "completed")) == 1


def test_retry_transient_storage_failure_and_complete(rig: Rig) -> None:
    images = upload_images(rig.storage, "user-r")
    rig.worker.storage = FlakyStorage(rig.storage, failures=2)
    before = metrics.RETRIES.labels(operation="storage.get_file")._value.get()
    task = rig.submit(selfix_job(new_task_id(), "user-r", images, maxSteps=2))

    assert rig.run_one() == "completed"

    assert metrics.RETRIES.labels(operation="storage.get_file")._value.get() == before + 2
    rig.events.wait_for(task, "completed")


def test_publish_throttled_progress_events(rig: Rig) -> None:
    images = upload_images(rig.storage, "user-p")
    task = rig.submit(selfix_job(new_task_id(), "user-p", images, maxSteps=4))
    rig.worker.settings.progress_interval = 3600  # one report, then silence for an hour

    assert rig.run_one() == "completed"

    rig.events.wait_for(task, "completed")
    progress = [e.body["progress"] for e in rig.store.list_events(task) if "progress" in e.body]
    # The first report, then only each stage's last step (so the finished job reads n/n, not a stale step)
    assert set(progress[0]) >= {"step", "totalSteps"}
    assert all(p["step"] == p["totalSteps"] for p in progress[1:]) and len(progress) <= 1 + len(
        {p.get("stage") for p in progress})
    assert progress[-1] == {"step": 4, "totalSteps": 4, "stage": "train"}
    assert rig.store.get_job(task).progress is not None  # type: ignore[union-attr]


def _when_training(rig: Rig, task_id: str, action) -> callable:  # type: ignore[valid-type]
    """A thread body that waits until ``task_id`` has a stored checkpoint, then runs ``action``."""
    def body() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(k.endswith("checkpoint.json") for k in rig.storage.list(f"checkpoints/{task_id}/")):
                action()
                return
            time.sleep(0.05)
    return body


def test_train_afresh_when_stored_checkpoint_has_other_settings(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="loramill")
    images = upload_images(rig.storage, "user-f")
    task = new_task_id()
    for name, data in (("lora.safetensors", b"x"), ("state.pt", b"x"),
                       ("checkpoint.json", b'{"step": 3, "fingerprint": "made-by-another-config"}')):
        rig.storage.put_bytes(f"checkpoints/{task}/step-000003/{name}", data)
    rig.submit(selfix_job(task, "user-f", images, maxSteps=4))

    assert rig.run_one() == "completed"

    assert any("made with other settings" in r.getMessage() for r in caplog.records)
    assert not any("resuming training" in r.getMessage() for r in caplog.records)
    assert rig.store.get_lora(task).metrics["steps"] == 4  # type: ignore[union-attr]


def test_hand_back_job_of_kind_this_worker_does_not_take(rig: Rig) -> None:
    rig.worker.settings.jobs = "generate"
    task = rig.submit(selfix_job(new_task_id(), "user-k", ["users/user-k/images/a.jpg"]))

    assert rig.run_one() == "skipped"

    assert rig.broker.queue_depth() == 1  # still there for a training worker
    assert rig.store.get_job(task) is None  # nothing claimed, nothing published
    assert rig.events.events(task) == []


def test_dead_letter_event_sent_as_job_without_answering_it(rig: Rig) -> None:
    # Input and output crossed in the configuration: answering events with events would loop.
    echoed = json.dumps({"taskId": "t-echo", "userId": "user-e", "status": "processing"}).encode()
    rig.broker.publish_job(echoed, task_id="t-echo")

    assert rig.run_one() == "dead_lettered"

    rig.events.drain(0.5)
    assert rig.events.events("t-echo") == []
    assert "neither 'images'" in (rig.broker.dead_letters()[-1].reason or "")


def test_render_cheaper_images_while_queue_is_long(rig: Rig) -> None:
    from loramill.engine.generation.quality import LoadPolicy

    rig.worker.load_policy = LoadPolicy(target_seconds=0.001)  # every queued job would be late
    first, second, third = new_task_id(), new_task_id(), new_task_id()
    rig.submit(generation_job(first, "p2p", steps=5))
    rig.submit(generation_job(second, "p2p", steps=5))

    assert [rig.run_one(), rig.run_one()] == ["completed", "completed"]
    # With a target it can meet, a job alone in the queue is rendered as asked.
    rig.worker.load_policy = LoadPolicy(target_seconds=600)
    rig.submit(generation_job(third, "p2p", steps=5))
    assert rig.run_one() == "completed"

    rushed = rig.events.wait_for(first, "completed")[0]
    # The second job had nobody behind it, but it waited past the target while the first ran: it is
    # late either way, so it is rendered cheaply too (counting the wait keeps a burst's tail on time).
    late = rig.events.wait_for(second, "completed")[0]
    calm = rig.events.wait_for(third, "completed")[0]
    assert rushed["metrics"]["quality"] != "full" and late["metrics"]["quality"] != "full"
    assert calm["metrics"]["quality"] == "full"
    assert b"Steps: 2," in rig.storage.get_bytes(rushed["imagePaths"][0])  # 40 % of the 5 asked for
    assert b"Steps: 5," in rig.storage.get_bytes(calm["imagePaths"][0])


def test_fail_training_naming_rejected_images_by_storage_key(rig: Rig) -> None:
    images = upload_images(rig.storage, "user-t", count=2)
    for name in ("tiny1.jpg", "tiny2.jpg"):
        rig.storage.put_bytes(f"users/user-t/images/{name}", b"\xff\xd8 not really a jpeg")
    keys = images + ["users/user-t/images/tiny1.jpg", "users/user-t/images/tiny2.jpg"]
    task = rig.submit(selfix_job(new_task_id(), "user-t", keys))

    assert rig.run_one() == "failed"

    error = rig.events.wait_for(task, "failed")[0]["error"]
    assert error["code"] == "too_few_images"
    assert "users/user-t/images/tiny1.jpg" in error["message"] and "/inputs/" not in error["message"]
    assert str(rig.worker.settings.work_dir) not in error["message"]


def test_continue_own_lora_by_id_or_key_and_refuse_others(rig: Rig) -> None:
    images = upload_images(rig.storage, "owner")
    first = rig.submit(selfix_job(new_task_id(), "owner", images, maxSteps=2))
    assert rig.run_one() == "completed"
    key = rig.events.wait_for(first, "completed")[0]["modelPath"]

    by_id = rig.submit(selfix_job(new_task_id(), "owner", images, maxSteps=2, initLora=first, preserveWeight=0.5))
    by_key = rig.submit(selfix_job(new_task_id(), "owner", images, maxSteps=2, initLora=key))
    stranger_images = upload_images(rig.storage, "stranger")
    theirs = rig.submit(selfix_job(new_task_id(), "stranger", stranger_images, maxSteps=2, initLora=first))
    their_key = rig.submit(selfix_job(new_task_id(), "stranger", stranger_images, maxSteps=2, initLora=key))
    # In any order: the stranger, never served, may go first (fair share between users)
    assert sorted(rig.run_one() for _ in range(4)) == ["completed", "completed", "failed", "failed"]

    assert rig.events.wait_for(by_id, "completed") and rig.events.wait_for(by_key, "completed")
    for task in (theirs, their_key):
        error = rig.events.wait_for(task, "failed")[0]["error"]
        assert error["code"] == "not_found" and "initLora" in error["message"]


def test_fail_generation_whose_images_would_pass_the_users_storage_quota(rig: Rig) -> None:
    rig.storage.put_bytes("users/user-1/images/kept.bin", b"x" * 20_000, "application/octet-stream")
    rig.worker.quota.limit = 25_000  # a 64 px PNG of noise takes ~10 kB: user-2's fits, user-1's does not

    task = rig.submit(generation_job(new_task_id(), "user-1"))
    other = rig.submit(generation_job(new_task_id(), "user-2"))
    assert sorted([rig.run_one(), rig.run_one()]) == ["completed", "failed"]  # user-2's share is his own

    error = rig.events.wait_for(task, "failed")[0]["error"]
    assert error["code"] == "storage_quota_exceeded" and "LORAMILL_USER_STORAGE_BYTES" in error["message"]
    assert rig.storage.list(f"users/user-1/generations/{task}/") == []
    assert rig.events.wait_for(other, "completed")


def test_fail_training_of_a_user_over_the_storage_quota_before_it_trains(rig: Rig) -> None:
    images = upload_images(rig.storage, "user-1")
    rig.worker.quota.limit = 1000  # the uploads alone take more

    task = rig.submit(selfix_job(new_task_id(), "user-1", images))
    assert rig.run_one() == "failed"

    error = rig.events.wait_for(task, "failed")[0]["error"]
    assert error["code"] == "storage_quota_exceeded" and "nothing more fits" in error["message"]
    assert not rig.storage.exists(f"users/user-1/models/{task}.safetensors")
