"""Selfix's flow on the embedded ``sql`` broker with S3, and a worker killed mid-training, end to end.

The worker is a real ``loramill worker`` process; the client publishes with the sql broker's
``publish_job`` (the only way onto that queue) and sees only the events and the bucket.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loramill.adapters.broker.sql import SqlBroker
from tests.jobs.e2e_helpers import WorkerProcess, put_user_images, s3_client, s3_keys, worker_env
from tests.jobs.worker_helpers import EventLog, encode, new_task_id, raw_bytes_and_order, selfix_job
from tests.services.common import free_port
from tests.services.s3 import S3_TEST_BUCKET, S3_TEST_SECRET_KEY

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def sql_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-sql")


@pytest.fixture(scope="module")
def sql_worker(sql_home: Path, tiny_sd15: Path, s3_env: dict[str, str]) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(worker_env(sql_home, tiny_sd15, s3_env, "sql"), sql_home / "worker.log")
    worker.wait_ready()
    yield worker
    assert worker.stop() == 0


def test_train_selfix_job_on_sql_broker_to_s3(sql_worker: WorkerProcess, sql_home: Path, s3_endpoint: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    s3 = s3_client(s3_endpoint)
    client = SqlBroker(f"sqlite:///{sql_home / 'loramill.db'}")
    events = EventLog(client.consume_events)
    timings = []
    for run in ("cold", "warm"):  # cold: the model load is part of the first job
        task, user = new_task_id(), f"selfix-sql-{run}"
        images = put_user_images(s3, user)
        started = time.monotonic()
        client.publish_job(encode(selfix_job(task, user, images)), task_id=task)
        done = events.wait_for(task, "completed", timeout=180)[0]
        timings.append(time.monotonic() - started)

        assert done["modelPath"] == f"users/{user}/models/{task}.safetensors"
        assert s3_keys(s3, done["modelPath"]) == [done["modelPath"]]
        body = next(b for b in events.raw if json.loads(b)["status"] == "completed"
                    and json.loads(b)["taskId"] == task)
        assert raw_bytes_and_order(body) == ["taskId", "userId", "status", "modelPath", "metrics"]
        job_lines = [line for line in sql_worker.lines() if line.get("taskId") == task]
        assert any(line["message"].startswith("job completed") for line in job_lines)
    client.close()
    assert S3_TEST_SECRET_KEY not in sql_worker.log_path.read_text()
    with capsys.disabled():
        print(f"\n[e2e] Selfix flow on sql: {timings[0]:.1f}s cold (model load), {timings[1]:.1f}s warm, "
              "publish to completed event (tiny SD 1.5)")


def test_resume_training_from_checkpoint_after_worker_killed(tmp_path: Path, tiny_sd15: Path,
                                                             s3_env: dict[str, str], s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    # Short lease and heartbeats: the dead worker's job is taken over after 3 s, not the default 30.
    env = worker_env(tmp_path, tiny_sd15, s3_env, "sql", LORAMILL_SQL_LEASE_SECONDS="2",
                     LORAMILL_JOB_HEARTBEAT_SECONDS="1", LORAMILL_JOB_STALE_SECONDS="3")
    client = SqlBroker(f"sqlite:///{tmp_path / 'loramill.db'}")
    events = EventLog(client.consume_events)
    task, user = new_task_id(), "selfix-user-2"
    images = put_user_images(s3, user)
    first = WorkerProcess(env, tmp_path / "first.log")
    first.wait_ready()

    # 1. The first worker takes the job; a second one starts meanwhile (its lease keeps the job away from it)
    client.publish_job(encode(selfix_job(task, user, images, maxSteps=16, checkpointEverySteps=2)), task_id=task)
    first.wait_for_log(lambda line: line["message"].startswith("job started"))
    second = WorkerProcess({**env, "LORAMILL_WORKER_HTTP_PORT": str(free_port())}, tmp_path / "second.log")

    # 2. Kill the first (no chance to clean up) once a checkpoint is in storage
    deadline = time.monotonic() + 120
    while not any(k.endswith("checkpoint.json") for k in s3_keys(s3, f"checkpoints/{task}/")):
        assert time.monotonic() < deadline, "no checkpoint reached storage"
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    stored = [k for k in s3_keys(s3, f"checkpoints/{task}/") if k.endswith("checkpoint.json")]
    last_step = max(int(k.split("/")[2].removeprefix("step-")) for k in stored)
    assert last_step < 16

    # 3. The second gets the job once the dead one's lease runs out, and finishes it from there
    try:
        events.wait_for(task, "completed", timeout=180)
        resumed = second.wait_for_log(lambda line: "resumed_from_step" in line, timeout=5)
        finished = second.wait_for_log(lambda line: line["message"].startswith("job completed"), timeout=30)
    finally:
        assert second.stop() == 0
        client.close()
    assert resumed["resumed_from_step"] == last_step and resumed["taskId"] == task
    assert finished["steps"] == 16
    events.drain(1.0)
    assert len([e for e in events.events(task) if e["status"] == "completed"]) == 1
    assert s3_keys(s3, f"checkpoints/{task}/") == []
    assert s3.head_object(Bucket=S3_TEST_BUCKET, Key=f"users/{user}/models/{task}.safetensors")
