"""Selfix and Prompt2Pic on Kafka, end to end: a plain confluent-kafka client, S3, a real worker process.

The worker runs with ``max.poll.interval.ms`` at 6 s, so every job here — and one made to last
longer than that on purpose — would loop through rebalances if the worker stopped polling.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from tests.jobs.e2e_helpers import (
    WorkerProcess,
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

MAX_POLL_INTERVAL_MS = 6000  # the lowest a Kafka group accepts by default (group.min.session.timeout.ms)


class KafkaClient:
    """Selfix's side: a raw Producer on the input topic and a raw Consumer on the output and dead-letter topics."""

    def __init__(self, bootstrap: str, topics: dict[str, str]) -> None:
        self.topics = topics
        self.producer = Producer({"bootstrap.servers": bootstrap})
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"selfix-{uuid.uuid4().hex[:6]}",
                                  "auto.offset.reset": "earliest"})
        assigned: list[object] = []
        self.consumer.subscribe([topics["output"], topics["dead"], topics["progress"]],
                                on_assign=lambda _c, parts: assigned.extend(parts))
        self.dead: list[tuple[bytes, dict[str, bytes]]] = []
        self.progress: list[dict[str, Any]] = []  # LORAMILL_PROGRESS_TOPIC: processing events, apart from results
        self.events = EventLog(self._read)
        # Join the group before any test starts its clock: a first join takes seconds, and that is
        # the client's cost, not the flow's.
        deadline = time.monotonic() + 60
        while not assigned and time.monotonic() < deadline:
            self.events.raw.extend(self._read(0.2))

    def publish(self, body: bytes, key: str | None = None) -> None:
        self.producer.produce(self.topics["input"], value=body, key=key)
        assert self.producer.flush(10) == 0

    def _read(self, timeout: float) -> list[bytes]:
        found: list[bytes] = []
        message = self.consumer.poll(timeout)
        while message is not None:
            if message.error() is None:
                if message.topic() == self.topics["dead"]:
                    self.dead.append((message.value() or b"", dict(message.headers() or [])))  # type: ignore[arg-type]
                elif message.topic() == self.topics["progress"]:
                    self.progress.append(json.loads(message.value() or b"{}"))
                else:
                    found.append(message.value() or b"")
            message = self.consumer.poll(0)
        return found

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture(scope="module")
def topics() -> dict[str, str]:
    name = f"avatar-{uuid.uuid4().hex[:6]}"
    return {"input": f"{name}-jobs", "output": f"{name}-results", "dead": f"{name}-jobs.dlq",
            "progress": f"{name}-progress"}


@pytest.fixture(scope="module")
def kafka_worker(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path, s3_env: dict[str, str],
                 kafka_bootstrap: str, topics: dict[str, str]) -> Iterator[WorkerProcess]:
    home = tmp_path_factory.mktemp("worker-kafka")
    env = worker_env(home, tiny_sd15, s3_env, "kafka", KAFKA_BOOTSTRAP_SERVER=kafka_bootstrap,
                     KAFKA_SECURITY_PROTOCOL="PLAINTEXT", KAFKA_GROUP_ID=f"{topics['input']}-group",
                     KAFKA_TOPIC_INPUT=topics["input"], KAFKA_TOPIC_OUTPUT=topics["output"],
                     LORAMILL_KAFKA_MAX_POLL_INTERVAL_MS=str(MAX_POLL_INTERVAL_MS),
                     LORAMILL_KAFKA_SESSION_TIMEOUT_MS=str(MAX_POLL_INTERVAL_MS),
                     LORAMILL_KAFKA_HEARTBEAT_INTERVAL_MS="500", LORAMILL_PROGRESS_TOPIC=topics["progress"])
    # Selfix's compose file sets KAFKA_* and S3_* only: those alone must select Kafka and S3.
    del env["LORAMILL_BROKER"], env["LORAMILL_STORAGE"]
    worker = WorkerProcess(env, home / "worker.log")
    worker.wait_ready()
    yield worker
    assert worker.stop() == 0


@pytest.fixture(scope="module")
def client(kafka_worker: WorkerProcess, kafka_bootstrap: str, topics: dict[str, str]) -> Iterator[KafkaClient]:
    kafka = KafkaClient(kafka_bootstrap, topics)
    yield kafka
    kafka.close()


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Any:
    return s3_client(s3_endpoint)


