"""The worker's settings: ``LORAMILL_*`` variables, validated once at start-up, errors naming the variable.

Broker, storage and job-store settings belong to their adapters (``KafkaSettings`` reads Selfix's
``KAFKA_*`` names, ``StorageSettings`` its ``S3_*`` names); ``loramill.config`` gathers them all.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from loramill.adapters.storage.quota import QuotaSettings
from loramill.domain.status import JobKind
from loramill.engine.generation.serving import PRECISIONS, SERVING_SAMPLERS
from loramill.errors import InvalidInput
from loramill.jobs.retry import RetryPolicy

JOB_KINDS = tuple(JobKind)
BROKERS = ("sql", "kafka", "rabbitmq")
PRESETS = (None, "tsuki")


def _default_work_dir() -> Path:
    return Path(os.environ.get("LORAMILL_HOME") or "~/.loramill").expanduser() / "work"


def parse_models(text: str) -> dict[str, str]:
    """``"sd15=/models/sd15,flux=/models/flux1-dev"`` -> ``{"sd15": "/models/sd15", "flux": ...}``."""
    models: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, path = part.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"{part!r} is not name=path; write e.g. sd15=/models/sd15,flux=/models/flux1-dev")
        models[name.strip()] = path.strip()
    return models


class WorkerSettings(QuotaSettings):
    """What a worker runs, where it keeps scratch files, and how it reports."""

    model_config = SettingsConfigDict(env_prefix="LORAMILL_", extra="ignore", populate_by_name=True)

    broker: str = Field("sql", description="sql (embedded), kafka or rabbitmq")
    preset: str | None = Field(None, description="a source system's clients to accept as they are: tsuki (its "
                               "queue, message format and HTTP status updates; docs/configuration.md)")
    jobs: str = Field("train,generate", validation_alias="LORAMILL_WORKER_JOBS",
                      description="job kinds this worker takes, comma-separated")
    models: str = Field("", description="base models by name: sd15=/models/sd15,flux=/models/flux1-dev")
    base_model: str | None = Field(None, description="name (in LORAMILL_MODELS) or path used when a job names none")
    work_dir: Path = Field(default_factory=_default_work_dir, description="scratch space for datasets and runs")
    http_port: int = Field(0, ge=0, le=65535, validation_alias="LORAMILL_WORKER_HTTP_PORT",
                           description="port of /healthz and /metrics; 0 = off")
    http_host: str = Field("0.0.0.0", validation_alias="LORAMILL_WORKER_HTTP_HOST")
    progress_topic: str | None = Field(None, description="topic / queue the processing events (job started, "
                                       "progress) go to; unset: nowhere on the broker, so the output topic carries "
                                       "results only (the API, web page and bot read progress from the job store)")
    progress_interval: float = Field(3.0, gt=0, description="seconds between processing events of one job")
    train_processes: str = Field("1", validation_alias="LORAMILL_TRAIN_PROCESSES",
                                 description="processes one training job runs on: a number, or auto (one per "
                                             "visible GPU); more than 1 runs the job data-parallel (rank 0 reports)")
    cancel_check_interval: float = Field(1.0, gt=0, description="seconds between looks at cancel_requested")
    receive_timeout: float = Field(1.0, gt=0, description="seconds one receive() waits for a job")
    job_heartbeat_seconds: float = Field(5.0, gt=0, description="seconds between a running job's heartbeats "
                                         "in the job store")
    job_stale_seconds: float = Field(30.0, gt=0, description="a processing job whose heartbeat is older than "
                                     "this belongs to a dead worker and is taken over; a younger one is "
                                     "running elsewhere, so a duplicate copy is handed back, not run")
    sql_lease_seconds: float = Field(60.0, gt=0, description="sql broker: a dead worker's job is redelivered "
                                                               "after this long")
    sql_event_retention_seconds: float = Field(86400.0, ge=0, description="sql broker: events nobody consumed are "
                                               "deleted after this long (0 = keep them all)")
    retry_attempts: int = Field(5, ge=1, description="tries of a storage/broker/database call before giving up")
    retry_base_seconds: float = Field(0.5, gt=0)
    retry_max_seconds: float = Field(30.0, gt=0)
    handback_seconds: float = Field(5.0, ge=0, description="wait before handing back a job that failed transiently")
    default_trigger: str = Field("sks", description="trigger word when a training job names none")
    default_captioner: str = Field("template", description="captioner when a job names none (florence2 on GPUs)")
    default_resolution: int | None = Field(None, ge=64, description="training resolution when a job names none")
    default_max_steps: int | None = Field(None, ge=1, description="cap on steps when a job gives neither epochs "
                                                                    "nor maxSteps")
    min_images: int = Field(3, ge=1, description="fewest usable images a training job may have")
    checkpoint_every: int = Field(200, ge=0, description="steps between checkpoints when a job names none")
    clip_model: str | None = Field(None, description="CLIP model folder for training jobs that evaluate themselves "
                                                     "(evalEverySteps): consistency and preservation")
    generation_target_seconds: float | None = Field(
        None, gt=0, description="latency a generation job should meet; when the queue would make it late, "
                                "jobs get fewer steps, then smaller images (Prompt2Pic). Unset: always as asked")
    few_step_lora: str | None = Field(
        None, description="a few-step LoRA (LCM, TCD, Hyper-SD) for the base model's family: with "
                          "LORAMILL_GENERATION_TARGET_SECONDS, the cheapest quality level renders 4 steps with it")
    generation_precision: str = Field("auto", description="auto, fp32 or bf16: the resident generator's "
                                      "precision (auto: bf16 on CPUs with native bf16, see docs/performance.md)")
    generation_sampler: str = Field("euler", description="euler, model (the model's own scheduler), dpmpp or "
                                    "unipc: what SD 1.5/SDXL jobs that name no sampler run (docs/performance.md)")
    generation_openvino: bool = Field(False, description="SD 1.5: run the resident UNet through OpenVINO "
                                      "(1.29x over torch in bf16 at real size; generations without LoRAs only)")
    generation_channels_last: bool = Field(False, description="channels-last memory layout for the UNet and VAE")
    generation_compile: bool = Field(False, description="torch.compile the denoiser (compiled once per image size)")
    # The same LORAMILL_WORKERS as `loramill serve --workers` (0 there means API only), so 0 is valid here.
    workers: int = Field(1, ge=0, description="workers sharing the queue (for the load policy's wait estimate)")
    lora_cache_size: int = Field(8, ge=1, description="LoRAs kept loaded on a resident pipeline (also the most "
                                 "distinct LoRAs one generation batch mixes)")
    generation_batch: int = Field(8, ge=1, description="most images one denoising run renders for generation "
                                  "jobs that share LoRAs and settings; the worker holds twice as many generation "
                                  "jobs (1 = one job at a time)")
    generation_max_overtaken: int = Field(16, ge=0, description="most later jobs a queued generation job may "
                                          "see run before it while same-LoRA jobs are grouped (0 = FIFO)")
    keep_work: bool = Field(False, description="keep a job's scratch folder after it ends (debugging)")
    log_format: str = Field("json", description="json or text")
    log_level: str = Field("INFO")
    preload_model: bool = Field(True, description="load the default base model (LORAMILL_BASE_MODEL) in the "
                                "background as the worker starts, beside opening the store and the broker, so "
                                "the first job finds it loaded; off: the first job that needs a model loads it")

    @field_validator("job_stale_seconds")
    @classmethod
    def _stale_after_beats(cls, value: float, info: ValidationInfo) -> float:
        beat = info.data.get("job_heartbeat_seconds", 5.0)
        if value < 3 * beat:
            raise ValueError(f"LORAMILL_JOB_STALE_SECONDS ({value}) must be at least 3 x "
                             f"LORAMILL_JOB_HEARTBEAT_SECONDS ({beat}), or a live worker's job is taken over")
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        value = (value or "").strip().lower() or None
        if value not in PRESETS:
            raise ValueError(f"{value!r} is not a preset; use one of: {', '.join(p for p in PRESETS if p)}")
        return value

    @field_validator("broker")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in BROKERS:
            raise ValueError(f"{value!r} is not a broker; use one of: {', '.join(BROKERS)}")
        return value

    @field_validator("generation_precision", "generation_sampler")
    @classmethod
    def _known_serving_choice(cls, value: str, info: ValidationInfo) -> str:
        # Checked at start-up: a typo must stop the worker with the variable's name, not fail each job.
        choices = PRECISIONS if info.field_name == "generation_precision" else SERVING_SAMPLERS
        value = value.strip().lower()
        if value not in choices:
            raise ValueError(f"{value!r} is not one of: {', '.join(choices)}")
        return value

    @field_validator("jobs")
    @classmethod
    def _known_kinds(cls, value: str) -> str:
        kinds = [k.strip() for k in value.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in JOB_KINDS]
        if unknown or not kinds:
            raise ValueError(f"{value!r}: job kinds are {', '.join(JOB_KINDS)} (comma-separated)")
        return ",".join(kinds)

    @field_validator("models")
    @classmethod
    def _models_parse(cls, value: str) -> str:
        parse_models(value)
        return value

    @property
    def job_kinds(self) -> frozenset[str]:
        return frozenset(self.jobs.split(","))

    @property
    def held_deliveries(self) -> int:
        """Deliveries a worker holds at once: 1, or with generation batching twice the batch — one batch
        rendering while the next gathers."""
        if "generate" not in self.job_kinds or self.generation_batch <= 1:
            return 1
        return 2 * self.generation_batch

    @property
    def model_map(self) -> dict[str, str]:
        return parse_models(self.models)

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_attempts, self.retry_base_seconds, self.retry_max_seconds)


def load_worker_settings(**overrides: object) -> WorkerSettings:
    """Settings from the environment, ``overrides`` winning; a bad value names its variable."""
    try:
        return WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        name = field if field.startswith("LORAMILL_") else f"LORAMILL_{field.upper()}"
        raise InvalidInput(f"{name}: {first['msg']}", code="invalid_setting", field=name) from None
