"""The same API on the production backends: PostgreSQL, S3 (presigned redirects), Kafka and RabbitMQ."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loramill.adapters.broker.base import Broker
from loramill.adapters.storage.s3 import S3Storage
from loramill.adapters.store import JobStore
from loramill.jobs.contracts import JobEvent, parse_job
from tests.gateway.api.conftest import Api, make_api, png_bytes
from tests.gateway.api.test_events import read_events
from tests.services.s3 import S3_TEST_ACCESS_KEY, S3_TEST_BUCKET, S3_TEST_SECRET_KEY

pytestmark = pytest.mark.services


@pytest.fixture
def pg_s3_api(tmp_path: Path, postgres_database: str, s3_endpoint: str) -> Iterator[Api]:
    storage = S3Storage(S3_TEST_BUCKET, endpoint=s3_endpoint, access_key=S3_TEST_ACCESS_KEY,
                        secret_key=S3_TEST_SECRET_KEY, use_ssl=False)
    api = make_api(tmp_path, store=JobStore(postgres_database), storage=storage)
    with api.client:
        yield api
    api.broker.close()
    api.store.close()


def test_api_on_postgres_and_s3_keeps_tenancy_idempotency_and_events(pg_s3_api: Api) -> None:
    api = pg_s3_api
    upload = api.client.post("/v1/trainings", files=[("images", ("a.png", png_bytes(), "image/png"))],
                             data={"triggerWord": "sks"}, headers=api.auth("alice"))
    job = upload.json()
    image = job["request"]["images"][0]

    assert upload.status_code == 202 and api.storage.exists(image)
    assert api.client.get(f"/v1/jobs/{job['id']}", headers=api.auth("bob")).status_code == 404
    assert api.client.get(f"/v1/files/{image}", headers=api.auth("bob")).status_code == 404
    first = api.client.put("/v1/jobs/pg-1", json={"prompt": "p"}, headers=api.auth("alice"))
    again = api.client.put("/v1/jobs/pg-1", json={"prompt": "p"}, headers=api.auth("alice"))
    assert (first.status_code, again.status_code) == (202, 200)
    task = first.json()["id"]  # the stored id: alice's "pg-1", scoped to her

    def finish() -> None:
        time.sleep(0.2)
        done = JobEvent(task_id=task, user_id="alice", status="completed")
        api.store.transition(task, "processing")
        api.store.transition(task, "completed", result=done.to_dict(), event=done.to_dict())

    threading.Thread(target=finish, daemon=True).start()
    assert [e[2]["status"] for e in read_events(api, "pg-1", api.auth("alice"))] == ["queued", "completed"]


def test_get_file_on_s3_redirects_to_presigned_url(pg_s3_api: Api) -> None:
    api = pg_s3_api
    key = "users/alice/generations/s3-test/0.png"
    api.storage.put_bytes(key, png_bytes(2), "image/png")

    response = api.client.get(f"/v1/files/{key}", headers=api.auth("alice"), follow_redirects=False)

    assert response.status_code == 307
    location = response.headers["Location"]
    assert "X-Amz-Signature" in location or "Signature=" in location
    assert httpx.get(location).content == png_bytes(2)


@pytest.fixture(params=["kafka", "rabbitmq"])
def queue_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    namespace = f"gw{int(time.time() * 1000)}"
    if request.param == "kafka":
        from loramill.adapters.broker.kafka import KafkaBroker
        from tests.adapters.broker.test_kafka import kafka_settings

        broker: Broker = KafkaBroker(kafka_settings(request.getfixturevalue("kafka_bootstrap"), namespace))
    else:
        from loramill.adapters.broker.rabbitmq import RabbitMQBroker

        broker = RabbitMQBroker(url=request.getfixturevalue("rabbitmq_url"), input_queue=f"{namespace}.jobs",
                                output_queue=f"{namespace}.events", operation_timeout_seconds=10.0)
    yield broker
    broker.close()


def test_create_job_publishes_it_on_queue_broker(tmp_path: Path, queue_broker: Broker) -> None:
    api = make_api(tmp_path, broker=queue_broker)
    with api.client:
        job = api.client.post("/v1/generations", json={"prompt": "over the wire", "seed": 9},
                              headers=api.auth("alice")).json()
        canceled = api.client.post("/v1/jobs/" + job["id"] + "/cancel", headers=api.auth("alice")).json()

    delivery = queue_broker.receive(timeout=30)
    assert delivery is not None
    queued = parse_job(delivery.body)
    assert queued.task_id == job["id"] and queued.prompt == "over the wire" and queued.seed == 9
    assert canceled["status"] == "canceled"  # the worker that receives it sees the store's verdict and skips it
    queue_broker.ack(delivery)
    api.store.close()
