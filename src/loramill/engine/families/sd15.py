"""Stable Diffusion 1.5: one CLIP text encoder, a UNet trained on DDPM noise prediction."""

from __future__ import annotations

from typing import Any

import torch

from loramill.engine.families.base import ImageMeta, Noised, add_noise_ddpm, ddpm_target, load_pipeline_of

PIPELINE_CLASS = "StableDiffusionPipeline"
TRAINABLE = True  # loramill trains LoRAs for it (Würstchen is generation only)
DENOISER = "unet"
TEXT_ENCODERS = ("text_encoder",)
# The attention projections, as diffusers' and kohya's SD LoRA trainers default to.
DEFAULT_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
# Key prefixes of the kohya layout, per component (sd-scripts writes lora_te_ for SD 1.x).
KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te"}
DEFAULT_STEPS = 20  # Euler (the generator's default sampler) reads the same at 20 as at 30 and 50
DEFAULT_GUIDANCE = 7.5
RESOLUTION_MULTIPLE = 8
DEFAULT_SIZE = 512  # pixels per side, when a job or flag names none
KOHYA_BASE_MODEL_VERSION = "sd_v1"  # ss_base_model_version in kohya metadata, as A1111 reads it


def load_pipeline(source: str, *, dtype: torch.dtype = torch.float32) -> Any:
    """Load an SD 1.5 pipeline from a diffusers folder, a single-file checkpoint or a hub id."""
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline_of(StableDiffusionPipeline, source, dtype=dtype)
    pipe.safety_checker = None  # loramill produces training previews and user-requested images
    return pipe


def encode_prompts(pipe: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """CLIP last hidden states, one row per prompt."""
    embeds, _ = pipe.encode_prompt(prompts, pipe.text_encoder.device, 1, False)
    return {"prompt_embeds": embeds}


def encode_images(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latents of images in [-1, 1], scaled as the UNet expects (the distribution's mean)."""
    latents = pipe.vae.encode(pixels.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean
    return latents * pipe.vae.config.scaling_factor


def _noise_scheduler(pipe: Any) -> Any:
    from diffusers import DDPMScheduler

    cached = getattr(pipe, "_loramill_ddpm", None)
    if cached is None:
        cached = DDPMScheduler.from_config(pipe.scheduler.config)
        pipe._loramill_ddpm = cached
    return cached


def add_noise(pipe: Any, latents: torch.Tensor, generator: torch.Generator, options: dict[str, Any]) -> Noised:
    """DDPM: noise the latents at random timesteps; the target is the noise (or velocity)."""
    from loramill.engine.training.weighting import ddpm_snr

    scheduler = _noise_scheduler(pipe)
    noisy, noise, timesteps = add_noise_ddpm(scheduler, latents, generator, options.get("noise_offset", 0.0))
    return Noised(noisy, ddpm_target(scheduler, latents, noise, timesteps), timesteps,
                  snr=ddpm_snr(scheduler.alphas_cumprod, timesteps))


def predict(pipe: Any, noised: Noised, cond: dict[str, torch.Tensor], meta: list[ImageMeta],
            options: dict[str, Any]) -> torch.Tensor:
    return pipe.unet(noised.noisy, noised.timesteps, encoder_hidden_states=cond["prompt_embeds"], return_dict=False)[0]


def training_target(pipe: Any, latents: torch.Tensor, cond: dict[str, torch.Tensor], meta: list[ImageMeta],
                    generator: torch.Generator, options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM: noise the latents at random timesteps; the UNet predicts the noise (or velocity)."""
    noised = add_noise(pipe, latents, generator, options)
    return predict(pipe, noised, cond, meta, options), noised.target


def generation_kwargs(*, prompt: str | list[str], negative_prompt: str | list[str], steps: int, guidance: float,
                      width: int, height: int, num_images: int,
                      generator: torch.Generator | list[torch.Generator], pipe: Any = None) -> dict[str, Any]:
    """The pipeline call's arguments (``pipe``: the loaded pipeline, for families whose arguments depend on it)."""
    return dict(prompt=prompt, negative_prompt=negative_prompt or None, num_inference_steps=steps,
                guidance_scale=guidance, width=width, height=height, num_images_per_prompt=num_images,
                generator=generator)


def claims_lora_keys(keys: set[str]) -> bool:
    """SD 1.5 keys carry no mark of their own: it is the family left when no other claims a LoRA."""
    return False
