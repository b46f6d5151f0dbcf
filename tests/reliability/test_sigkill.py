"""A worker SIGKILLed mid-training on RabbitMQ and on Kafka (``make soak``): the job is redelivered, resumes
from the checkpoint in S3 and ends with one result. tests/jobs/test_e2e_sql.py proves the same on the
SQL queue in ``make test``; these two take ~1 min each (a second worker process, a group rejoin).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
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
from tests.jobs.worker_helpers import EventLog, encode, new_task_id, selfix_job
from tests.reliability.helpers import record_figure
from tests.services.s3 import S3_TEST_BUCKET

pytestmark = [pytest.mark.soak, pytest.mark.services]

STEPS = 30


def kill_and_resume(tmp_path: Path, env: dict[str, str], publish: Callable[[bytes, str], None], events: EventLog,
                    s3: Any, broker: str) -> None:
    task, user = new_task_id(), f"sigkill-{broker}"
    images = put_user_images(s3, user)
    first = WorkerProcess(env, tmp_path / "first.log")
    first.wait_ready()

    # 1. SIGKILL the worker once a checkpoint is in storage: no cleanup, no hand-back
    publish(encode(selfix_job(task, user, images, maxSteps=STEPS, checkpointEverySteps=2)), task)
    deadline = time.monotonic() + 180
    while not any(k.endswith("checkpoint.json") for k in s3_keys(s3, f"checkpoints/{task}/")):
        assert time.monotonic() < deadline, "no checkpoint reached storage"
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    stored = [k for k in s3_keys(s3, f"checkpoints/{task}/") if k.endswith("checkpoint.json")]
    last_step = max(int(k.split("/")[2].removeprefix("step-")) for k in stored)

    # 2. Another worker gets the redelivery and finishes from the stored checkpoint
    second = WorkerProcess(env, tmp_path / "second.log")
    try:
        events.wait_for(task, "completed", timeout=240)
        redelivered_after = time.monotonic() - killed_at
        resumed = second.wait_for_log(lambda line: "resumed_from_step" in line, timeout=5)
        finished = second.wait_for_log(lambda line: line["message"].startswith("job completed"), timeout=30)
    finally:
        assert second.stop() == 0
    assert resumed["taskId"] == task and resumed["resumed_from_step"] == last_step < STEPS
    assert finished["steps"] == STEPS
    events.drain(2.0)
    assert len([e for e in events.events(task) if e["status"] == "completed"]) == 1
    assert not [e for e in events.events(task) if e["status"] == "failed"]
    assert s3_keys(s3, f"checkpoints/{task}/") == []
    assert s3.head_object(Bucket=S3_TEST_BUCKET, Key=f"users/{user}/models/{task}.safetensors")
    record_figure(f"sigkill_{broker}", {"broker": broker, "killed_after_checkpoint_step": last_step,
                                        "resumed_from_step": resumed["resumed_from_step"], "steps": STEPS,
                                        "completed_events": 1, "seconds_to_completed_after_kill":
                                        round(redelivered_after, 1)})


def test_resume_after_sigkill_on_rabbitmq(tmp_path: Path, tiny_sd15: Path, s3_env: dict[str, str],
                                          s3_endpoint: str, rabbitmq_url: str) -> None:
    name = f"sigkill-{uuid.uuid4().hex[:6]}"
    env = worker_env(tmp_path, tiny_sd15, s3_env, "rabbitmq", LORAMILL_RABBITMQ_URL=rabbitmq_url,
                     LORAMILL_RABBITMQ_INPUT_QUEUE=f"{name}.jobs", LORAMILL_RABBITMQ_OUTPUT_QUEUE=f"{name}.results")
    events = EventLog(lambda wait: [b for b, _ in amqp_drain(rabbitmq_url, f"{name}.results", wait)])
    kill_and_resume(tmp_path, env, lambda body, _task: amqp_publish(rabbitmq_url, f"{name}.jobs", body), events,
                    s3_client(s3_endpoint), "rabbitmq")


def test_resume_after_sigkill_on_kafka(tmp_path: Path, tiny_sd15: Path, s3_env: dict[str, str], s3_endpoint: str,
                                       kafka_bootstrap: str) -> None:
    from tests.jobs.test_e2e_kafka import KafkaClient

    name = f"sigkill-{uuid.uuid4().hex[:6]}"
    topics = {"input": f"{name}-jobs", "output": f"{name}-results", "dead": f"{name}-jobs.dlq"}
    env = worker_env(tmp_path, tiny_sd15, s3_env, "kafka", KAFKA_BOOTSTRAP_SERVER=kafka_bootstrap,
                     KAFKA_GROUP_ID=f"{name}-group", KAFKA_TOPIC_INPUT=topics["input"],
                     KAFKA_TOPIC_OUTPUT=topics["output"], LORAMILL_KAFKA_MAX_POLL_INTERVAL_MS="6000",
                     LORAMILL_KAFKA_SESSION_TIMEOUT_MS="6000", LORAMILL_KAFKA_HEARTBEAT_INTERVAL_MS="500")
    client = KafkaClient(kafka_bootstrap, topics)
    try:
        kill_and_resume(tmp_path, env, lambda body, task: client.publish(body, key=task), client.events,
                        s3_client(s3_endpoint), "kafka")
    finally:
        client.close()
