"""End-to-end helpers: a ``loramill worker`` subprocess, plain S3 / Kafka / AMQP clients that are not loramill's.

The clients stand in for Selfix's .NET service and Prompt2Pic's bot: they only know the wire
contracts (JSON on a topic or queue, keys in a bucket), never loramill's adapters.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3

from tests.services.common import free_port
from tests.services.models import draw_subject
from tests.services.s3 import S3_TEST_ACCESS_KEY, S3_TEST_BUCKET, S3_TEST_REGION, S3_TEST_SECRET_KEY

REPO = Path(__file__).resolve().parents[2]


def worker_env(home: Path, model: Path, s3_env: dict[str, str], broker: str, **extra: str) -> dict[str, str]:
    """The environment of a worker on ``broker`` with S3 storage, a SQLite job store and the tiny model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAMILL_", "KAFKA_", "S3_"))}
    env.update(s3_env)
    env.update({
        "LORAMILL_HOME": str(home),
        "LORAMILL_BROKER": broker,
        "LORAMILL_STORAGE": "s3",
        "LORAMILL_DATABASE_URL": f"sqlite:///{home / 'loramill.db'}",
        "LORAMILL_MODELS": f"sd15={model}",
        "LORAMILL_BASE_MODEL": "sd15",
        "LORAMILL_PROGRESS_INTERVAL": "0.5",
        "LORAMILL_RETRY_BASE_SECONDS": "0.2",
        "LORAMILL_HANDBACK_SECONDS": "0.5",
        "LORAMILL_RECEIVE_TIMEOUT": "0.5",
        "LORAMILL_WORKER_HTTP_PORT": str(free_port()),
        "LORAMILL_WORKER_HTTP_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


class WorkerProcess:
    """``python -m loramill worker`` in a subprocess; its stderr (JSON log lines) goes to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.env = env
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "loramill", "worker", *args], env=env, cwd=REPO,
                                        stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def http_port(self) -> int:
        return int(self.env["LORAMILL_WORKER_HTTP_PORT"])

    def lines(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines so far (anything else it printed is skipped)."""
        found = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    found.append(json.loads(raw))
                except ValueError:
                    continue
        return found

    def wait_for_log(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        """The first log line matching ``predicate``, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if predicate(line):
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"worker log has no such line (exit code {self.process.poll()}); tail:\n{tail}")

    def wait_ready(self, timeout: float = 90.0) -> None:
        self.wait_for_log(lambda line: line.get("message") == "worker started", timeout)

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).read().decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return int(self.process.returncode)


# -- S3 as a client sees it (plain boto3) --------------------------------------------------------------


def s3_client(endpoint: str) -> Any:
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=S3_TEST_REGION,
                                          aws_access_key_id=S3_TEST_ACCESS_KEY,
                                          aws_secret_access_key=S3_TEST_SECRET_KEY)


def put_user_images(s3: Any, user_id: str, count: int = 4) -> list[str]:
    """Upload ``count`` drawn subjects for ``user_id`` the way Selfix's app does; their keys."""
    import io

    keys = []
    for i in range(count):
        buffer = io.BytesIO()
        draw_subject(i, size=(96, 96)).save(buffer, "JPEG", quality=95)
        key = f"users/{user_id}/images/image{i + 1}.jpg"
        s3.put_object(Bucket=S3_TEST_BUCKET, Key=key, Body=buffer.getvalue(), ContentType="image/jpeg")
        keys.append(key)
    return keys


def s3_keys(s3: Any, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=S3_TEST_BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


# -- RabbitMQ as a client sees it (aio-pika, no loramill code) ---------------------------------------------


def amqp_publish(url: str, queue: str, body: bytes) -> None:
    """Publish ``body`` to ``queue`` through the default exchange, persistent, as any AMQP client would."""
    import aio_pika

    async def publish() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)

    asyncio.run(publish())


def amqp_drain(url: str, queue: str, wait: float) -> list[tuple[bytes, dict[str, Any]]]:
    """Take every message now in ``queue`` (waiting up to ``wait`` s for the first); (body, headers) pairs."""
    import aio_pika

    async def drain() -> list[tuple[bytes, dict[str, Any]]]:
        connection = await aio_pika.connect(url)
        found: list[tuple[bytes, dict[str, Any]]] = []
        async with connection:
            channel = await connection.channel()
            q = await channel.declare_queue(queue, durable=True, passive=True)
            deadline = time.monotonic() + wait
            while True:
                message = await q.get(no_ack=True, fail=False)
                if message is not None:
                    found.append((message.body, dict(message.headers or {})))
                    continue
                if found or time.monotonic() >= deadline:
                    return found
                await asyncio.sleep(0.1)

    return asyncio.run(drain())
