"""A training job (Selfix's message): images from storage → dataset → LoRA → storage, registry, result event.

``configurationParams`` map onto the engine's options here, and only here; a parameter the job leaves
out takes the worker's default (``LORAMILL_*``) or the engine's. The LoRA lands at
``users/{userId}/models/{taskId}.safetensors`` and is registered under the id ``taskId``, so a
generation job can use it as ``loras: [{"id": taskId}]``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from loramill import metrics
from loramill.adapters.storage.base import Storage
from loramill.domain.keys import caption_key, model_key
from loramill.domain.status import JobStatus
from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.families import detect_family, get_family
from loramill.engine.options import rename_field
from loramill.engine.training.config import TrainConfig
from loramill.errors import InvalidInput, LoramillError, NotFound
from loramill.jobs.contracts import JobEvent, Metrics, TrainingJob
from loramill.jobs.handlers import checkpoints
from loramill.jobs.handlers.context import JobContext
from loramill.jobs.handlers.models import resolve_base_model
from loramill.jobs.settings import WorkerSettings
from loramill.jobs.wire import engine_to_wire, to_engine

log = logging.getLogger(__name__)

CHECKPOINTS_KEPT = 2  # in storage, per job: the newest survives a crash during the next upload
QUALITY_METRICS = ("consistency", "preservation")  # added to the result event when the run evaluated itself


def handle_training(ctx: JobContext) -> JobEvent:
    """Run one training job to its ``completed`` event; see the module docstring."""
    job = ctx.job
    assert isinstance(job, TrainingJob)
    params = job.configuration_params
    dataset_dir, run_dir = ctx.scratch / "dataset", ctx.scratch / "run"
    lora_file = ctx.scratch / f"{job.task_id}.safetensors"

    # 1. Base model and options, checked before any weights load or anything is downloaded (the family comes
    #    from model_index.json or the file name, as the loader reads it; an unknown one fails in the loader)
    model = resolve_base_model(params.base_model, ctx.settings)
    family = detect_family(model.path)
    if family is not None and not get_family(family).TRAINABLE:  # refused before the model loads
        raise InvalidInput(f"configurationParams.baseModel: {model.path} is a {family} model, which loramill "
                           "generates with but does not train; choose an SD 1.5, SDXL or FLUX.1 base model",
                           code="unsupported_model", field="configurationParams.baseModel")
    config = train_config(job, model.path, family, ctx.settings, dataset_dir, run_dir, lora_file) if family else None
    ctx.hold_to_quota(0, "this training's LoRA")  # a user over the storage quota already: fail before training
    with ctx.stage("load_model"):
        pipe, family = ctx.models.pipeline_for_training(model)
    config = config or train_config(job, model.path, family, ctx.settings, dataset_dir, run_dir, lora_file)
    dataset_config = dataset_options(job, config, ctx.settings)

    # 2. Fetch the images (keys only: a job never names a path on the worker's disk), and the LoRA to
    #    continue from (a LoRA id or a key the user may use), as a local file for the engine
    with ctx.stage("fetch"):
        inputs = fetch_images(ctx, job.images, ctx.scratch / "inputs")
        if config.init_lora:
            config.init_lora = str(fetch_init_lora(ctx, config.init_lora, family))

    # 3. Dataset: checked, framed, captioned with the trigger word; problems named by storage key
    from loramill.engine.dataset.prepare import prepare_dataset

    with ctx.stage("dataset"):
        try:
            report = prepare_dataset([str(inputs)], dataset_dir, dataset_config, progress=ctx.progress)
        except InvalidInput as exc:
            raise InvalidInput(as_keys(exc.message, inputs, job.images), code=exc.code, field="images") from None
    for warning in report.warnings:
        log.warning("dataset: %s", as_keys(warning, inputs, job.images))

    # 4. Resume from the newest checkpoint in storage, if an earlier attempt left one that fits
    with ctx.stage("fetch_checkpoint"):
        resumed = checkpoints.download_latest(ctx.storage, job.task_id, run_dir / "checkpoints", ctx.io)
    if resumed is not None and not checkpoint_fits(config, family, run_dir / "checkpoints" / f"step-{resumed:06d}"):
        # Written by a worker with other defaults (or for an edited job): resuming would not be exact.
        log.warning("stored checkpoint of step %d was made with other settings; training from the start", resumed)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        resumed = None
    if resumed is not None:
        config.resume = "latest"
        ctx.info["resumedFromStep"] = resumed
        metrics.RESUMED.inc()
        log.info("resuming training from checkpoint step %d", resumed, extra={"resumed_from_step": resumed})

    # 5. Train on the resident pipeline; each checkpoint goes to storage as it is written
    def on_checkpoint(folder: Path) -> None:
        checkpoints.upload_checkpoint(ctx.storage, job.task_id, folder, ctx.io, keep=CHECKPOINTS_KEPT)

    from loramill.engine.training.distributed import process_count
    from loramill.engine.training.run import train

    processes = process_count(ctx.settings.train_processes)
    with ctx.stage("train"):
        if processes > 1:  # one job across this machine's GPUs; each process loads the base itself
            from loramill.engine.training.launch import train_in_processes

            result = train_in_processes(config, processes, progress=ctx.progress, on_checkpoint=on_checkpoint)
        else:
            result = train(config, pipe=pipe, progress=ctx.progress, on_checkpoint=on_checkpoint)

    # 6. Upload the LoRA (within the user's storage quota) and register it for generation jobs
    key = model_key(job.user_id, job.task_id)
    outputs = [result.lora_path, *sorted((run_dir / "samples").glob("*.png"))]
    ctx.hold_to_quota(sum(path.stat().st_size for path in outputs), "this LoRA and its sample images")
    with ctx.stage("upload"):
        ctx.io("storage.put_file", lambda: ctx.storage.put_file(key, result.lora_path, "application/octet-stream"))
    samples = upload_samples(ctx, job.user_id, job.task_id, run_dir)
    full_metrics = {**result.metrics, **ctx.info, **({"samples": samples} if samples else {})}
    ctx.io("store.create_lora", lambda: ctx.store.create_lora(
        user_id=job.user_id, task_id=job.task_id, family=family, storage_key=key, base_model=model.name,
        trigger_word=config.trigger, metrics=full_metrics))
    ctx.info.update(steps=result.metrics.get("steps"))
    log.info("LoRA stored at %s after %s steps", key, result.metrics.get("steps"),
             extra={"model_path": key, "steps": result.metrics.get("steps")})

    # 7. Selfix's result: whole seconds (its example and its .NET reader use an integer) and the loss
    # (plus consistency and preservation when the run evaluated itself: engine/evaluation)
    quality = {k: result.metrics[k] for k in QUALITY_METRICS if result.metrics.get(k) is not None}
    return JobEvent(task_id=job.task_id, user_id=job.user_id, status=JobStatus.COMPLETED, model_path=key,
                    metrics=Metrics(training_time=int(round(result.metrics["trainingTime"])),
                                    final_loss=result.metrics.get("finalLoss"), **quality))


def upload_samples(ctx: JobContext, user_id: str, task_id: str, run_dir: Path) -> list[str]:
    """Store the run's evaluation grids (``samples/*.png``) beside its LoRA; their keys, oldest first."""
    def put(key: str, path: Path) -> None:
        ctx.io("storage.put_file", lambda: ctx.storage.put_file(key, path, "image/png"))

    keys = []
    for path in sorted((run_dir / "samples").glob("*.png")):
        keys.append(f"users/{user_id}/models/{task_id}.samples/{path.name}")
        put(keys[-1], path)
    return keys


