"""``loramill worker`` as operators start it: the default base model loads in the background from the start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from loramill.adapters.broker.sql import SqlBroker
from tests.jobs.worker_helpers import encode, generation_job, new_task_id


def run_worker(home: Path, jobs: list[dict[str, Any]], **env: str) -> tuple[dict[str, dict[str, Any]], list[dict]]:
    """Queue ``jobs``, run ``loramill worker`` until it has handled them; final events by task id, log lines."""
    db = f"sqlite:///{home / 'loramill.db'}"
    client = SqlBroker(db)
    for job in jobs:
        client.publish_job(encode(job), task_id=job["taskId"])
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LORAMILL_", "KAFKA_", "S3_"))}
    environ.update(LORAMILL_HOME=str(home), LORAMILL_BROKER="sql", LORAMILL_STORAGE="local",
                   LORAMILL_STORAGE_ROOT=str(home / "storage"), LORAMILL_DATABASE_URL=db,
                   LORAMILL_RECEIVE_TIMEOUT="0.2", LORAMILL_WORKER_HTTP_PORT="0", HF_HUB_OFFLINE="1", **env)
    try:
        done = subprocess.run([sys.executable, "-m", "loramill", "worker", "--max-jobs", str(len(jobs))],
                              env=environ, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        final = {}
        for body in client.consume_events(0.5):
            event = json.loads(body)
            if event["status"] in ("completed", "failed"):
                final[event["taskId"]] = event
    finally:
        client.close()
    lines = []
    for raw in done.stderr.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return final, lines


def messages(lines: list[dict], text: str) -> list[str]:
    return [line["message"] for line in lines if text in line["message"]]


def test_worker_preloads_default_model_and_first_job_uses_it(tmp_path: Path, tiny_sd15: Path) -> None:
    job = generation_job(new_task_id(), "user-1")

    final, lines = run_worker(tmp_path, [job], LORAMILL_MODELS=f"sd15={tiny_sd15}", LORAMILL_BASE_MODEL="sd15")

    assert final[job["taskId"]]["status"] == "completed"
    assert messages(lines, "preloading base model sd15")
    assert len(messages(lines, "loaded base model sd15")) == 1  # the job found it resident: no second load
    preloaded = next(line for line in lines if "preloading base model" in line["message"])
    assert preloaded["taskId"] is None and lines.index(preloaded) < next(
        i for i, line in enumerate(lines) if line["message"] == "worker started")


def test_worker_carries_on_after_failed_preload_and_job_gets_clear_error(tmp_path: Path, tiny_sd15: Path) -> None:
    on_default = generation_job(new_task_id(), "user-1")
    on_other = generation_job(new_task_id(), "user-1", baseModel="tiny")

    final, lines = run_worker(tmp_path, [on_default, on_other], LORAMILL_BASE_MODEL="sd15",
                              LORAMILL_MODELS=f"sd15={tmp_path / 'not-mounted'},tiny={tiny_sd15}")

    assert messages(lines, "preloading base model sd15 failed")
    failed = final[on_default["taskId"]]
    assert failed["status"] == "failed" and failed["error"]["code"] == "model_not_found"
    assert final[on_other["taskId"]]["status"] == "completed"


def test_worker_without_base_model_fails_at_start_naming_variable(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LORAMILL_", "KAFKA_", "S3_", "RABBITMQ_"))}
    environ.update(LORAMILL_HOME=str(tmp_path), LORAMILL_WORKER_HTTP_PORT="0")

    done = subprocess.run([sys.executable, "-m", "loramill", "worker", "--max-jobs", "1"], env=environ,
                          capture_output=True, text=True, timeout=120)

    assert done.returncode != 0
    assert "LORAMILL_BASE_MODEL" in done.stderr and "no base model" in done.stderr
    chosen = next(json.loads(raw) for raw in done.stderr.splitlines() if '"using broker' in raw)
    assert chosen["broker"] == "sql" and chosen["storage"] == "local" and chosen["base_model"] is None
