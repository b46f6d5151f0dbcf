"""Selfix's flow on RabbitMQ, end to end: a plain aio-pika client, S3, a real worker process."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.e2e_helpers import (
    WorkerProcess,
    amqp_drain,
    amqp_publish,
    put_user_images,
    s3_client,
    s3_keys,
    worker_env,
)
from tests.jobs.worker_helpers import (
    EventLog,
    encode,
    generation_job,
    new_task_id,
    raw_bytes_and_order,
    selfix_job,
)
from tests.services.s3 import S3_TEST_SECRET_KEY

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def queues() -> dict[str, str]:
    name = f"avatar-{uuid.uuid4().hex[:6]}"
    return {"input": f"{name}.jobs", "output": f"{name}.results", "dead": f"{name}.jobs.dead"}


@pytest.fixture(scope="module")
def rabbit_worker(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path, s3_env: dict[str, str],
                  rabbitmq_url: str, queues: dict[str, str]) -> Iterator[WorkerProcess]:
    home = tmp_path_factory.mktemp("worker-rabbitmq")
    env = worker_env(home, tiny_sd15, s3_env, "rabbitmq", LORAMILL_RABBITMQ_URL=rabbitmq_url,
                     LORAMILL_RABBITMQ_INPUT_QUEUE=queues["input"], LORAMILL_RABBITMQ_OUTPUT_QUEUE=queues["output"])
    worker = WorkerProcess(env, home / "worker.log")
    worker.wait_ready()
    yield worker
    assert worker.stop() == 0  # also when the SIGTERM test below stopped it already


@pytest.fixture(scope="module")
def events(rabbit_worker: WorkerProcess, rabbitmq_url: str, queues: dict[str, str]) -> EventLog:
    return EventLog(lambda wait: [body for body, _ in amqp_drain(rabbitmq_url, queues["output"], wait)])


def test_train_selfix_job_on_rabbitmq_to_s3(rabbit_worker: WorkerProcess, events: EventLog, rabbitmq_url: str,
                                            queues: dict[str, str], s3_endpoint: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    s3 = s3_client(s3_endpoint)
    timings = []
    for run in ("cold", "warm"):
        task, user = new_task_id(), f"selfix-rabbit-{run}"
        images = put_user_images(s3, user)
        started = time.monotonic()
        amqp_publish(rabbitmq_url, queues["input"], encode(selfix_job(task, user, images)))
        done = events.wait_for(task, "completed", timeout=180)[0]
        timings.append(time.monotonic() - started)

        assert s3_keys(s3, done["modelPath"]) == [f"users/{user}/models/{task}.safetensors"]
        body = next(b for b in events.raw if json.loads(b)["status"] == "completed"
                    and json.loads(b)["taskId"] == task)
        assert raw_bytes_and_order(body) == ["taskId", "userId", "status", "modelPath", "metrics"]
    assert S3_TEST_SECRET_KEY not in rabbit_worker.log_path.read_text()
    with capsys.disabled():
        print(f"\n[e2e] Selfix flow on rabbitmq: {timings[0]:.1f}s cold (model load), {timings[1]:.1f}s warm, "
              "publish to completed event (tiny SD 1.5)")


def test_dead_letter_poison_message_on_rabbitmq_and_continue(events: EventLog, rabbitmq_url: str,
                                                             queues: dict[str, str]) -> None:
    amqp_publish(rabbitmq_url, queues["input"], b"<html>not a job</html>")
    task = new_task_id()
    amqp_publish(rabbitmq_url, queues["input"], encode(generation_job(task, "p2p-rabbit")))

    done = events.wait_for(task, "completed", timeout=120)[0]

    dead: list[tuple[bytes, dict[str, Any]]] = amqp_drain(rabbitmq_url, queues["dead"], 10)
    assert [body for body, _ in dead] == [b"<html>not a job</html>"]
    assert str(dead[0][1]["x-loramill-reason"]).startswith("invalid_json")
    assert done["imagePaths"] == [f"users/p2p-rabbit/generations/{task}/0.png"]


def _steps_logged(job_dir: Path) -> int:
    """Training steps a job's run has logged so far (its metrics.jsonl lines)."""
    logs = list(job_dir.rglob("metrics.jsonl")) if job_dir.exists() else []
    return len(logs[0].read_text().splitlines()) if logs else 0


def test_sigterm_checkpoints_running_training_and_hands_it_back(rabbit_worker: WorkerProcess, events: EventLog,
                                                                rabbitmq_url: str, queues: dict[str, str],
                                                                s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    task, user = new_task_id(), "selfix-rabbit-term"
    amqp_publish(rabbitmq_url, queues["input"],
                 encode(selfix_job(task, user, put_user_images(s3, user), maxSteps=5000, checkpointEverySteps=1000)))
    # Signal once a few steps have run, none of them a checkpoint step: the only checkpoint stored is then the
    # one the stop itself saves. (Signalling right after a periodic checkpoint raced: stopped at that very
    # step, the run had nothing new to save, and whether its "stored" line came before or after "received
    # SIGTERM" was up to the scheduler.)
    job_dir = rabbit_worker.log_path.parent / "work" / "jobs" / task
    deadline = time.monotonic() + 120
    while _steps_logged(job_dir) < 3:
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)

    assert rabbit_worker.stop(signal.SIGTERM, timeout=60) == 0

    lines = rabbit_worker.lines()
    term = next(i for i, line in enumerate(lines) if line["message"] == "received SIGTERM")
    assert any(line["message"].startswith("checkpoint step-") for line in lines[term:])  # saved on the way out
    assert any(k.endswith("checkpoint.json") for k in s3_keys(s3, f"checkpoints/{task}/"))
    assert [line["taskId"] for line in lines[term:] if line["message"] == "job handed back to the queue"] == [task]
    requeued = amqp_drain(rabbitmq_url, queues["input"], 5)
    assert [json.loads(body)["taskId"] for body, _ in requeued] == [task]
    assert not [e for e in events.events(task) if e["status"] in ("completed", "failed", "canceled")]