def checkpoint_fits(config: TrainConfig, family: str, folder: Path) -> bool:
    """Whether the checkpoint in ``folder`` was made by a run with ``config``'s settings and data.

    Checked before training (the engine checks too, but only after it has attached its adapter to
    the resident pipeline; failing there would cost a model reload).
    """
    from loramill.engine.families import get_family
    from loramill.engine.training.checkpoint import INFO_FILE
    from loramill.engine.training.data import load_examples
    from loramill.engine.training.run import dataset_hash, run_fingerprint

    examples = load_examples(config.images, trigger=config.trigger, resolution=config.resolution,
                             multiple=get_family(family).RESOLUTION_MULTIPLE)
    try:
        stored = json.loads((folder / INFO_FILE).read_text()).get("fingerprint")
    except (OSError, ValueError):
        return False
    return bool(stored == run_fingerprint(config, family, dataset_hash(examples)))


# Options whose default, when a job leaves them out, is the worker's (LORAMILL_*) rather than the engine's.
def worker_defaults(settings: WorkerSettings, family: str) -> dict[str, Any]:
    """The worker's defaults for options a job leaves out (the engine's apply to everything else)."""
    return {"trigger": settings.default_trigger, "captioner": settings.default_captioner,
            "resolution": settings.default_resolution or get_family(family).DEFAULT_SIZE,
            "checkpoint_every": settings.checkpoint_every,
            **({"clip_model": settings.clip_model} if settings.clip_model else {})}


