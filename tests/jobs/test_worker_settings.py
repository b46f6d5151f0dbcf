"""Worker settings from the environment: LORAMILL_* names, Selfix's as they are, errors naming the variable."""

from __future__ import annotations

import pytest

from loramill.config import load_config
from loramill.errors import InvalidInput
from loramill.jobs.contracts import TrainingJob
from loramill.jobs.events import JobRecorder
from loramill.jobs.handlers.models import resolve_base_model
from loramill.jobs.health import HealthServer
from loramill.jobs.retry import RetryPolicy
from loramill.jobs.settings import load_worker_settings
from loramill.logs import register_secret


def test_read_worker_and_selfix_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name, value in {"LORAMILL_BROKER": "kafka", "LORAMILL_WORKER_JOBS": "train",
                        "LORAMILL_MODELS": "sd15=/models/sd15, flux=/models/flux1-dev",
                        "LORAMILL_WORKER_HTTP_PORT": "9108", "LORAMILL_HOME": str(tmp_path),
                        "S3_ENDPOINT": "minio:9000", "S3_BUCKET": "avatar-data", "S3_USE_SSL": "false",
                        "LORAMILL_STORAGE": "s3"}.items():
        monkeypatch.setenv(name, value)

    config = load_config()

    assert config.worker.broker == "kafka" and config.worker.job_kinds == {"train"}
    assert config.worker.model_map == {"sd15": "/models/sd15", "flux": "/models/flux1-dev"}
    assert config.worker.http_port == 9108 and config.worker.work_dir == tmp_path / "work"
    assert (config.storage.s3_endpoint, config.storage.s3_bucket, config.storage.s3_use_ssl) == (
        "minio:9000", "avatar-data", False)


@pytest.mark.parametrize(("name", "value"), [("LORAMILL_BROKER", "redis"), ("LORAMILL_WORKER_JOBS", "train,upscale"),
                                             ("LORAMILL_MODELS", "sd15"), ("LORAMILL_WORKER_HTTP_PORT", "70000"),
                                             ("LORAMILL_GENERATION_SAMPLER", "dpm"),
                                             ("LORAMILL_GENERATION_PRECISION", "fp16")])
def test_refuse_bad_worker_setting_naming_the_variable(monkeypatch: pytest.MonkeyPatch, name: str,
                                                       value: str) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(InvalidInput) as refused:
        load_worker_settings()

    assert refused.value.field == name and name in refused.value.message


def test_refuse_unconfigured_base_model_listing_configured_ones() -> None:
    settings = load_worker_settings(models="sd15=/m/sd15,flux=/m/flux", base_model="sd15")

    assert resolve_base_model(None, settings).path == "/m/sd15"
    assert resolve_base_model("flux", settings).path == "/m/flux"
    with pytest.raises(InvalidInput) as refused:
        resolve_base_model("/etc/passwd", settings)  # a job may not point the worker at a path
    assert refused.value.field == "baseModel" and "flux, sd15" in refused.value.message


def test_mask_secret_in_failed_event_message() -> None:
    register_secret("minio-SECRET-4242")
    recorder = JobRecorder(store=None, broker=None, storage=None, policy=RetryPolicy())  # type: ignore[arg-type]
    job = TrainingJob.model_validate({"taskId": "t1", "userId": "u1", "images": ["users/u1/images/a.jpg"]})

    event = recorder.failed(job, InvalidInput("S3 refused secret minio-SECRET-4242 for users/u1/images/a.jpg"))

    assert "minio-SECRET-4242" not in event.to_json().decode()
    assert event.error is not None and "users/u1/images/a.jpg" in event.error.message


def test_refuse_taken_health_port_naming_the_variable() -> None:
    first = HealthServer("127.0.0.1", 0, dict)
    try:
        with pytest.raises(InvalidInput) as refused:
            HealthServer("127.0.0.1", first.port, dict)
    finally:
        first.stop()
    assert refused.value.field == "LORAMILL_WORKER_HTTP_PORT"
