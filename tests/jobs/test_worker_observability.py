"""The worker's logs (JSON, task id on every line, secrets masked), its /healthz and /metrics, and retry."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from loramill import metrics
from loramill.errors import InvalidInput, TransientError
from loramill.jobs.health import HealthServer
from loramill.jobs.retry import RetryPolicy, retrying
from loramill.logs import JsonFormatter, TaskIdFilter, register_secret, task_context


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TaskIdFilter())
    logger = logging.getLogger("loramill.test.observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_task_id_on_every_line_inside_task_context(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    logger.info("idle")
    with task_context("task-42"):
        logger.info("training step %d", 3)
        logging.getLogger("loramill.test.observability.deep").info("from an adapter")
    logger.info("named", extra={"task_id": "task-7"})

    entries = lines(stream)

    assert [e["taskId"] for e in entries] == [None, "task-42", "task-42", "task-7"]
    assert entries[1]["message"] == "training step 3" and entries[1]["level"] == "info"


def test_mask_secrets_in_log_lines(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    register_secret("sasl-P4ssw0rd-xyz")

    logger.warning("connecting with sasl-P4ssw0rd-xyz")
    logger.warning("config: password=hunter2hunter2, S3_SECRET_KEY: abcdEFGH1234")
    logger.warning("database postgresql://loramill:pg-secret-99@db:5432/loramill is down")

    text = stream.getvalue()
    for secret in ("sasl-P4ssw0rd-xyz", "hunter2hunter2", "abcdEFGH1234", "pg-secret-99"):
        assert secret not in text
    assert text.count("***") >= 4 and "db:5432" in text


def test_serve_metrics_and_healthz_until_stopping() -> None:
    state = {"status": "ok"}
    server = HealthServer("127.0.0.1", 0, lambda: dict(state)).start()
    metrics.JOBS.labels(kind="train", status="completed").inc(0)
    try:
        base = f"http://127.0.0.1:{server.port}"
        body = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        health = json.loads(urllib.request.urlopen(f"{base}/healthz", timeout=5).read())
        state["status"] = "stopping"
        with pytest.raises(urllib.error.HTTPError) as stopping:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
    finally:
        server.stop()

    assert 'loramill_jobs_total{kind="train",status="completed"}' in body
    assert "# TYPE loramill_job_duration_seconds histogram" in body and "loramill_training_step_seconds_bucket" in body
    assert "taskId" not in body and "task_id" not in body
    assert health == {"status": "ok"} and stopping.value.code == 503


def test_retry_transient_failure_until_it_succeeds() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("S3 SlowDown")
        return "done"

    assert retrying("storage.get", flaky, RetryPolicy(attempts=5, base=1.0, cap=2.0), sleep=waits.append) == "done"
    assert len(calls) == 3 and len(waits) == 2 and all(0 <= w <= 2.0 for w in waits)


def test_retry_never_repeats_invalid_input_and_gives_up_on_outage() -> None:
    calls: list[str] = []

    def invalid() -> None:
        calls.append("invalid")
        raise InvalidInput("images: not a picture")

    def down() -> None:
        calls.append("down")
        raise TransientError("database is unavailable")

    with pytest.raises(InvalidInput):
        retrying("store", invalid, RetryPolicy(attempts=5), sleep=lambda _: None)
    with pytest.raises(TransientError):
        retrying("store", down, RetryPolicy(attempts=3), sleep=lambda _: None)
    assert calls == ["invalid", "down", "down", "down"]