def train_config(job: TrainingJob, model_path: str, family: str, settings: WorkerSettings, dataset_dir: Path,
                 run_dir: Path, out: Path) -> TrainConfig:
    """The engine's options for ``job``: ``configurationParams`` first, then the worker's defaults."""
    given = to_engine(TrainConfig, job.configuration_params)
    values = worker_defaults(settings, family) | given
    if "epochs" not in given and "max_steps" not in given:
        values["max_steps"] = settings.default_max_steps
    if values.get("validation_prompts"):
        values["validation_every"] = values["checkpoint_every"]
    try:
        return TrainConfig(model=model_path, family=family, images=str(dataset_dir), out=str(out),
                           work_dir=str(run_dir), keep_checkpoints=CHECKPOINTS_KEPT, **values)
    except InvalidInput as exc:
        raise as_job_field(exc) from None


def dataset_options(job: TrainingJob, config: TrainConfig, settings: WorkerSettings) -> DatasetConfig:
    """How the job's images become a dataset: subject framing, captions with the trigger word, size."""
    try:
        return DatasetConfig(subject=config.subject, resolution=config.resolution, trigger_word=config.trigger,
                             captioner=config.captioner, min_images=settings.min_images,
                             # A picture smaller than the training size is upscaled anyway; refusing one
                             # that is big enough for a 64 px run would only annoy.
                             min_side=min(256, config.resolution), batch_size=config.batch_size)
    except InvalidInput as exc:
        raise as_job_field(exc) from None


def as_job_field(exc: LoramillError) -> LoramillError:
    """``exc`` with an engine option named as the job's field (``lr`` → ``configurationParams.learningRate``)."""
    names = engine_to_wire(TrainConfig)
    return rename_field(exc, lambda name: f"configurationParams.{names[name]}" if name in names else None)


def fetch_images(ctx: JobContext, keys: list[str], folder: Path) -> Path:
    """Download the job's image keys into ``folder``, each with its caption if one is stored beside it
    (``caption_key``: the dataset step keeps a ``.txt`` beside an image); missing keys are named in one
    error if none remain."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = []
    for i, key in enumerate(keys):
        target = local_name(folder, i, key)
        try:
            ctx.io("storage.get_file", lambda key=key, target=target: _get(ctx.storage, key, target))  # type: ignore[misc]
        except NotFound:
            missing.append(key)
        else:
            fetch_caption(ctx, key, target.with_suffix(".txt"))
        ctx.check_stop()
    if missing:
        log.warning("%d of %d image keys are missing: %s", len(missing), len(keys), ", ".join(missing[:10]))
    if len(missing) == len(keys):
        raise InvalidInput(f"images: none of the {len(keys)} storage keys exists (e.g. {missing[0]!r}); upload the "
                           "images first or fix the keys", code="images_not_found", field="images")
    return folder


def fetch_caption(ctx: JobContext, image_key: str, target: Path) -> None:
    """The caption stored beside ``image_key``, downloaded to ``target``; none stored is no caption (the
    dataset step then captions the image itself)."""
    key = caption_key(image_key)
    if key == image_key:  # a .txt given as an image key is the dataset step's to refuse, not a caption
        return
    try:
        ctx.io("storage.get_file", lambda: _get(ctx.storage, key, target))
    except NotFound:
        pass


def local_name(folder: Path, index: int, key: str) -> Path:
    """Where the ``index``-th image key is downloaded (numbered: two keys may share a file name)."""
    return folder / f"{index:04d}_{PurePosixPath(key).name}"


def as_keys(text: str, folder: Path, keys: list[str]) -> str:
    """``text`` with the worker's local copies named by the storage keys the client sent."""
    for i, key in enumerate(keys):
        text = text.replace(str(local_name(folder, i, key)), key)
    return text.replace(str(folder) + "/", "")


def _get(storage: Storage, key: str, target: Path) -> Path:
    return storage.get_file(key, target)


def fetch_init_lora(ctx: JobContext, ref: str, family: str) -> Path:
    """The local file of ``configurationParams.initLora``: a LoRA id the user may use (their own or a public
    one), or a storage key under the user's own ``users/{userId}/``; anything else is refused."""
    field = "configurationParams.initLora"
    own = f"users/{ctx.job.user_id}/"
    if "/" not in ref:
        from loramill.jobs.handlers.generate import fetch_lora

        try:
            return fetch_lora(ctx, ref, 0, family)
        except (NotFound, InvalidInput) as exc:
            message = exc.message.replace("loras[0].id", field, 1)
            raise type(exc)(message if message.startswith(field) else f"{field}: {message}", code=exc.code,
                            field=field) from None
    if not ref.startswith(own) or ".." in PurePosixPath(ref).parts:
        raise NotFound(f"{field}: {ref!r} is not one of your files; give a LoRA id or a key under {own}",
                       code="not_found", field=field)
    local = ctx.scratch / "init_lora" / PurePosixPath(ref).name
    try:
        ctx.io("storage.get_file", lambda: ctx.storage.get_file(ref, local))
    except NotFound:
        raise NotFound(f"{field}: no file at {ref!r}; upload the LoRA first or give its id", code="not_found",
                       field=field) from None
    return local
