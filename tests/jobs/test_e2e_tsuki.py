"""The Tsuki inference worker's clients, unchanged, against a ``loramill worker`` with ``LORAMILL_PRESET=tsuki``.

The client declares ``image_generation_queue`` plain (durable, no arguments) and publishes
``{"request_id", "params"}``; the worker connects with ``RABBITMQ_HOST`` / ``RABBITMQ_DEFAULT_USER`` /
``RABBITMQ_DEFAULT_PASS`` and reports to a stand-in of Tsuki's API gateway with HTTP ``PUT
/update_db/{request_id}``, which fails its first call (the update must be retried, not lost).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from loramill.adapters.store import JobStore
from tests.jobs.e2e_helpers import WorkerProcess, s3_client, worker_env
from tests.services.s3 import S3_TEST_BUCKET

pytestmark = pytest.mark.services

QUEUE = "image_generation_queue"


class Gateway:
    """Tsuki's API gateway as the worker sees it: ``PUT /update_db/{request_id}``; the first call answers 503."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.refused = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if gateway.refused == 0:
                    gateway.refused += 1
                    self.send_response(503)
                else:
                    gateway.updates.append((self.path, body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses(self, request_id: str, until: str, timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [body for path, body in self.updates if path == f"/update_db/{request_id}"]
            if found and found[-1]["status"] == until:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no {until!r} update for {request_id}: {self.updates}")


def tsuki_publish(url: str, message: dict[str, Any]) -> None:
    """What Tsuki's client does: declare the queue durable with no arguments, publish persistent JSON."""
    import aio_pika

    async def publish() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(QUEUE, durable=True)
            await channel.default_exchange.publish(aio_pika.Message(
                json.dumps(message).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=QUEUE)

    asyncio.run(publish())


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    stand_in = Gateway()
    yield stand_in
    stand_in.server.shutdown()


@pytest.fixture(scope="module")
def tsuki_worker(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path, s3_env: dict[str, str],
                 s3_endpoint: str, rabbitmq_url: str, gateway: Gateway) -> Iterator[WorkerProcess]:
    home = tmp_path_factory.mktemp("worker-tsuki")
    amqp = URL(rabbitmq_url)
    # The client declared the queue first, plain: loramill must use it as it is.
    tsuki_publish(rabbitmq_url, {"request_id": "warm-up", "params": {"prompt": "tsuki_advtr, a cup",
                                                                     "num_inference_steps": 2}})
    env = worker_env(home, tiny_sd15, s3_env, "rabbitmq", LORAMILL_PRESET="tsuki", RABBITMQ_HOST=amqp.host or "",
                     RABBITMQ_PORT=str(amqp.port), RABBITMQ_DEFAULT_USER=amqp.user or "",
                     RABBITMQ_DEFAULT_PASS=amqp.password or "", API_GATEWAY_URL=gateway.url,
                     LORAMILL_TSUKI_PUBLIC_URL=f"{s3_endpoint}/{S3_TEST_BUCKET}")
    del env["LORAMILL_BROKER"]  # the preset chooses RabbitMQ
    worker = WorkerProcess(env, home / "worker.log")
    worker.wait_ready()
    gateway.statuses("warm-up", "Completed", timeout=180)
    yield worker
    assert worker.stop() == 0


def test_tsuki_request_to_completed_update_with_public_image(tsuki_worker: WorkerProcess, gateway: Gateway,
                                                              rabbitmq_url: str, s3_endpoint: str) -> None:
    request_id = str(uuid.uuid4())

    tsuki_publish(rabbitmq_url, {"request_id": request_id, "params": {
        "prompt": "tsuki_advtr, a samoyed dog smiling, white background", "negative_prompt": "",
        "num_inference_steps": 2, "guidance_scale": 7.5, "seed": 50, "width": 64, "height": 64}})

    updates = gateway.statuses(request_id, "Completed")
    assert [u["status"] for u in updates] == ["processing", "Completed"]
    # The public prefix (a bucket whose generated/ objects are readable by anyone, like Tsuki's GCS bucket)
    # followed by the key the image was written at.
    assert updates[-1]["image_url"] == f"{s3_endpoint}/{S3_TEST_BUCKET}/generated/{request_id}.png"
    png = s3_client(s3_endpoint).get_object(Bucket=S3_TEST_BUCKET, Key=f"generated/{request_id}.png")["Body"].read()
    assert png.startswith(b"\x89PNG")
    assert gateway.refused == 1  # the first update was refused with 503 and sent again
    chosen = tsuki_worker.wait_for_log(lambda line: line["message"].startswith("using broker"))
    assert chosen["broker"] == "rabbitmq" and "LORAMILL_PRESET=tsuki" in chosen["message"]


def test_tsuki_request_refused_at_parse_time_fails_in_store_and_gateway(tsuki_worker: WorkerProcess,
                                                                        gateway: Gateway, rabbitmq_url: str) -> None:
    request_id = str(uuid.uuid4())

    tsuki_publish(rabbitmq_url, {"request_id": request_id, "params": {"negative_prompt": "blurry"}})

    assert gateway.statuses(request_id, "failed")[-1] == {"status": "failed"}
    store = JobStore(tsuki_worker.env["LORAMILL_DATABASE_URL"])
    try:
        record = store.get_job(request_id)
        assert record is not None and record.status == "failed" and "prompt" in record.error["message"]  # type: ignore[index]
    finally:
        store.close()
