"""What every model family module offers, and the shared loading logic.

A family module (``sd15.py``, ``sdxl.py``, ``flux.py``) defines the same names, so knowing one means
knowing all (peft's rule): ``PIPELINE_CLASS``, ``TRAINABLE``, ``DENOISER``, ``TEXT_ENCODERS``, ``DEFAULT_TARGET_MODULES``,
``TEXT_ENCODER_TARGET_MODULES``, ``KOHYA_PREFIXES``, ``KOHYA_BASE_MODEL_VERSION``, ``RESOLUTION_MULTIPLE``,
``DEFAULT_SIZE``, ``DEFAULT_STEPS``, ``DEFAULT_GUIDANCE``, ``load_pipeline``, ``encode_prompts``, ``encode_images``,
``add_noise``, ``predict``, ``training_target``, ``generation_kwargs`` and ``claims_lora_keys``. Adding a family
is its module plus one line in ``FAMILIES`` (``loramill.engine.families``); everything else reads these names.
A training step is ``add_noise`` (draws) then ``predict`` (the denoiser), so the same noisy latents can be
predicted again under other conditioning or adapters (teacher preservation); ``training_target`` is both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from loramill.errors import InvalidInput

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".sft")


@dataclass
class ImageMeta:
    """Where a training image came from, for SDXL's size and crop conditioning (pixels)."""

    original_size: tuple[int, int]  # (height, width) before resizing
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    target_size: tuple[int, int]  # (height, width) fed to the model


@dataclass
class Noised:
    """One draw of the forward process: what the denoiser sees and what it should predict."""

    noisy: torch.Tensor  # [B, C, H, W] latents with noise (FLUX: unpacked)
    target: torch.Tensor  # ε, v or the flow velocity, same shape as ``noisy``
    timesteps: torch.Tensor  # what the denoiser is given: DDPM steps, or FLUX sigmas
    snr: torch.Tensor | None = None  # per sample, DDPM families (min-SNR weighting)
    sigmas: torch.Tensor | None = None  # per sample, flow matching (loss weighting)


class FamilyModule(Protocol):
    PIPELINE_CLASS: str
    TRAINABLE: bool
    DENOISER: str
    TEXT_ENCODERS: tuple[str, ...]
    DEFAULT_TARGET_MODULES: list[str]
    TEXT_ENCODER_TARGET_MODULES: list[str]
    KOHYA_PREFIXES: dict[str, str]
    KOHYA_BASE_MODEL_VERSION: str
    RESOLUTION_MULTIPLE: int
    DEFAULT_SIZE: int
    DEFAULT_STEPS: int
    DEFAULT_GUIDANCE: float

    def load_pipeline(self, source: str, *, dtype: torch.dtype = torch.float32) -> Any: ...

    def encode_prompts(self, pipe: Any, prompts: list[str]) -> dict[str, torch.Tensor]: ...

    def encode_images(self, pipe: Any, pixels: torch.Tensor) -> torch.Tensor: ...

    def add_noise(self, pipe: Any, latents: torch.Tensor, generator: torch.Generator,
                  options: dict[str, Any]) -> Noised: ...

    def predict(self, pipe: Any, noised: Noised, cond: dict[str, torch.Tensor], meta: list[ImageMeta],
                options: dict[str, Any]) -> torch.Tensor: ...

    def training_target(self, pipe: Any, latents: torch.Tensor, cond: dict[str, torch.Tensor],
                        meta: list[ImageMeta], generator: torch.Generator,
                        options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def generation_kwargs(self, *, pipe: Any = None, **kwargs: Any) -> dict[str, Any]: ...

    def claims_lora_keys(self, keys: set[str]) -> bool: ...


def pipeline_class_of(source: str) -> str | None:
    """The ``_class_name`` in a diffusers folder's model_index.json, or ``None`` if not a folder."""
    index = Path(source) / "model_index.json"
    if not index.is_file():
        return None
    try:
        return str(json.loads(index.read_text())["_class_name"])
    except (ValueError, KeyError) as exc:
        raise InvalidInput(f"{index} is not a valid diffusers model_index.json ({exc}); "
                           "re-save the model with diffusers' save_pretrained", field="model") from exc


def load_pipeline_of(pipeline_cls: Any, source: str, *, dtype: torch.dtype) -> Any:
    """Load ``pipeline_cls`` from a diffusers folder, a single-file checkpoint, or a hub id.

    The three sources a user may hold: a folder written by ``save_pretrained``, one ``.safetensors``
    or ``.ckpt`` file as trainers and model sites ship them (through diffusers' ``from_single_file``),
    or a hub id where the machine can reach the hub. Every failure names the source and what to do.
    """
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise InvalidInput(f"model folder {path} has no model_index.json; give a diffusers folder "
                                   "(saved with save_pretrained) or a single-file checkpoint", field="model")
            return pipeline_cls.from_pretrained(str(path), torch_dtype=dtype)
        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise InvalidInput(f"model file {path} is not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)})",
                                   field="model")
            return pipeline_cls.from_single_file(str(path), torch_dtype=dtype)
        if source.startswith((".", "/", "~")) or source.count("/") != 1:
            raise InvalidInput(f"model {source!r} not found: no such folder or file (a hub id looks like "
                               "'org/name')", code="model_not_found", field="model")
        return pipeline_cls.from_pretrained(source, torch_dtype=dtype)
    except InvalidInput:
        raise
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"could not load model {source!r} as {pipeline_cls.__name__}: {exc}. "
                           "Check the path, or download the model where the hub is reachable and pass its folder",
                           code="model_load_failed", field="model") from exc


def add_noise_ddpm(scheduler: Any, latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample noise and timesteps and noise the latents (DDPM forward process); returns (noisy, noise, t).

    ``noise_offset`` (Guttenberg's offset noise) adds ``offset × N(0, 1)`` per sample and channel, constant over
    the image: plain noise never shifts a channel's mean, so a model trained without it cannot move far from
    mid-grey. Its draw comes from the same generator, after the noise, and only when the offset is non-zero.
    """
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    if noise_offset:
        b, c = latents.shape[:2]
        offset = torch.randn((b, c, 1, 1), generator=generator, dtype=latents.dtype).to(latents.device)
        noise = noise + noise_offset * offset
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(latents.device).long()
    return scheduler.add_noise(latents, noise, timesteps), noise, timesteps


def ddpm_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity, per the model's scheduler config."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise InvalidInput(f"unsupported prediction_type {kind!r} in the model's scheduler config; "
                       "loramill trains epsilon and v_prediction models", field="model")
