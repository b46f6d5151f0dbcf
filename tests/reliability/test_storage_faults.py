"""Storage faults during a real training: S3 stopped mid-upload, and a full disk while saving a checkpoint.

S3 is moto's server behind a ``TcpFront`` (see helpers): stopping the front is what clients of a
stopped S3 see — refused and cut connections — while the objects survive, as they would on a real
S3 outage. The full disk is a real 64 MB tmpfs filled to the last byte once the first checkpoint is
written, so the next one fails with ``ENOSPC`` from the kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from loramill.adapters.broker.sql import SqlBroker
from loramill.adapters.storage.base import Storage
from loramill.adapters.storage.local import LocalStorage
from loramill.adapters.storage.s3 import S3Storage
from loramill.adapters.store import JobStore
from loramill.engine.training.checkpoint import list_checkpoints
from loramill.errors import LoramillError, TransientError
from loramill.jobs.handlers import checkpoints
from loramill.jobs.handlers.models import ResidentModels, resolve_base_model
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.worker import Worker
from tests.engine.conftest import train_config
from tests.jobs.e2e_helpers import s3_client
from tests.jobs.worker_helpers import selfix_job, upload_images
from tests.reliability.helpers import TcpFront, record_figure
from tests.services.s3 import S3_TEST_ACCESS_KEY, S3_TEST_BUCKET, S3_TEST_REGION, S3_TEST_SECRET_KEY

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def resident() -> ResidentModels:
    return ResidentModels()


class Tripwire(Storage):
    """Passes every call to ``inner``; ``trip(key)`` runs before the first upload whose key matches."""

    def __init__(self, inner: Storage, when: Callable[[str], bool], trip: Callable[[], None],
                 after: Callable[[str], None] | None = None) -> None:
        self.inner, self.when, self.trip, self.after = inner, when, trip, after
        self.tripped = False
        self.upload_failures = 0

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        if not self.tripped and self.when(key):
            self.tripped = True
            self.trip()
        try:
            self.inner.put_file(key, path, content_type)
        except TransientError:
            self.upload_failures += 1
            raise
        if self.after is not None:
            self.after(key)

    def put_bytes(self, *a: Any, **k: Any) -> None: return self.inner.put_bytes(*a, **k)  # noqa: E704
    def get_bytes(self, *a: Any, **k: Any) -> bytes: return self.inner.get_bytes(*a, **k)  # noqa: E704
    def get_file(self, *a: Any, **k: Any) -> Path: return self.inner.get_file(*a, **k)  # noqa: E704
    def exists(self, *a: Any, **k: Any) -> bool: return self.inner.exists(*a, **k)  # noqa: E704
    def delete(self, *a: Any, **k: Any) -> None: return self.inner.delete(*a, **k)  # noqa: E704
    def list(self, *a: Any, **k: Any) -> list[str]: return self.inner.list(*a, **k)  # noqa: E704
    def url(self, *a: Any, **k: Any) -> str | None: return self.inner.url(*a, **k)  # noqa: E704


@dataclass
class Rig:
    store: JobStore
    broker: SqlBroker
    worker: Worker

    def submit(self, message: dict[str, Any]) -> str:
        self.broker.publish_job(json.dumps(message).encode(), task_id=message["taskId"])
        return str(message["taskId"])

    def run_one(self) -> str:
        delivery = self.broker.receive(10)
        assert delivery is not None, "no job was delivered"
        return self.worker.handle(delivery)

    def events(self, task: str) -> list[dict[str, Any]]:
        return [e for e in (json.loads(b) for b in self.broker.consume_events(0.5)) if e["taskId"] == task]


def make_rig(tmp_path: Path, tiny_sd15: Path, resident: ResidentModels, storage: Storage, work_dir: Path,
             **settings: Any) -> Rig:
    store = JobStore(f"sqlite:///{tmp_path / 'loramill.db'}")
    broker = SqlBroker(store, lease_seconds=60)
    options: dict[str, Any] = dict(models=f"sd15={tiny_sd15}", base_model="sd15", work_dir=work_dir,
                                   progress_interval=5, retry_attempts=4, retry_base_seconds=0.2,
                                   retry_max_seconds=1.0, handback_seconds=0, receive_timeout=0.2)
    options.update(settings)
    return Rig(store, broker, Worker(WorkerSettings(**options), broker, store, storage, models=resident))


# -- S3 stopped during the upload of the LoRA -------------------------------------------------------------


@pytest.fixture
def s3_front(s3_endpoint: str) -> Iterator[TcpFront]:
    front = TcpFront(int(s3_endpoint.rsplit(":", 1)[1]))
    yield front
    front.stop()


def s3_through(front: TcpFront) -> S3Storage:
    return S3Storage(S3_TEST_BUCKET, endpoint=front.endpoint, access_key=S3_TEST_ACCESS_KEY,
                     secret_key=S3_TEST_SECRET_KEY, region=S3_TEST_REGION, use_ssl=False)


def is_model(key: str) -> bool:
    return "/models/" in key


def test_finish_upload_once_s3_returns_within_retries(tmp_path: Path, tiny_sd15: Path, resident: ResidentModels,
                                                      s3_front: TcpFront, s3_endpoint: str) -> None:
    # S3 goes away as the LoRA upload starts and comes back after two failed attempts.
    storage = Tripwire(s3_through(s3_front), is_model, s3_front.stop)
    original_put = storage.inner.put_file

    def put_file(key: str, path: Path, content_type: str | None = None) -> None:
        if storage.tripped and storage.upload_failures == 2 and s3_front._server is None:
            s3_front.start()
        original_put(key, path, content_type)

    storage.inner.put_file = put_file  # type: ignore[method-assign]
    rig = make_rig(tmp_path, tiny_sd15, resident, storage, tmp_path / "work")
    user = f"s3-outage-{uuid.uuid4().hex[:6]}"
    task = rig.submit(selfix_job(str(uuid.uuid4()), user, upload_images(storage, user)))

    assert rig.run_one() == "completed"

    assert storage.tripped and storage.upload_failures == 2
    events = rig.events(task)
    assert [e["status"] for e in events if e["status"] in ("completed", "failed")] == ["completed"]
    key = f"users/{user}/models/{task}.safetensors"
    assert s3_client(s3_endpoint).head_object(Bucket=S3_TEST_BUCKET, Key=key)["ContentLength"] > 0
    record_figure("s3_outage_within_retries", {"failed_upload_attempts": storage.upload_failures,
                                               "outcome": "completed"})


def test_hand_back_when_s3_stays_down_then_resume_from_checkpoint(
        tmp_path: Path, tiny_sd15: Path, resident: ResidentModels, s3_front: TcpFront, s3_endpoint: str) -> None:
    storage = Tripwire(s3_through(s3_front), is_model, s3_front.stop)
    rig = make_rig(tmp_path, tiny_sd15, resident, storage, tmp_path / "work")
    s3 = s3_client(s3_endpoint)  # straight to moto, past the stopped front
    user = f"s3-down-{uuid.uuid4().hex[:6]}"
    images = upload_images(storage, user)
    task = rig.submit(selfix_job(str(uuid.uuid4()), user, images, maxSteps=8, checkpointEverySteps=3))

    # 1. S3 stays down through every retry: the job is handed back, not failed
    assert rig.run_one() == "handed_back"
    assert storage.upload_failures == 4  # retry_attempts
    record = rig.store.get_job(task)
    assert record is not None and record.status == "queued"
    assert not [e for e in rig.events(task) if e["status"] in ("failed", "completed")]

    # 2. The job's inputs and its checkpoints are still in storage
    stored = [o["Key"] for o in s3.list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=f"checkpoints/{task}/")["Contents"]]
    assert all(s3.head_object(Bucket=S3_TEST_BUCKET, Key=k) for k in images)
    steps = checkpoints.stored_steps(S3Storage(S3_TEST_BUCKET, endpoint=s3_endpoint, access_key=S3_TEST_ACCESS_KEY,
                                               secret_key=S3_TEST_SECRET_KEY, use_ssl=False),
                                     task, lambda _op, fn: fn())
    assert steps == [3, 6] and len(stored) == 6

    # 3. S3 is back: the redelivery resumes from step 6 and completes, once
    s3_front.start()
    assert rig.run_one() == "completed"
    record = rig.store.get_job(task)
    assert record is not None and record.status == "completed" and record.attempts == 2
    finals = [e for e in rig.events(task) if e["status"] in ("failed", "completed")]
    assert [e["status"] for e in finals] == ["completed"]
    lora = rig.store.get_lora(task)
    assert lora is not None and lora.metrics is not None and lora.metrics.get("resumedFromStep") == 6
    record_figure("s3_outage_beyond_retries", {"failed_upload_attempts": storage.upload_failures,
                                               "stored_checkpoints_during_outage": steps,
                                               "resumed_from_step": lora.metrics.get("resumedFromStep"),
                                               "outcome": "handed_back then completed"})


# -- a full disk while saving a checkpoint ---------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs (needs root or CAP_SYS_ADMIN)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        message = f"mounting a tmpfs is not permitted here ({done.stderr.strip()})"
        if os.environ.get("LORAMILL_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the filler file's path."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass
    assert os.statvfs(disk).f_bavail == 0
    return filler


def test_fail_clearly_on_full_disk_and_resume_from_intact_checkpoint(
        tmp_path: Path, small_disk: Path, tiny_sd15: Path, sample_images: Path, resident: ResidentModels) -> None:
    from loramill.engine.training.run import train

    pipe, _ = resident.pipeline_for_training(resolve_base_model(None, WorkerSettings(base_model=str(tiny_sd15))))
    options = dict(max_steps=8, checkpoint_every=2, keep_checkpoints=2, lr=1e-3)
    filled: list[Path] = []

    def fill_after_first(folder: Path) -> None:
        if not filled:
            filled.append(fill(small_disk))

    # 1. The disk fills after the checkpoint at step 2: the one at step 4 fails, clearly
    run_dir = small_disk / "run"
    config = train_config(tiny_sd15, sample_images, small_disk / "lora.safetensors", work_dir=str(run_dir), **options)
    with pytest.raises(LoramillError) as failed:
        train(config, pipe=pipe, on_checkpoint=fill_after_first)
    assert failed.value.code == "checkpoint_failed"
    assert "step 4" in failed.value.message and "previous checkpoint is intact" in failed.value.message
    assert "No space left on device" in failed.value.message

    # 2. The checkpoint of step 2 is complete and nothing half-written is left beside it
    saved = list_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in saved] == ["step-000002"]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]

    # 3. Space freed, the run resumes from it and ends with the LoRA an uninterrupted run makes
    filled[0].unlink()
    config.resume = "latest"
    resumed = train(config, pipe=pipe)
    straight = train(train_config(tiny_sd15, sample_images, tmp_path / "straight.safetensors",
                                  work_dir=str(tmp_path / "straight"), **options), pipe=pipe)
    assert resumed.metrics["steps"] == 8
    a, b = load_file(str(resumed.lora_path)), load_file(str(straight.lora_path))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    record_figure("disk_full_engine", {"tmpfs_mb": 64, "failed_at_step": 4, "intact_checkpoint_step": 2,
                                       "resumed_lora_equals_uninterrupted": True})


def test_fail_job_on_full_disk_keeping_stored_checkpoint(tmp_path: Path, small_disk: Path, tiny_sd15: Path,
                                                         resident: ResidentModels) -> None:
    # The worker's scratch space is the small disk; storage is elsewhere (as S3 would be).
    storage = LocalStorage(tmp_path / "storage")
    filled: list[Path] = []

    def after(key: str) -> None:
        if key.endswith("/checkpoint.json") and not filled:
            filled.append(fill(small_disk))

    wired = Tripwire(storage, lambda key: False, lambda: None, after=after)
    rig = make_rig(tmp_path, tiny_sd15, resident, wired, small_disk / "work")
    user = "disk-full-user"
    task = rig.submit(selfix_job(str(uuid.uuid4()), user, upload_images(storage, user), maxSteps=8,
                                 checkpointEverySteps=2))

    assert rig.run_one() == "failed"

    [failed] = [e for e in rig.events(task) if e["status"] in ("failed", "completed")]
    assert failed["status"] == "failed" and failed["error"]["code"] == "checkpoint_failed"
    assert "No space left on device" in failed["error"]["message"]
    assert str(small_disk) not in failed["error"]["message"]  # the worker's paths are not the client's business
    assert checkpoints.stored_steps(storage, task, lambda _op, fn: fn()) == [2]
    filled[0].unlink()
    record_figure("disk_full_worker", {"event": failed["error"]["code"], "stored_checkpoint_steps": [2]})
