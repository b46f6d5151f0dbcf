"""``loramill keys create`` and ``loramill serve`` as a user runs them: one process, API + worker, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.services.common import free_port

pytestmark = pytest.mark.slow


def loramill(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loramill.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_serve_runs_api_and_worker_and_stops_cleanly(tmp_path: Path, tiny_sd15: Path) -> None:
    env = {**os.environ, "LORAMILL_HOME": str(tmp_path / "home"), "LORAMILL_BASE_MODEL": str(tiny_sd15),
           "LORAMILL_LOG_FORMAT": "text"}
    env.pop("LORAMILL_TELEGRAM_TOKEN", None)
    created = loramill(env, "keys", "create", "--user", "carol")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("lm_") and "carol" in created.stderr
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    service = subprocess.Popen([sys.executable, "-m", "loramill.cli", "serve", "--port", str(port)], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)

        job = client.post("/v1/generations", json={"prompt": "a kite", "width": 64, "height": 64, "steps": 2}).json()
        with client.stream("GET", job["links"]["events"], timeout=120) as events:
            statuses = [json.loads(line[6:])["status"] for line in events.iter_lines() if line.startswith("data: ")]
        done = client.get(job["links"]["self"]).json()
        picture = client.get(done["result"]["files"][0]["url"])
        metrics = client.get("/metrics").text
        page = client.get("/")
    finally:
        service.send_signal(signal.SIGTERM)
        code = service.wait(timeout=60)
        log.close()

    assert statuses[0] == "queued" and statuses[-1] == "completed"
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    assert 'loramill_jobs_total{kind="generate",status="completed"} 1.0' in metrics
    assert "loramill_http_requests_total" in metrics
    assert page.status_code == 200 and "<title>loramill</title>" in page.text
    output = (tmp_path / "serve.log").read_text()
    assert code == 0 and "serving on" in output and "stopped" in output
    # The worker's default model loaded at start-up, and the job used that load rather than its own.
    assert "preloading base model" in output and output.count("loaded base model") == 1


@pytest.mark.services
def test_serve_runs_on_postgres_kafka_and_s3_by_configuration(tmp_path: Path, postgres_database: str,
                                                              kafka_bootstrap: str, s3_env: dict[str, str]) -> None:
    from tests.adapters.broker.test_kafka import read_topic

    topic = f"serve{int(time.time() * 1000)}.jobs"
    env = {**os.environ, **s3_env, "LORAMILL_HOME": str(tmp_path / "home"), "LORAMILL_LOG_FORMAT": "text",
           "LORAMILL_DATABASE_URL": postgres_database, "LORAMILL_STORAGE": "s3", "LORAMILL_BROKER": "kafka",
           "KAFKA_BOOTSTRAP_SERVER": kafka_bootstrap, "KAFKA_TOPIC_INPUT": topic,
           "KAFKA_TOPIC_OUTPUT": topic.replace(".jobs", ".events"), "LORAMILL_WORKERS": "0"}
    env.pop("LORAMILL_TELEGRAM_TOKEN", None)
    key = loramill(env, "keys", "create", "--user", "dave").stdout.strip()
    port = free_port()
    service = subprocess.Popen([sys.executable, "-m", "loramill.cli", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"})
        ready = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and ready is None:
            try:
                ready = client.get("/readyz")
            except httpx.TransportError:
                time.sleep(0.2)
        upload = client.post("/v1/trainings", files=[("images", ("a.png", b"", "image/png"))])
        job = client.post("/v1/generations", json={"prompt": "on kafka"}).json()
        published = read_topic(kafka_bootstrap, topic, 1)
        # a client following the queued job's events must not hold the shutdown (no worker runs it)
        def follow() -> None:
            try:
                with client.stream("GET", job["links"]["events"], timeout=60) as stream:
                    for _ in stream.iter_lines():
                        pass
            except httpx.HTTPError:
                pass  # the server closing the stream at shutdown is the point

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        time.sleep(0.5)
    finally:
        service.send_signal(signal.SIGTERM)
        code = service.wait(timeout=60)

    assert ready is not None and ready.json() == {"status": "ok", "checks": {"store": "ok", "storage": "ok",
                                                                             "broker": "ok"}}
    assert upload.status_code == 422  # the empty file is refused before anything reaches S3 or Kafka
    assert [json.loads(body)["taskId"] for body, _ in published] == [job["id"]]
    assert code == 0