def test_train_selfix_job_on_kafka_to_s3(client: KafkaClient, s3: Any, kafka_worker: WorkerProcess,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    timings = []
    for run in ("cold", "warm"):  # cold: the model load is part of the first job
        task, user = new_task_id(), f"selfix-kafka-{run}"
        images = put_user_images(s3, user)
        started = time.monotonic()
        client.publish(encode(selfix_job(task, user, images)), key=task)
        done = client.events.wait_for(task, "completed", timeout=180)[0]
        timings.append(time.monotonic() - started)

        assert s3_keys(s3, done["modelPath"]) == [f"users/{user}/models/{task}.safetensors"]
        body = next(b for b in client.events.raw if json.loads(b)["status"] == "completed"
                    and json.loads(b)["taskId"] == task)
        assert raw_bytes_and_order(body) == ["taskId", "userId", "status", "modelPath", "metrics"]
        assert list(done["metrics"]) == ["trainingTime", "finalLoss"]
        # The results topic carries the result only; progress went to LORAMILL_PROGRESS_TOPIC.
        assert [e["status"] for e in client.events.events(task)] == ["completed"]
        assert [e["status"] for e in client.progress if e["taskId"] == task][0] == "processing"
    assert S3_TEST_SECRET_KEY not in kafka_worker.log_path.read_text()
    with capsys.disabled():
        print(f"\n[e2e] Selfix flow on kafka: {timings[0]:.1f}s cold (model load), {timings[1]:.1f}s "
              "warm, publish to completed event (tiny SD 1.5)")


def test_republish_result_of_completed_job_delivered_again(client: KafkaClient, s3: Any,
                                                           kafka_worker: WorkerProcess) -> None:
    task, user = new_task_id(), "selfix-kafka-2"
    message = encode(selfix_job(task, user, put_user_images(s3, user), maxSteps=2))
    client.publish(message, key=task)
    first = client.events.wait_for(task, "completed", timeout=120)[0]
    uploaded = s3.head_object(Bucket="loramill-test", Key=first["modelPath"])["LastModified"]

    client.publish(message, key=task)  # Kafka redelivers after a crash before the commit; so might Selfix

    second = client.events.wait_for(task, "completed", timeout=60, count=2)[1]
    assert second == first
    assert s3.head_object(Bucket="loramill-test", Key=first["modelPath"])["LastModified"] == uploaded
    starts = [line for line in kafka_worker.lines() if line.get("taskId") == task
              and line["message"].startswith("job started")]
    assert len(starts) == 1


def test_dead_letter_poison_messages_and_process_next_job(client: KafkaClient, kafka_worker: WorkerProcess) -> None:
    client.publish(b"\x00\x01 definitely not json")
    client.publish(b'{"taskId": "poison-shape", "userId": "u1", "prompt": 42}', key="poison-shape")
    task = new_task_id()
    client.publish(encode(generation_job(task, "p2p-user")), key=task)

    client.events.wait_for(task, "completed", timeout=120)
    deadline = time.monotonic() + 30
    while len(client.dead) < 2 and time.monotonic() < deadline:
        client.events.drain(0.5)
    reasons = sorted(headers["x-loramill-reason"].decode() for _, headers in client.dead)
    assert reasons[0].startswith("invalid_field: prompt") and reasons[1].startswith("invalid_json")
    assert client.events.wait_for("poison-shape", "failed")[0]["error"]["code"] == "invalid_field"
    dead_lines = [line for line in kafka_worker.lines() if line["message"].startswith("dead-lettered")]
    assert dead_lines and not [line for line in dead_lines if "None" in line["message"]]
    assert any(line.get("taskId") == "poison-shape" for line in dead_lines)


def test_selfix_environment_alone_selects_kafka_and_s3(kafka_worker: WorkerProcess) -> None:
    chosen = kafka_worker.wait_for_log(lambda line: line["message"].startswith("using broker"))
    assert chosen["broker"] == "kafka" and chosen["storage"] == "s3" and chosen["base_model"] == "sd15"
    assert "KAFKA_BOOTSTRAP_SERVER is set" in chosen["message"] and "S3_" in chosen["message"]


def test_generate_prompt2pic_request_to_image_link(client: KafkaClient, s3: Any) -> None:
    task, user = new_task_id(), "p2p-user"

    client.publish(encode(generation_job(task, user, numImages=2)), key=task)

    done = client.events.wait_for(task, "completed", timeout=120)[0]
    assert done["imagePaths"] == [f"users/{user}/generations/{task}/0.png", f"users/{user}/generations/{task}/1.png"]
    assert len(done["imageUrls"]) == 2 and "Signature" in done["imageUrls"][0]
    png = urllib.request.urlopen(done["imageUrls"][1], timeout=10).read()
    assert png.startswith(b"\x89PNG") and b"parameters" in png


def test_finish_job_longer_than_max_poll_interval_once(client: KafkaClient, s3: Any,
                                                       kafka_worker: WorkerProcess) -> None:
    limit = MAX_POLL_INTERVAL_MS / 1000
    user = "selfix-kafka-long"
    images = put_user_images(s3, user)
    steps, held = 60, 0.0
    for _ in range(4):  # grow the job until the worker holds it longer than max.poll.interval.ms here
        task = new_task_id()
        client.publish(encode(selfix_job(task, user, images, maxSteps=steps, checkpointEverySteps=steps)), key=task)
        client.events.wait_for(task, "completed", timeout=300)
        held = kafka_worker.wait_for_log(lambda line, task=task: line.get("taskId") == task
                                         and line["message"].startswith("job completed"), 10)["seconds"]
        if held > 1.2 * limit:
            break
        steps = min(3000, math.ceil(steps * 1.5 * limit / max(held, 0.1)))
    client.events.drain(3)  # a redelivery after a rebalance would show up by now

    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{kafka_worker.http_port}/healthz", timeout=5).read())
    assert held > limit and health["status"] == "ok"
    assert [e["status"] for e in client.events.events(task)] == ["completed"]
    statuses = [e["status"] for e in client.progress if e["taskId"] == task and "progress" not in e]
    assert statuses == ["processing"]
    assert not [line for line in kafka_worker.lines() if "revoked while task" in line["message"]]
