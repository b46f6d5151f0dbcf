"""FLUX.1: CLIP (pooled) + T5 (sequence) text encoders and a rectified-flow transformer over packed
2x2 latent patches, trained by flow matching with FLUX's guidance embedding and timestep shift."""

from __future__ import annotations

import math
from typing import Any

import torch

from loramill.engine.families.base import ImageMeta, Noised, load_pipeline_of

PIPELINE_CLASS = "FluxPipeline"
TRAINABLE = True  # loramill trains LoRAs for it (Würstchen is generation only)
DENOISER = "transformer"
TEXT_ENCODERS = ("text_encoder",)  # T5 is never LoRA-trained here: its embeddings are always cached
# Attention projections of the double- and single-stream blocks: the modules diffusers' FLUX LoRA
# example trains, and the ones the kohya-style `lora_transformer_` layout describes.
DEFAULT_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_q_proj", "add_v_proj", "to_add_out"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
KOHYA_PREFIXES = {"transformer": "lora_transformer", "text_encoder": "lora_te1"}
# 8x VAE compression and 2x2 packing: sides must be multiples of 16.
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.5
RESOLUTION_MULTIPLE = 16
DEFAULT_SIZE = 1024  # pixels per side, when a job or flag names none
KOHYA_BASE_MODEL_VERSION = "flux1"  # ss_base_model_version in kohya metadata, as A1111 reads it
MAX_SEQUENCE_LENGTH = 512  # FLUX.1's T5 length; a model whose T5 tokenizer declares fewer tokens uses that


def sequence_length(pipe: Any = None) -> int:
    """T5 tokens per prompt: 512, or fewer where the model's T5 tokenizer declares a shorter maximum."""
    declared = getattr(getattr(pipe, "tokenizer_2", None), "model_max_length", None)
    return min(MAX_SEQUENCE_LENGTH, int(declared)) if isinstance(declared, int) and declared > 0 else MAX_SEQUENCE_LENGTH


def load_pipeline(source: str, *, dtype: torch.dtype = torch.float32) -> Any:
    """Load a FLUX.1 pipeline from a diffusers folder, a single-file checkpoint or a hub id."""
    from diffusers import FluxPipeline

    return load_pipeline_of(FluxPipeline, source, dtype=dtype)


def encode_prompts(pipe: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """T5 sequence embeddings and CLIP's pooled embedding; text ids are rebuilt from the length."""
    embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, device=pipe.text_encoder.device,
                                           num_images_per_prompt=1, max_sequence_length=sequence_length(pipe))
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def encode_images(pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
    """VAE latents, shifted and scaled as FLUX's transformer expects."""
    latents = pipe.vae.encode(pixels.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean
    return (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


def shift_sigmas(sigmas: torch.Tensor, scheduler_config: Any, image_seq_len: int) -> torch.Tensor:
    """FLUX's timestep shift: resolution-dependent (``use_dynamic_shifting``) or a fixed ``shift``."""
    if scheduler_config.get("use_dynamic_shifting", False):
        base_len = scheduler_config.get("base_image_seq_len", 256)
        max_len = scheduler_config.get("max_image_seq_len", 4096)
        base, top = scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15)
        mu = base + (top - base) * (image_seq_len - base_len) / (max_len - base_len)
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    shift = scheduler_config.get("shift", 1.0)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def add_noise(pipe: Any, latents: torch.Tensor, generator: torch.Generator, options: dict[str, Any]) -> Noised:
    """Flow matching: x_t = (1 - s) x0 + s noise; the target is the velocity noise - x0.

    Sigmas are drawn as ``options["timestep_sampling"]`` says (default ``shift``: uniform, then shifted
    towards noise as FLUX's schedule does for this resolution).
    """
    from loramill.engine.training.weighting import sample_flow_sigmas

    b, c, h, w = latents.shape
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    sigmas = sample_flow_sigmas(b, generator, options.get("timestep_sampling", "shift"),
                                lambda u: shift_sigmas(u, pipe.scheduler.config, (h // 2) * (w // 2)))
    sigmas = sigmas.to(latents.device, latents.dtype)
    s = sigmas.view(b, 1, 1, 1)
    return Noised((1.0 - s) * latents + s * noise, noise - latents, sigmas, sigmas=sigmas)


def predict(pipe: Any, noised: Noised, cond: dict[str, torch.Tensor], meta: list[ImageMeta],
            options: dict[str, Any]) -> torch.Tensor:
    """The transformer on packed 2x2 patches, unpacked back to the latent grid."""
    noisy = noised.noisy
    b, c, h, w = noisy.shape
    packed = pipe._pack_latents(noisy, b, c, h, w)
    img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
    embeds = cond["prompt_embeds"]
    txt_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full((b,), float(options.get("guidance_scale", 1.0)), device=noisy.device,
                              dtype=noisy.dtype)
    pred = pipe.transformer(hidden_states=packed, timestep=noised.timesteps, guidance=guidance,
                            pooled_projections=cond["pooled_prompt_embeds"], encoder_hidden_states=embeds,
                            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    return pipe._unpack_latents(pred, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)


def training_target(pipe: Any, latents: torch.Tensor, cond: dict[str, torch.Tensor], meta: list[ImageMeta],
                    generator: torch.Generator, options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow matching: the transformer predicts the velocity noise - x0 at drawn sigmas."""
    noised = add_noise(pipe, latents, generator, options)
    return predict(pipe, noised, cond, meta, options), noised.target


def generation_kwargs(*, prompt: str | list[str], negative_prompt: str | list[str], steps: int, guidance: float,
                      width: int, height: int, num_images: int,
                      generator: torch.Generator | list[torch.Generator], pipe: Any = None) -> dict[str, Any]:
    # FLUX.1-dev is guidance-distilled: `guidance_scale` feeds the guidance embedding; a negative prompt
    # switches on true CFG, which doubles the cost, so it is used only when one is given.
    kwargs = dict(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, width=width,
                  height=height, num_images_per_prompt=num_images, generator=generator,
                  max_sequence_length=sequence_length(pipe))
    if negative_prompt:
        kwargs.update(negative_prompt=negative_prompt, true_cfg_scale=max(guidance, 1.0))
    return kwargs


def claims_lora_keys(keys: set[str]) -> bool:
    """Whether a LoRA's tensor names say FLUX.1: a transformer denoiser with double and single blocks."""
    return any(k.startswith(("lora_transformer_", "transformer.")) or "double_blocks" in k or "single_blocks" in k
               for k in keys)
