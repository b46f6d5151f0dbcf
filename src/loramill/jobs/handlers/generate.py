"""A generation job (Prompt2Pic, the inference worker): prompt + LoRAs → PNGs in storage → links in the result.

LoRAs are named by registry id; a job may use its own user's LoRAs and public ones, nothing else
(anything else is ``not_found``, so ids of other people's LoRAs are not even confirmed to exist).
Images land at ``users/{userId}/generations/{taskId}/{n}.png`` and the result event carries their keys
(``imagePaths``) and links (``imageUrls``, presigned for S3).
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from loramill import metrics
from loramill.domain.keys import image_key
from loramill.domain.status import JobStatus
from loramill.engine.families import get_family
from loramill.engine.generation.generate import GenerateRequest
from loramill.engine.generation.loras import LoraRef
from loramill.engine.generation.png import png_bytes
from loramill.engine.generation.quality import level_request
from loramill.engine.options import rename_field
from loramill.engine.progress import Progress
from loramill.errors import InvalidInput, LoramillError, NotFound
from loramill.jobs.contracts import GenerationJob, JobEvent, Metrics
from loramill.jobs.handlers.context import JobContext
from loramill.jobs.handlers.models import resolve_base_model
from loramill.jobs.wire import engine_to_wire, to_engine
from loramill.logs import task_context

log = logging.getLogger(__name__)


def handle_generation(ctx: JobContext) -> JobEvent:
    """Run one generation job to its ``completed`` event; see the module docstring."""
    job = ctx.job
    assert isinstance(job, GenerationJob)

    # 1. Base model (resident after the first job)
    model = resolve_base_model(job.base_model, ctx.settings)
    with ctx.stage("load_model"):
        generator = ctx.models.generator(model)

    # 2. LoRAs: the user's own or public, of this model's family, fetched once per worker
    with ctx.stage("fetch"):
        loras = [LoraRef(path=fetch_lora(ctx, ref.id, i, generator.family_name), weight=ref.weight)
                 for i, ref in enumerate(job.loras)]

    # 3. Quality by load: with a queue behind it, a job gets fewer steps (then fewer pixels) to stay on time
    try:
        request = GenerateRequest(**to_engine(GenerateRequest, job), loras=loras)
    except InvalidInput as exc:
        raise as_job_field(exc) from None
    level = None
    if ctx.load_policy is not None and generator.family_name is not None:
        # Counting how long it already waited keeps the last jobs of a burst from getting full quality late.
        waited = (datetime.now(UTC) - ctx.queued_at).total_seconds() if ctx.queued_at else 0.0
        level = ctx.load_policy.level_for(ctx.jobs_ahead(), waited)
        request = level_request(request, level, generator.family_name, generator.default_size)
        if level.cost < 1:
            log.info("queue is long: rendering at quality %r (%s steps, %sx%s, sampler %s, DeepCache %d)",
                     level.name, request.steps, request.width, request.height, request.sampler,
                     request.deep_cache, extra={"quality": level.name})

    # 4. Generate
    started = time.monotonic()
    with ctx.stage("generate"):
        if ctx.batcher is not None:
            # Other jobs' callbacks run in whichever thread runs the batch: each logs under its own task id.
            def progress(report: Progress) -> None:
                with task_context(job.task_id):
                    ctx.progress(report)

            images = ctx.batcher.generate(generator, request, progress)
        else:
            images = generator.generate(request, progress=ctx.progress)
    elapsed = time.monotonic() - started
    metrics.GENERATION_SECONDS.observe(elapsed)
    if ctx.load_policy is not None and level is not None:
        ctx.load_policy.observe(elapsed, level)

    # 5. Upload each PNG (with its A1111 parameters; within the user's storage quota) and sign a link to it
    paths, urls = [], []
    pngs = [png_bytes(image.image, image.parameters) for image in images]
    ctx.hold_to_quota(sum(len(data) for data in pngs), f"these {len(pngs)} image(s)")
    with ctx.stage("upload"):
        for n, data in enumerate(pngs):
            key = image_key(job.user_id, job.task_id, n)
            ctx.io("storage.put_bytes", lambda key=key, data=data: ctx.storage.put_bytes(key, data, "image/png"))  # type: ignore[misc]
            paths.append(key)
            url = ctx.io("storage.url", lambda key=key: ctx.storage.url(key))  # type: ignore[misc]
            if url is not None:
                urls.append(url)
    log.info("%d image(s) stored in %.2fs", len(paths), elapsed, extra={"images": len(paths)})

    measured: dict[str, object] = {"generationTime": round(elapsed, 3)}
    if level is not None:
        measured["quality"] = level.name  # the client can tell a degraded image from a full one
    return JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.COMPLETED, image_paths=paths,
                    image_urls=urls or None, metrics=Metrics.model_validate(measured))


def fetch_lora(ctx: JobContext, lora_id: str, index: int, family: str | None) -> Path:
    """The local file of LoRA ``lora_id`` if the job's user may use it; downloaded on first use."""
    field = f"loras[{index}].id"
    try:
        record = ctx.io("store.resolve_lora", lambda: ctx.store.resolve_lora(lora_id, ctx.job.user_id))
    except NotFound as exc:
        raise NotFound(f"{field}: {exc.message}", code="not_found", field=field) from None
    if family is not None and not get_family(family).TRAINABLE:
        raise InvalidInput(f"{field}: this base model is {family}, which loramill generates with but trains no "
                           f"LoRAs for; remove the LoRAs or pick a {record.family} baseModel",
                           code="lora_incompatible", field=field)
    if family is not None and record.family != family:
        raise InvalidInput(f"{field}: LoRA {lora_id!r} was trained for {record.family}; this base model is {family}. "
                           f"Pick a {record.family} baseModel or a {family} LoRA", code="lora_incompatible",
                           field=field)
    # Named after the key too: a LoRA re-registered under the same id with a new file is fetched again.
    digest = hashlib.sha1(record.storage_key.encode()).hexdigest()[:10]
    local = ctx.settings.work_dir / "loras" / f"{lora_id}-{digest}.safetensors"
    if local.is_file():
        metrics.LORA_CACHE.labels(result="hit").inc()
        return local
    metrics.LORA_CACHE.labels(result="miss").inc()
    try:
        ctx.io("storage.get_file", lambda: ctx.storage.get_file(record.storage_key, local))
    except NotFound:
        raise NotFound(f"{field}: the weights of LoRA {lora_id!r} are missing from storage "
                       f"({record.storage_key}); train it again", code="not_found", field=field) from None
    return local


def as_job_field(exc: LoramillError) -> LoramillError:
    """``exc`` with an engine option named as the job's field (``num_images`` → ``numImages``)."""
    return rename_field(exc, engine_to_wire(GenerateRequest).get)
