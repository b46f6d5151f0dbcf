"""The training run's typed configuration, validated when built; every error names the option and the fix."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from loramill.engine.lora.layouts import LORA_FORMATS
from loramill.errors import InvalidInput

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
MIXED_PRECISION = ("no", "bf16", "fp16")
PREPARE_MODES = ("auto", "never")


def _bad(option: str, message: str) -> InvalidInput:
    return InvalidInput(f"--{option.replace('_', '-')}: {message}", code="invalid_option", field=option)


@dataclass
class TrainConfig:
    """Everything one LoRA training run needs. Field names match the CLI flags (``--max-steps`` → ``max_steps``)."""

    model: str
    images: str
    trigger: str
    out: str
    family: str | None = None
    work_dir: str | None = None  # metrics, checkpoints, validation images; default: beside --out
    resolution: int = 512
    rank: int = 16
    alpha: float | None = None  # default: equal to rank (scale 1)
    target_modules: list[str] | None = None
    train_text_encoder: bool = False
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: str | None = None  # a checkpoint folder, or "latest" (newest in work_dir)
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = 0
    validation_steps: int = 20
    format: str = "kohya"
    guidance_scale: float = 1.0  # FLUX guidance embedding value during training
    augment_variants: int = 0  # cached augmented copies per image (0: none)
    class_word: str | None = None
    # Raw folders go through `dataset prepare` first (validation, EXIF, de-duplication, captions).
    prepare: str = "auto"  # auto: prepare plain folders; never: read them as they are
    subject: str | None = None  # face | object | style, for the dataset step

    def __post_init__(self) -> None:
        if not self.trigger or not self.trigger.strip():
            raise _bad("trigger", "give the trigger word that will call up the subject, e.g. --trigger sks")
        if any(ch.isspace() for ch in self.trigger.strip()):
            raise _bad("trigger", f"{self.trigger!r} has spaces; use one token such as sks or tsuki_advtr")
        self.trigger = self.trigger.strip()
        if not isinstance(self.rank, int) or self.rank < 1 or self.rank > 1024:
            raise _bad("rank", f"must be a whole number from 1 to 1024 (typical: 4-64), got {self.rank!r}")
        if self.alpha is None:
            self.alpha = float(self.rank)
        if not _finite_positive(self.alpha):
            raise _bad("alpha", f"must be a positive number (default: the rank), got {self.alpha!r}")
        if not _finite_positive(self.lr) or self.lr > 10:
            raise _bad("lr", f"must be a finite number above 0 and at most 10 (typical: 1e-4; Prodigy: 1.0), "
                       f"got {self.lr!r}")
        for name in ("resolution", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise _bad(name, f"must be a whole number ≥ 1, got {value!r}")
        if self.resolution < 64 or self.resolution > 4096:
            raise _bad("resolution", f"must be from 64 to 4096 pixels, got {self.resolution}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or not 1 <= self.epochs <= 100_000):
            raise _bad("epochs", f"must be a whole number from 1 to 100000, got {self.epochs!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or not 1 <= self.max_steps <= 10_000_000):
            raise _bad("max_steps", f"must be a whole number from 1 to 10000000, got {self.max_steps!r}")
        if self.epochs is None and self.max_steps is None:
            self.epochs = 10
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("format", self.format, LORA_FORMATS)
        _choice("prepare", self.prepare, PREPARE_MODES)
        for name in ("checkpoint_every", "validation_every", "lr_warmup_steps", "augment_variants"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise _bad(name, f"must be a whole number ≥ 0, got {value!r}")
        if self.keep_checkpoints < 1:
            raise _bad("keep_checkpoints", "keep at least 1 checkpoint")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise _bad("weight_decay", f"must be ≥ 0, got {self.weight_decay!r}")
        if not math.isfinite(self.max_grad_norm) or self.max_grad_norm < 0:
            raise _bad("max_grad_norm", f"must be ≥ 0 (0 disables clipping), got {self.max_grad_norm!r}")

    @property
    def run_dir(self) -> Path:
        """Where metrics, checkpoints and validation images go."""
        if self.work_dir:
            return Path(self.work_dir)
        out = Path(self.out)
        return out.with_name(out.stem + ".run")

    @classmethod
    def from_sources(cls, toml_path: str | None, overrides: dict[str, Any]) -> TrainConfig:
        """Build from an optional TOML file and explicit overrides (command-line flags win)."""
        values: dict[str, Any] = {}
        if toml_path:
            values.update(read_toml(toml_path))
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInput(f"unknown training option(s) {', '.join(unknown)}; known options: "
                               f"{', '.join(sorted(known))}", code="invalid_option", field=unknown[0])
        missing = [name for name in ("model", "images", "trigger", "out") if not values.get(name)]
        if missing:
            raise InvalidInput(f"missing required option(s): {', '.join('--' + m for m in missing)}",
                               code="invalid_option", field=missing[0])
        return cls(**values)


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


def _finite_positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise _bad(option, f"unknown value {value!r}; choose one of: {', '.join(allowed)}")
