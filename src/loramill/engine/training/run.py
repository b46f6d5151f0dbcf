"""One LoRA training run, top to bottom: check, data, model, cache, adapters, optimizer, resume, loop, export."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loramill import __version__
from loramill.engine.evaluation.loss import holdout_split
from loramill.engine.evaluation.monitor import training_evaluation
from loramill.engine.families import detect_family, get_family
from loramill.engine.lora.files import write_lora
from loramill.engine.lora.formats import check_layout, to_layout
from loramill.engine.lora.layouts import layout_warnings
from loramill.engine.planning.memory import check_run_memory
from loramill.engine.progress import Progress, ProgressCallback, StopRequested, no_progress
from loramill.engine.training import adapters
from loramill.engine.training.cache import TrainingCache, build_cache, cache_texts
from loramill.engine.training.checkpoint import (
    TrainingState,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from loramill.engine.training.conditioning import drop_captions, preservation_prompts, without_trigger
from loramill.engine.training.config import TrainConfig
from loramill.engine.training.data import (
    batches_per_epoch,
    buckets_of,
    epoch_batches,
    load_examples,
    needs_preparation,
    prepare_raw_images,
)
from loramill.engine.training.distributed import check_shares, current_ranks
from loramill.engine.training.ema import LoraEma
from loramill.engine.training.init_lora import init_from_lora
from loramill.engine.training.masks import batch_mask, example_masks
from loramill.engine.training.objective import Objective
from loramill.engine.training.optim import (
    check_optimizer,
    check_precision,
    make_optimizer,
    make_scheduler,
    param_groups,
)
from loramill.engine.training.preservation import concept_folders, extra_sets
from loramill.engine.training.quantize import check_quantize, quantized_denoiser
from loramill.engine.training.residency import park_encoders
from loramill.errors import InvalidInput

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    lora_path: Path
    metrics: dict[str, Any]
    checkpoint_dir: Path


def train(config: TrainConfig, *, pipe: Any = None, progress: ProgressCallback = no_progress,
          on_checkpoint: Callable[[Path], None] | None = None) -> TrainResult:
    """Train a LoRA as ``config`` says and write it to ``config.out``.

    ``pipe``: an already loaded base pipeline to reuse (the worker keeps one resident); it is returned
    to its base state afterwards. ``progress`` may raise ``StopRequested`` to stop at the next step
    with a checkpoint saved. ``on_checkpoint`` is called with each new checkpoint folder (the worker
    copies it to storage).
    """
    # 1. Check options against this machine before any work.
    autocast_dtype = check_precision(config.mixed_precision)
    check_optimizer(config.optimizer)
    family_name = detect_family(config.model, config.family)
    if family_name is None:
        raise InvalidInput(f"model: {config.model} is not an SD 1.5, SDXL or FLUX.1 pipeline, so it cannot be "
                           "trained here; set family if the folder is one of them", code="unsupported_model",
                           field="model")
    family = get_family(family_name)
    if not family.TRAINABLE:
        raise InvalidInput(f"model: {config.model} is a {family_name} pipeline, which loramill generates with but "
                           "does not train LoRAs for; train on an SD 1.5, SDXL or FLUX.1 model",
                           code="unsupported_model", field="model")
    config.check_family(family_name)  # options that apply to other families only (the family may be detected)
    # Tools that will not load the chosen layout are named now and in the metrics, never found out later.
    layout_notes = layout_warnings(config.format, family_name)
    for note in layout_notes:
        log.warning("LoRA layout: %s", note)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_quantize(config.quantize_base, device)
    ranks = current_ranks()  # one process, or this one's rank of several (torchrun, --processes)
    check_shares(config, ranks)
    if not ranks.main:
        progress = no_progress  # rank 0 reports for the run
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)

    # 2. Data: raw folders pass the dataset step; examples are grouped into same-size buckets and
    #    batch order is a function of (seed, epoch).
    images = config.images
    if config.prepare == "auto" and needs_preparation(images):
        if ranks.main:  # one process writes the prepared set; the others read it once it is there
            images = prepare_raw_images(images, run_dir / "dataset", trigger=config.trigger,
                                        resolution=config.resolution, subject=config.subject,
                                        class_word=config.class_word, captioner=config.captioner,
                                        progress=progress)
        ranks.barrier()
        images = str(run_dir / "dataset")
    examples = load_examples(images, trigger=config.trigger, resolution=config.resolution,
                             multiple=family.RESOLUTION_MULTIPLE)
    # More concepts in the same run, each folder with its own trigger.
    for trigger, folder in concept_folders(config.concepts):
        examples += load_examples(folder, trigger=trigger, resolution=config.resolution,
                                  multiple=family.RESOLUTION_MULTIPLE)
    # evaluation measures loss on a held-out tenth when there are enough images (engine/evaluation)
    examples, held_out = holdout_split(examples, config.seed) if config.eval_every else (examples, [])
    buckets = buckets_of(examples)
    per_epoch = batches_per_epoch(buckets, config.batch_size)
    total_steps = config.max_steps or (config.epochs or 1) * max(1, math.ceil(per_epoch / config.grad_accum))
    data_hash = dataset_hash(examples)
    fingerprint = run_fingerprint(config, family_name, data_hash)

    # 3. Model: frozen base, reused when the caller keeps one resident.
    resident = pipe is not None
    if pipe is None:
        pipe = family.load_pipeline(config.model)
        if autocast_dtype is not None:
            # The frozen base in the compute dtype (half the memory of fp32); the VAE stays fp32, as half
            # precision overflows SDXL's VAE. LoRA weights are fp32 whatever the base (adapters.add_lora).
            for name in (family.DENOISER, *family.TEXT_ENCODERS):
                getattr(pipe, name).to(autocast_dtype)
    check_run_memory(config, family_name, pipe, device)  # refuse before an out-of-memory, naming the fix
    # The denoiser reaches the accelerator only after caching (step 5), so FLUX's transformer and its T5
    # are never there together.
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name != family.DENOISER:
            component.to(device)
    denoiser = getattr(pipe, family.DENOISER)
    text_encoders = [getattr(pipe, name) for name in family.TEXT_ENCODERS] if config.train_text_encoder else []
    for name in ("vae", "text_encoder", "text_encoder_2", family.DENOISER):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).requires_grad_(False)

    # 4. Cache latents (per image and augmented variant) and text embeddings (per caption) once.
    augment_config = None
    if config.augment_variants:
        from loramill.engine.dataset.augment import AugmentConfig

        augment_config = AugmentConfig(variants=config.augment_variants)
    cache = build_cache(family, pipe, examples, config.augment_variants, augment_config,
                        cache_text=not config.train_text_encoder, progress=progress)
    # Loss masks, trigger-free prompts and extra sets (replay, prior images: generated by the base model
    # now, before any adapter exists).
    masks = example_masks(examples, config.masked_loss, progress)
    triggers = [config.trigger] + [t for t, _ in concept_folders(config.concepts)]
    if not config.train_text_encoder:
        cache_texts(cache, family, pipe, [""] + config.preserve_prompts + [
            without_trigger(e.caption, triggers, config.class_word) for e in examples])
    if config.prior_weight > 0 and not config.class_images:
        getattr(pipe, family.DENOISER).to(device)  # it renders the class images
    extras = extra_sets(config, family, pipe, run_dir, progress)
    # What the cache made useless leaves the accelerator until a validation image needs it.
    parked = park_encoders(pipe, family.TEXT_ENCODERS, set(family.TEXT_ENCODERS) if config.train_text_encoder
                           else set(), device)
    parked.leave()

    base = contextlib.ExitStack()
    try:
        # 5. LoRA adapters on the (optionally quantised) frozen denoiser, initialised from the seed.
        denoiser = base.enter_context(quantized_denoiser(pipe, family.DENOISER, config.quantize_base, device,
                                                         resident=resident))
        torch.manual_seed(config.seed)
        targets = config.target_modules or family.DEFAULT_TARGET_MODULES
        trained: dict[str, torch.nn.Module] = {family.DENOISER: denoiser}
        params = adapters.add_lora(denoiser, config.rank, config.alpha or config.rank, targets)
        for name, encoder in zip(family.TEXT_ENCODERS, text_encoders):
            params += adapters.add_lora(encoder, config.rank, config.alpha or config.rank,
                                        family.TEXT_ENCODER_TARGET_MODULES)
            trained[name] = encoder
        check_layout(config.format, {family.DENOISER: adapters.lora_state(denoiser)})
        # Continuing from a LoRA: start exactly at its weights; a frozen copy is the teacher if asked.
        teacher = init_from_lora(config, family, family_name, trained) if config.init_lora else None
        if config.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
            for encoder in text_encoders:
                encoder.gradient_checkpointing_enable()

        # 6. Optimizer and learning-rate schedule.
        named = {f"{n}.{k}": p for n, m in trained.items() for k, p in adapters.named_lora_params(m).items()}
        groups = param_groups(named, config.lr, config.lora_plus_ratio, config.text_encoder_lr, text_encoders=[
            name for name in trained if name != family.DENOISER])
        optimizer = make_optimizer(config.optimizer, groups, config.lr, config.weight_decay)
        ema = LoraEma(named, config.ema_decay) if config.ema_decay else None
        scheduler = make_scheduler(config.lr_scheduler, optimizer, config.lr_warmup_steps, total_steps)
        generator = torch.Generator().manual_seed(config.seed)
        step, losses, elapsed_before = 0, [], 0.0

        # 7. Resume: weights, optimizer, schedule, step and RNG state exactly where they were.
        checkpoints = run_dir / "checkpoints"
        resume_from = resolve_checkpoint(config.resume, checkpoints) if config.resume else None
        if resume_from is not None:
            state = load_checkpoint(resume_from, fingerprint)
            for name, module in trained.items():
                prefix = name + "."
                adapters.load_lora_state(module, {k[len(prefix):]: v for k, v in state.weights.items()
                                                  if k.startswith(prefix)})
            if ema is not None:
                ema.load_state_dict({k[4:]: v for k, v in state.weights.items() if k.startswith("ema.")})
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
            generator.set_state(state.generator)
            torch.set_rng_state(state.torch_rng)
            step, losses, elapsed_before = state.step, state.losses, state.elapsed
        metrics_file = _open_metrics(run_dir / "metrics.jsonl", keep_until=step) if ranks.main else io.StringIO()
        monitor = training_evaluation(config, family, pipe, examples, held_out, run_dir, step)

        def lora_weights() -> dict[str, torch.Tensor]:
            return {f"{n}.{k}": v for n, m in trained.items() for k, v in adapters.lora_state(m).items()}

        def exported_weights() -> Any:
            """The weights export writes, in the model while it is evaluated: EMA's average when exported."""
            return ema.applied() if ema is not None and config.ema_export == "ema" else nullcontext()

        def checkpoint() -> Path | None:
            if not ranks.main:
                return None
            weights = lora_weights()
            if ema is not None:
                weights.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
            path = save_checkpoint(checkpoints, TrainingState(
                step=step, weights=weights, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                generator=generator.get_state(), torch_rng=torch.get_rng_state(), losses=losses,
                elapsed=elapsed_before + time.monotonic() - started, fingerprint=fingerprint), config.keep_checkpoints)
            if on_checkpoint is not None:
                on_checkpoint(path)
            return path

        def encode(prompts: list[str], source: TrainingCache = cache) -> dict[str, torch.Tensor]:
            """Text conditioning: cached when the text encoders are frozen, else encoded with their LoRA."""
            cond = source.text(prompts) if not config.train_text_encoder else family.encode_prompts(pipe, prompts)
            return {k: v.to(device) for k, v in cond.items()}

        # 8. The loop: one optimizer step per `grad_accum` micro-batches, drawn bucket by bucket; the
        #    objective adds preservation and the extra sets (replay, prior images) when asked.
        from loramill.engine.dataset.augment import variant_for_epoch

        started = time.monotonic()
        micro = step * config.grad_accum
        plan_epoch, plan = -1, []
        options = {"guidance_scale": config.guidance_scale, "noise_offset": config.noise_offset,
                   "timestep_sampling": config.timestep_sampling}
        objective = Objective(family, pipe, options, loss=config.loss, huber_delta=config.huber_delta,
                              min_snr_gamma=config.min_snr_gamma, flow_loss_weighting=config.flow_loss_weighting)
        models = list(trained.values())
        for module in trained.values():
            module.train()
        while step < total_steps:
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(config.grad_accum):
                epoch, index = divmod(micro, per_epoch)
                if epoch != plan_epoch:
                    plan_epoch, plan = epoch, epoch_batches(buckets, config.batch_size, config.seed, epoch)
                variant = variant_for_epoch(epoch, augment_config)
                latents, meta, captions = cache.batch(plan[index], variant, examples)
                captions = drop_captions(captions, config.caption_dropout, config.seed, micro)
                mask = batch_mask(masks, plan[index], latents.shape[-2:])
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    # Several processes: each draws the whole batch's noise (one process's RNG stream) and
                    # predicts its own share of it.
                    share = ranks.share(latents.shape[0]) if ranks.world > 1 else None
                    loss, noised = objective.denoising(latents.to(device), encode(captions), meta, generator, mask,
                                                       share=share)
                    if config.preserve_weight:
                        keep = preservation_prompts(captions, triggers, config.class_word, config.preserve_prompts,
                                                    micro)
                        with adapters.active_adapter(models[1:], teacher), torch.no_grad():
                            teacher_cond = encode(keep)
                        loss = loss + config.preserve_weight * objective.preservation(
                            noised, encode(keep), teacher_cond, meta, models, teacher, share)
                    for extra in extras:
                        x_latents, x_meta, x_captions = extra.batch(config.batch_size, config.seed, micro)
                        loss = loss + extra.weight * objective.denoising(
                            x_latents.to(device), encode(x_captions, extra.cache), x_meta, generator)[0]
                loss = loss / config.grad_accum
                loss.backward()
                step_loss += loss.item()
                micro += 1
            ranks.average_gradients(params)
            step_loss = ranks.mean(step_loss)
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(step)
            step += 1
            losses.append(step_loss)
            lr = scheduler.get_last_lr()[0]
            metrics_file.write(json.dumps({"step": step, "loss": step_loss, "lr": lr,
                                           "time": round(time.monotonic() - started + elapsed_before, 3)}) + "\n")
            metrics_file.flush()
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
                checkpoint()
            if monitor is not None and monitor.after_step(step, total_steps, lora_weights, metrics_file, scheduler,
                                                          exported=exported_weights):
                break  # the --stop-at target is reached
            if monitor is None and hasattr(scheduler, "observe_loss"):
                scheduler.observe_loss(step_loss)  # reduce_on_plateau without evaluation watches the loss
            if config.validation_every and step % config.validation_every == 0 and config.validation_prompts \
                    and ranks.main:
                with parked.back():
                    _validate(family, pipe, config, step, run_dir, trained)
            stop: StopRequested | None = StopRequested() if ranks.stop_signal else None
            try:
                progress(Progress("train", step, total_steps, {"loss": step_loss, "lr": lr}))
            except StopRequested as exc:
                stop = exc
            if ranks.any(stop is not None):
                # Cancel or shutdown (on any process): keep the work done so far, then all stop.
                if not (config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps):
                    checkpoint()  # (unless this very step was just saved)
                raise stop or StopRequested()
        metrics_file.close()

        # 9. Export the LoRA in the chosen layout, with metadata, and the run's metrics.
        with exported_weights():
            # the best evaluation's weights when --select-by chose one (evaluated as they are exported)
            layers = (monitor.best_layers() if monitor is not None else None) or {
                name: adapters.lora_state(module) for name, module in trained.items()}
        training_time = elapsed_before + time.monotonic() - started
        final_loss = sum(losses[-10:]) / max(1, len(losses[-10:]))
        metrics = {"trainingTime": round(training_time, 3), "finalLoss": final_loss, "steps": step,
                   "family": family_name, "datasetHash": data_hash, "images": len(examples)}
        alpha = float(config.alpha or config.rank)
        tensors = to_layout(config.format, layers, family.KOHYA_PREFIXES, config.rank, alpha)
        if layout_notes:
            metrics["layoutWarnings"] = layout_notes
        if monitor is not None:
            metrics.update(monitor.summary())
        out = Path(config.out)
        if ranks.main:
            out = write_lora(config.out, tensors, lora_metadata(config, family_name, step, data_hash))
            (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        ranks.barrier()  # the LoRA exists when any process returns
        return TrainResult(lora_path=out, metrics=metrics, checkpoint_dir=checkpoints)
    finally:
        # Leave the (possibly resident) pipeline exactly as the base model.
        for module in [denoiser, *text_encoders]:
            adapters.remove_lora(module)
            module.eval()
        if config.gradient_checkpointing:
            denoiser.disable_gradient_checkpointing()
        parked.restore()
        base.close()


def dataset_hash(examples: list[Any]) -> str:
    """A short hash of the training images' bytes and captions, recorded in the LoRA's metadata."""
    digest = hashlib.sha256()
    for ex in sorted(examples, key=lambda e: str(e.image_path)):
        digest.update(hashlib.sha256(Path(ex.image_path).read_bytes()).digest())
        digest.update(ex.caption.encode())
        digest.update(repr(ex.size).encode())
    return digest.hexdigest()[:16]


def run_fingerprint(config: TrainConfig, family: str, data_hash: str) -> str:
    """What must match for a checkpoint to resume exactly (step counts may grow: a run can be extended)."""
    # Options left at their defaults are left out, so adding an option does not orphan older checkpoints.
    keys = config.model_dump(exclude_defaults=True)
    for volatile in ("out", "work_dir", "resume", "epochs", "max_steps", "checkpoint_every", "keep_checkpoints",
                     "validation_prompts", "validation_every", "validation_steps", "format", "images",
                     # what evaluation measures and when it stops; eval_every stays (it holds images out)
                     "eval_steps", "eval_seeds", "eval_prompts", "clip_model", "eval_domain", "select_by", "stop_at"):
        keys.pop(volatile, None)
    if config.init_lora and Path(config.init_lora).is_file():
        # The LoRA continued from counts by content: a worker downloads it to a new path each attempt.
        keys["init_lora"] = hashlib.sha256(Path(config.init_lora).read_bytes()).hexdigest()[:16]
    keys.update(family=family, data=data_hash)
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lora_metadata(config: TrainConfig, family: str, steps: int, data_hash: str) -> dict[str, str]:
    """Safetensors metadata: loramill's own keys plus the ``ss_`` keys A1111 and kohya tools display."""
    base = Path(config.model).name or config.model
    return {
        "loramill.version": __version__, "loramill.family": family, "loramill.base_model": base,
        "loramill.trigger_word": config.trigger, "loramill.rank": str(config.rank),
        "loramill.alpha": str(config.alpha), "loramill.steps": str(steps),
        "loramill.resolution": str(config.resolution), "loramill.dataset_hash": data_hash,
        "loramill.format": config.format,
        **({"loramill.init_lora": Path(config.init_lora).name} if config.init_lora else {}),
        "ss_network_module": "networks.lora", "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.alpha), "ss_base_model_version": get_family(family).KOHYA_BASE_MODEL_VERSION,
        "ss_sd_model_name": base, "ss_steps": str(steps), "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_output_name": Path(config.out).stem, "ss_training_comment": f"trigger word: {config.trigger}",
    }


def _open_metrics(path: Path, keep_until: int) -> Any:
    """Open metrics.jsonl for appending, dropping lines past ``keep_until`` (a resumed run rewrites them)."""
    kept = []
    if keep_until and path.exists():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= keep_until:
                    kept.append(line)
            except (ValueError, KeyError):
                continue
    path.write_text("".join(line + "\n" for line in kept))
    return path.open("a")


@torch.no_grad()
def _validate(family: Any, pipe: Any, config: TrainConfig, step: int, run_dir: Path,
              trained: dict[str, torch.nn.Module]) -> None:
    """Render the validation prompts with the LoRA as it is now (fixed seed, so images are comparable)."""
    out_dir = run_dir / "validation"
    out_dir.mkdir(exist_ok=True)
    for module in trained.values():
        module.eval()
    rng_state = torch.get_rng_state()  # validation must not shift the training RNG
    dtype = check_precision(config.mixed_precision)
    device = getattr(pipe, family.DENOISER).device
    try:
        for i, prompt in enumerate(config.validation_prompts):
            side = config.resolution // family.RESOLUTION_MULTIPLE * family.RESOLUTION_MULTIPLE
            kwargs = family.generation_kwargs(prompt=prompt, negative_prompt="", steps=config.validation_steps,
                                              guidance=family.DEFAULT_GUIDANCE, width=side, height=side,
                                              num_images=1, generator=torch.Generator().manual_seed(config.seed),
                                              pipe=pipe)
            # The base is in the compute dtype and the VAE in fp32: autocast lets them meet.
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                image = pipe(**kwargs).images[0]
            image.save(out_dir / f"step-{step:06d}-{i}.png")
    finally:
        torch.set_rng_state(rng_state)
        for module in trained.values():
            module.train()
