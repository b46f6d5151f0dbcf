"""SDXL: two CLIP text encoders (hidden states concatenated, pooled embedding from the second),
size and crop conditioning through time ids, and a UNet trained on DDPM noise prediction."""

from __future__ import annotations

from typing import Any

import torch

from loramill.engine.families.base import ImageMeta, Noised, load_pipeline_of

# Same VAE handling and the same pipeline arguments as SD 1.5.
from loramill.engine.families.sd15 import add_noise, encode_images, generation_kwargs  # noqa: F401

PIPELINE_CLASS = "StableDiffusionXLPipeline"
TRAINABLE = True  # loramill trains LoRAs for it (Würstchen is generation only)
DENOISER = "unet"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
DEFAULT_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "out_proj"]
KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 5.0
RESOLUTION_MULTIPLE = 8
DEFAULT_SIZE = 1024  # pixels per side, when a job or flag names none
KOHYA_BASE_MODEL_VERSION = "sdxl_base_v1-0"  # ss_base_model_version in kohya metadata, as A1111 reads it


def load_pipeline(source: str, *, dtype: torch.dtype = torch.float32) -> Any:
    """Load an SDXL pipeline from a diffusers folder, a single-file checkpoint or a hub id."""
    from diffusers import StableDiffusionXLPipeline

    return load_pipeline_of(StableDiffusionXLPipeline, source, dtype=dtype)


def encode_prompts(pipe: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Both encoders' penultimate hidden states concatenated, and the second encoder's pooled output."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=pipe.text_encoder_2.device,
                                              num_images_per_prompt=1, do_classifier_free_guidance=False)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def time_ids(meta: list[ImageMeta], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's micro-conditioning: original size, crop top-left and target size of each image."""
    rows = [list(m.original_size) + list(m.crop_top_left) + list(m.target_size) for m in meta]
    return torch.tensor(rows, device=device, dtype=dtype)


def predict(pipe: Any, noised: Noised, cond: dict[str, torch.Tensor], meta: list[ImageMeta],
            options: dict[str, Any]) -> torch.Tensor:
    """The UNet as SD 1.5's, with pooled text embeddings and time ids as added conditioning."""
    added = {"text_embeds": cond["pooled_prompt_embeds"],
             "time_ids": time_ids(meta, noised.noisy.device, cond["prompt_embeds"].dtype)}
    return pipe.unet(noised.noisy, noised.timesteps, encoder_hidden_states=cond["prompt_embeds"],
                     added_cond_kwargs=added, return_dict=False)[0]


def training_target(pipe: Any, latents: torch.Tensor, cond: dict[str, torch.Tensor], meta: list[ImageMeta],
                    generator: torch.Generator, options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM as SD 1.5, with pooled text embeddings and time ids as added conditioning."""
    noised = add_noise(pipe, latents, generator, options)
    return predict(pipe, noised, cond, meta, options), noised.target


def claims_lora_keys(keys: set[str]) -> bool:
    """Whether a LoRA's tensor names say SDXL: a second text encoder or the added size embedding."""
    return any(k.startswith(("lora_te2_", "text_encoder_2.")) or "add_embedding" in k for k in keys)
