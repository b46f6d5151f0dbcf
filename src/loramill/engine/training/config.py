"""``TrainConfig``: every option of a training run, declared once (see ``loramill.engine.options``).

This is the spec of the training job kind: ``loramill train``'s flags, the TOML keys, the queue's
``configurationParams`` and the API's schemas are derived from these declarations. Choices come from the
engine's own tables (optimizers, schedules, captioners, subject modes, families).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator

from loramill.engine.dataset.captions import CAPTIONERS
from loramill.engine.dataset.subjects import SUBJECTS
from loramill.engine.evaluation.adherence import DOMAINS
from loramill.engine.evaluation.selection import METRICS, parse_target
from loramill.engine.families import FAMILIES
from loramill.engine.lora.layouts import LORA_FORMATS
from loramill.engine.options import Prompt, Spec, WireCap, option, option_error, text_check
from loramill.engine.training.choices import (
    EMA_EXPORT,
    FLOW_LOSS_WEIGHTING,
    LOSSES,
    MASKED_LOSS,
    QUANTIZE_MODES,
    TIMESTEP_SAMPLING,
)
from loramill.engine.training.optim import LR_SCHEDULERS, MIXED_PRECISION, OPTIMIZERS
from loramill.errors import InvalidInput

PREPARE_MODES = ("auto", "never")
PRESERVE_TEACHERS = ("auto", "base", "init_lora")
_SHARED_GPU = "a queue worker is one shared GPU: this bounds how long one job may hold it"


def _stop_target(value: str) -> str:
    from pydantic_core import PydanticCustomError

    try:
        return str(parse_target(value))
    except InvalidInput as exc:
        raise PydanticCustomError("stop_target", "{message}", {"message": exc.message.split(": ", 1)[-1]}) from None


StopTarget = Annotated[str, AfterValidator(_stop_target)]


def _one_token(value: str) -> str:
    from pydantic_core import PydanticCustomError

    if any(ch.isspace() for ch in value.strip()):
        raise PydanticCustomError("trigger_spaces", "{value} has spaces; use one token such as sks or tsuki_advtr",
                                  {"value": repr(value)[:70]})
    return value.strip()


TriggerWord = Annotated[str, AfterValidator(text_check(64, multiline=False, required=True)),
                        AfterValidator(_one_token)]


class TrainConfig(Spec):
    """Everything one LoRA training run needs; ``None`` where the default depends on the model or data."""

    # what to train, on what, into where
    model: str = option(help="base model: diffusers folder, single-file checkpoint, or hub id")
    images: str = option(help="folder of images (+ .txt captions), a prepared dataset, or a kohya dataset.toml")
    trigger: TriggerWord = option(wire="triggerWord",
                                  help="trigger word, present in every caption (prepended when missing)")
    out: str = option(help="the LoRA file to write (.safetensors)")
    family: str | None = option(None, choices=FAMILIES, help="model family (default: detected)")
    work_dir: str | None = option(None, help="metrics, checkpoints, validation images (default: OUT.run beside out)")
    # the dataset step (raw folders)
    prepare: str = option("auto", choices=PREPARE_MODES,
                          help="auto: run the dataset step on a raw folder first; never: read it as it is")
    subject: str | None = option(None, choices=SUBJECTS, wire="subjectType", help="subject mode for the dataset step")
    captioner: str = option("template", choices=CAPTIONERS, wire="captioner",
                            help="captions for images without a .txt beside them")
    class_word: str | None = option(None, help="class word for template captions (e.g. man, dog)")
    augment_variants: int = option(0, ge=0, le=64, help="augmented copies per image (flip, jitter, rotation)")
    # the adapter
    resolution: int = option(512, ge=64, le=4096, wire="resolution", help="training size in pixels",
                             wire_cap=WireCap(le=2048, multiple_of=8, reason="a job's activation memory grows with "
                                              "the square of the side and must fit a shared worker GPU; multiples "
                                              "of 8 fit every family's latents"))
    rank: int = option(16, ge=1, le=1024, wire="networkDim", help="LoRA rank (typical: 4-64)",
                       wire_cap=WireCap(le=256, reason="generation workers download every LoRA a job names and "
                                        "keep several resident; above rank 256 one file takes hundreds of MB"))
    alpha: float | None = option(None, gt=0, le=1024, wire="networkAlpha", help="LoRA alpha (default: the rank)")
    target_modules: list[str] | None = option(None, split=",", help="comma-separated module names (default: the "
                                              "family's attention layers)")
    train_text_encoder: bool = option(False, wire="trainTextEncoder", families=("sd15", "sdxl"),
                                      why="FLUX.1's LoRAs train the transformer only",
                                      help="also train text-encoder LoRA (SD families): teaches a new word its "
                                      "meaning; pair it with preserve_weight to keep the rest (docs/quality.md)")
    format: str = option("kohya", choices=LORA_FORMATS,
                         help="LoRA layout of the written file (README, \"LoRA layouts\": which tool loads which)")
    # how long
    epochs: int | None = option(None, ge=1, le=100_000, wire="epochs", help="passes over the data (default 10)",
                                wire_cap=WireCap(le=1000, reason=_SHARED_GPU))
    max_steps: int | None = option(None, ge=1, le=10_000_000, wire="maxSteps",
                                   help="optimizer steps; wins over epochs", wire_cap=WireCap(le=100_000,
                                                                                              reason=_SHARED_GPU))
    batch_size: int = option(1, ge=1, le=64, wire="batchSize", help="images per micro-batch")
    grad_accum: int = option(1, ge=1, le=128, wire="gradientAccumulation",
                             help="micro-batches per optimizer step")
    # the optimizer
    lr: float = option(1e-4, gt=0, le=10, wire="learningRate",
                       help="learning rate (typical: 1e-4; Prodigy: 1.0)",
                       wire_cap=WireCap(lt=1, reason="the queue contract's clients send AdamW rates, where 1 or "
                                        "more is a units slip (8 for 8e-4); Prodigy's 1.0 is for the CLI"))
    text_encoder_lr: float | None = option(None, gt=0, le=10, wire="textEncoderLr", families=("sd15", "sdxl"),
                                           why="FLUX.1's LoRAs train the transformer only",
                                           help="learning rate of the text-encoder LoRA (default: lr; kohya's "
                                           "--text_encoder_lr)",
                                           wire_cap=WireCap(lt=1, reason="as learningRate: an AdamW rate"))
    lr_scheduler: str = option("constant", choices=LR_SCHEDULERS, wire="lrScheduler", help="learning-rate schedule")
    lr_warmup_steps: int = option(0, ge=0, help="steps of linear warm-up")
    optimizer: str = option("adamw", choices=OPTIMIZERS, wire="optimizer", help="optimizer")
    weight_decay: float = option(1e-2, ge=0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, ge=0, help="gradient clipping norm (0 disables clipping)")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="autocast precision (bf16/fp16 need CUDA)")
    gradient_checkpointing: bool = option(False, help="trade compute for memory")
    quantize_base: str = option("none", choices=QUANTIZE_MODES, wire="quantizeBase",
                                help="store the frozen denoiser's Linear weights in int8 (CPU or CUDA), fp8 (Ada/"
                                     "Hopper GPU) or nf4 (CUDA); the LoRA trains in fp32 on top and loads on the "
                                     "unquantised base")
    guidance_scale: float = option(1.0, ge=0, le=100, help="FLUX guidance embedding value during training")
    noise_offset: float = option(0.0, ge=0, le=1, wire="noiseOffset", families=("sd15", "sdxl"),
                                 why="FLUX.1 trains by flow matching, which does not use it",
                                 help="add offset × one normal draw per image and channel to the training noise, so "
                                      "the LoRA can learn images darker or brighter than average (typical: 0.05-0.1)")
    seed: int = option(0, ge=0, le=2**32 - 1, wire="seed", help="seed of the adapter init, batch order and noise")
    # checkpoints and validation
    checkpoint_every: int = option(0, ge=0, le=10_000_000, wire="checkpointEverySteps",
                                   help="save a resumable checkpoint every N steps (0: never)",
                                   wire_cap=WireCap(ge=1, le=100_000, reason="a worker resumes a crashed job "
                                                    "from its checkpoints, so a job cannot turn them off"))
    keep_checkpoints: int = option(2, ge=1, help="newest checkpoints kept")
    resume: str | None = option(None, help="a checkpoint folder, or 'latest' (newest in work_dir)")
    validation_prompts: list[Prompt] = option([], max_length=8, wire="validationPrompts", cli="--validation-prompt",
                                              help="render this prompt every validation_every steps (repeatable)")
    validation_every: int = option(0, ge=0, help="steps between validation renders (0: never)")
    validation_steps: int = option(20, ge=1, le=500, help="denoising steps of a validation render")
    # continuing a LoRA and keeping what the model knew (engine/training/init_lora.py, objective.py, preservation.py)
    init_lora: str | None = option(None, wire="initLora",
                                   help="continue from this LoRA (kohya, diffusers or sd-scripts file of the same family "
                                   "and rank; on the queue a LoRA id or a storage key of your own): training starts "
                                   "exactly at its weights, with a fresh optimizer")
    preserve_weight: float = option(0.0, ge=0, le=100, wire="preserveWeight",
                                    help="teacher preservation: weight of pulling the LoRA's predictions on "
                                    "trigger-free prompts toward the teacher's (0: off; typical 0.5-1)")
    preserve_prompts: list[Prompt] = option([], max_length=64, wire="preservePrompts", cli="--preserve-prompt",
                                            help="a prompt whose output to keep (repeatable): every other "
                                            "preservation sample uses one of these")
    preserve_teacher: str = option("auto", choices=PRESERVE_TEACHERS, wire="preserveTeacher",
                                   help="the teacher: base (adapters off), init_lora (base + the LoRA continued "
                                   "from), auto (init_lora when continuing, else base)")
    replay_images: str | None = option(None, help="the previous concept's dataset, mixed in every step when continuing")
    replay_weight: float = option(1.0, ge=0, le=100, help="loss weight of the replayed images")
    prior_weight: float = option(0.0, ge=0, le=100, wire="priorWeight",
                                 help="prior preservation loss weight (0: off); needs class_images or class_word")
    class_images: str | None = option(None, help="prior preservation images (default: generated from the class word)")
    class_image_count: int = option(20, ge=1, le=1000, wire="classImageCount",
                                    help="class images the base model generates when none are given")
    concepts: list[str] = option([], max_length=16, cli="--concept",
                                 help="another concept in the same run: TRIGGER=FOLDER (repeatable)")
    # the recipe (engine/training/{ema,weighting,losses,masks,conditioning}.py, optim.param_groups)
    ema_decay: float = option(0.0, ge=0, lt=1, wire="emaDecay",
                              help="EMA of the LoRA weights (0: off; typical 0.99-0.999)")
    ema_export: str = option("ema", choices=EMA_EXPORT, wire="emaExport",
                             help="which weights the file holds when EMA is on")
    min_snr_gamma: float = option(0.0, ge=0, le=100, wire="minSnrGamma", families=("sd15", "sdxl"),
                                  why="it weights DDPM timesteps; FLUX.1 has flow_loss_weighting",
                                  help="min-SNR-γ loss weighting, SD 1.5/SDXL (0: off; the paper's γ: 5)")
    timestep_sampling: str = option("shift", choices=TIMESTEP_SAMPLING, wire="timestepSampling", families=("flux",),
                                    why="flow matching draws sigmas; DDPM families draw timesteps uniformly",
                                    help="FLUX: where sigmas are drawn (shift: FLUX's own resolution shift)")
    flow_loss_weighting: str = option("none", choices=FLOW_LOSS_WEIGHTING, wire="flowLossWeighting",
                                      families=("flux",), why="SD 1.5/SDXL have min_snr_gamma",
                                      help="FLUX: SD3's per-sample loss weighting")
    loss: str = option("l2", choices=LOSSES, wire="loss", help="per-element loss (huber, smooth_l1: sd-scripts' forms)")
    huber_delta: float = option(0.1, gt=0, le=10, wire="huberDelta", help="δ of the huber and smooth_l1 losses")
    masked_loss: str = option("off", choices=MASKED_LOSS, wire="maskedLoss",
                              help="count the loss only on the opaque pixels (alpha) or the detected faces (face)")
    # 0.1 by measurement (docs/quality.md, "Caption dropout by default"): on the reference world it raised
    # a new concept's fidelity in four of five comparisons and lowered none, cost at most one preservation
    # image in 30, kept two concepts of one run apart, and costs no time; SimpleTuner recommends 0.1 too.
    caption_dropout: float = option(0.1, ge=0, lt=1, wire="captionDropout",
                                    help="share of samples trained on the empty prompt (0: off)")
    lora_plus_ratio: float = option(1.0, ge=1, le=256, wire="loraPlusRatio",
                                    help="LoRA+: the B matrices' learning rate over A's (1: off; the paper: 16)")
    # evaluation during training (engine/evaluation): metrics.jsonl, samples/, the best weights, a stop target
    eval_every: int = option(0, ge=0, le=10_000_000, wire="evalEverySteps",
                             help="measure fidelity, preservation and denoising loss every N steps and at the end "
                             "(0: never); with 10 or more images a tenth is held out for the loss")
    eval_steps: int = option(20, ge=1, le=200, help="sampler steps of an evaluation render")
    eval_seeds: int = option(2, ge=1, le=16, help="renders per evaluation prompt (seeds 0..N-1)")
    eval_prompts: list[Prompt] = option([], max_length=16, cli="--eval-prompt",
                                        help="a prompt without the trigger, for preservation (repeatable; default: "
                                        "a few general ones)")
    clip_model: str | None = option(None, help="CLIP model folder (transformers CLIPModel) for CLIP fidelity "
                                    "(consistency) and preservation")
    eval_domain: str | None = option(None, choices=DOMAINS, help="a domain with a scorer: shapes (the reference "
                                     "world) adds classifier fidelity and preservation")
    select_by: str | None = option(None, choices=METRICS, wire="selectBy",
                                   help="export the evaluation with the best value of this metric, not the last "
                                   "weights (needs eval_every)")
    stop_at: StopTarget | None = option(None, wire="stopAt",
                                        help="stop once an evaluation reaches METRIC>=VALUE, e.g. clip>=0.8 "
                                        "(needs eval_every)")

    def model_post_init(self, context: Any) -> None:
        if self.alpha is None:
            self.alpha = float(self.rank)  # scale 1
        if self.epochs is None and self.max_steps is None:
            self.epochs = 10
        _check_recipe(self)
        for name in ("select_by", "stop_at"):
            if getattr(self, name) and not self.eval_every:
                raise option_error(name, "chooses among evaluations, and this run has none; set eval_every too "
                                   "(e.g. --eval-every 100)")

    @property
    def run_dir(self) -> Path:
        """Where metrics, checkpoints and validation images go."""
        if self.work_dir:
            return Path(self.work_dir)
        out = Path(self.out)
        return out.with_name(out.stem + ".run")

    @classmethod
    def from_sources(cls, toml_path: str | None, overrides: dict[str, Any]) -> TrainConfig:
        """Build from an optional TOML file and explicit overrides (these win; ``None`` means not given).

        An error about a value from the file names its key and the file (``lr in train.toml``).
        """
        values: dict[str, Any] = dict(read_toml(toml_path)) if toml_path else {}
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise InvalidInput(f"{unknown[0]}: unknown training option(s) {', '.join(unknown)} in {toml_path}; "
                               f"known options: {', '.join(cls.model_fields)}", code="invalid_option",
                               field=unknown[0])
        from_file = set(values)
        values.update({k: v for k, v in overrides.items() if v is not None})
        from_file -= {k for k, v in overrides.items() if v is not None}
        try:
            return cls(**values)
        except InvalidInput as exc:
            head = (exc.field or "").split(".")[0].split("[")[0]
            if head in from_file:
                message = exc.message.removeprefix(f"{exc.field}: ")
                raise InvalidInput(f"{exc.field} in {toml_path}: {message}", code=exc.code,
                                   field=f"{exc.field} in {toml_path}") from None
            raise


def _check_recipe(config: TrainConfig) -> None:
    """What one option's limits cannot say: options that need another option, or exclude one."""
    if config.ema_decay and config.ema_decay < 0.5:
        raise option_error("ema_decay", f"{config.ema_decay} averages almost nothing; use 0 (off) or 0.5-0.9999 "
                           "(typical: 0.99-0.999)")
    if config.preserve_teacher == "init_lora" and not config.init_lora:
        raise option_error("preserve_teacher", "init_lora needs init_lora set (the LoRA continued from is the teacher)")
    if config.text_encoder_lr is not None and not config.train_text_encoder:
        raise option_error("text_encoder_lr", "it is the text-encoder LoRA's rate; set train_text_encoder too, or "
                           "leave it unset")
    if config.replay_images and not config.init_lora:
        raise option_error("replay_images", "replay mixes in the previous concept when continuing; set init_lora "
                           "too, or train the folder as another concept (concepts TRIGGER=FOLDER)")
    if config.prior_weight and not config.class_images and not config.class_word:
        raise option_error("prior_weight", "prior preservation needs class_images, or class_word to generate them "
                           "(e.g. dog)")
    if config.masked_loss != "off" and config.augment_variants:
        raise option_error("masked_loss", "masks follow each image's geometry and are not augmented; use "
                           "augment_variants 0 with a masked loss")
    for concept in config.concepts:
        trigger, sep, folder = concept.partition("=")
        if not sep or not trigger.strip() or not folder.strip() or any(ch.isspace() for ch in trigger.strip()):
            raise option_error("concepts", f"{concept!r} is not TRIGGER=FOLDER (one word, then the folder), "
                               "e.g. ohwx=photos/cat")


def read_toml(path: str) -> dict[str, Any]:
    """Read a training config TOML (flat keys, or a ``[train]`` table); dashes in keys become underscores."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidInput(f"config file {p} does not exist", code="invalid_config", field="config") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"config file {p} is not readable TOML: {exc}", code="invalid_config",
                           field="config") from exc
    if isinstance(data.get("train"), dict):
        data = data["train"]
    return {str(k).replace("-", "_"): v for k, v in data.items()}
