"""Prometheus metrics of the worker, on a registry of their own.

Names follow Prometheus' rules: a ``loramill_`` prefix, ``_total`` on counters, base units in the name
(``_seconds``). Labels are small closed sets (job kind, status, stage, broker); never a job id or a
user id, which would make a new time series per job and grow the server's memory without bound.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

# Job durations span a 1 s tiny-model test to a multi-hour FLUX training.
_JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, float("inf"))
_STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, float("inf"))
_GENERATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, float("inf"))

JOBS = Counter("loramill_jobs_total", "Jobs finished by this worker, by kind and final status.",
               ["kind", "status"], registry=REGISTRY)
JOB_SECONDS = Histogram("loramill_job_duration_seconds", "Wall time of one job from claim to result.",
                        ["kind", "status"], buckets=_JOB_BUCKETS, registry=REGISTRY)
STAGE_SECONDS = Histogram("loramill_job_stage_duration_seconds",
                          "Wall time of one stage of a job (fetch, dataset, load_model, train, generate, upload).",
                          ["kind", "stage"], buckets=_JOB_BUCKETS, registry=REGISTRY)
IN_PROGRESS = Gauge("loramill_jobs_in_progress", "Jobs this worker is running now.", ["kind"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("loramill_queue_depth", "Jobs waiting in the input queue, where the broker can tell.",
                    ["broker"], registry=REGISTRY)
TRAINING_STEP_SECONDS = Histogram("loramill_training_step_seconds", "Wall time of one optimizer step.",
                                  buckets=_STEP_BUCKETS, registry=REGISTRY)
GENERATION_SECONDS = Histogram("loramill_generation_seconds", "Wall time of one generation request (all images).",
                               buckets=_GENERATION_BUCKETS, registry=REGISTRY)
GENERATION_BATCH = Histogram("loramill_generation_batch_jobs",
                             "Generation jobs rendered together in one denoising run (jobs/batching.py).",
                             buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=REGISTRY)
LORA_CACHE = Counter("loramill_lora_cache_requests_total",
                     "LoRA lookups by generation jobs: 'hit' (already on this worker) or 'miss' (downloaded).",
                     ["result"], registry=REGISTRY)
RETRIES = Counter("loramill_retries_total", "Transient failures retried, by the operation that failed.",
                  ["operation"], registry=REGISTRY)
DEAD_LETTERS = Counter("loramill_dead_letters_total", "Messages set aside as not a job, by reason code.",
                       ["code"], registry=REGISTRY)
DUPLICATES = Counter("loramill_duplicate_deliveries_total",
                     "Deliveries of jobs already finished: the stored result was republished, nothing ran.",
                     ["kind"], registry=REGISTRY)
RESUMED = Counter("loramill_trainings_resumed_total", "Trainings continued from a stored checkpoint.",
                  registry=REGISTRY)


def render() -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
