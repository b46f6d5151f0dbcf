"""Preservation: how far a LoRA moves the model on prompts that do not call it (no trigger word).

A LoRA should change what its trigger calls up and little else; one that overwrites the base model
(every prompt now draws the subject) "forgets". Three measures, cheapest first:

- ``divergence``: the denoiser's output with the LoRA against without it, on fixed latents, timesteps
  and noise, relative to the output's size — no images rendered, so it can run every few steps;
- ``pixel``: 1 − mean absolute difference (0–1 pixels) of renders with and without the LoRA, same seeds;
- ``clip``: CLIP image similarity of those render pairs.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from loramill.engine.evaluation.clip import ClipEncoder, paired_similarity
from loramill.engine.evaluation.sampling import lora_disabled
from loramill.engine.families.base import FamilyModule, ImageMeta

# Prompts without a trigger that cover what a general model draws, for when the user gives none.
DEFAULT_PROMPTS = (
    "a photo of a city street at night", "a bowl of fruit on a wooden table", "a portrait of an old man",
    "a mountain lake at sunrise",
)


@torch.no_grad()
def denoiser_divergence(pipe: Any, family: FamilyModule, prompts: list[str], *, side: int, seed: int = 4321,
                        draws: int = 2) -> float:
    """Relative squared change of the denoiser's prediction caused by the LoRA: ‖on − off‖² / ‖off‖².

    Each draw takes fixed random latents, timesteps and noise per prompt, so the same call on the same
    weights returns the same number. 0 means the LoRA changes nothing on these prompts.
    """
    if not prompts:
        raise ValueError("denoiser_divergence needs at least one prompt")
    scale = getattr(pipe, "vae_scale_factor", 8)
    channels = pipe.vae.config.latent_channels
    size = side // family.RESOLUTION_MULTIPLE * family.RESOLUTION_MULTIPLE
    latent_side = max(2, size // scale // 2 * 2)  # FLUX packs 2×2 patches: keep it even
    meta = [ImageMeta((size, size), (0, 0), (size, size))] * len(prompts)
    device = getattr(pipe, "device", torch.device("cpu"))
    rng_state = torch.get_rng_state()
    try:
        on = _predictions(pipe, family, prompts, meta, channels, latent_side, seed, draws, device)
        with lora_disabled(pipe):
            off = _predictions(pipe, family, prompts, meta, channels, latent_side, seed, draws, device)
    finally:
        torch.set_rng_state(rng_state)
    return float(((on - off) ** 2).sum() / (off ** 2).sum().clamp_min(1e-12))


def _predictions(pipe: Any, family: FamilyModule, prompts: list[str], meta: list[ImageMeta], channels: int,
                 latent_side: int, seed: int, draws: int, device: torch.device) -> torch.Tensor:
    cond = {k: v.to(device) for k, v in family.encode_prompts(pipe, prompts).items()}
    generator = torch.Generator().manual_seed(seed)
    preds = []
    for _ in range(draws):
        latents = torch.randn((len(prompts), channels, latent_side, latent_side), generator=generator)
        pred, _target = family.training_target(pipe, latents.to(device), cond, meta, generator, {})
        preds.append(pred.float().cpu())
    return torch.stack(preds)


def pixel_similarity(base: list[Image.Image], lora: list[Image.Image]) -> float:
    """1 − mean absolute pixel difference (0–1) over image pairs rendered with the same prompt and seed."""
    if len(base) != len(lora) or not base:
        raise ValueError("pixel_similarity needs two equally long, non-empty lists of images")
    diffs = []
    for a, b in zip(base, lora):
        ta = _tensor(a)
        tb = _tensor(b.resize(a.size) if b.size != a.size else b)
        diffs.append(float((ta - tb).abs().mean()))
    return 1.0 - sum(diffs) / len(diffs)


def clip_similarity(encoder: ClipEncoder, base: list[Image.Image], lora: list[Image.Image]) -> float:
    """Mean CLIP image similarity of (base, LoRA) render pairs."""
    pairs = paired_similarity(encoder.embed_images(base), encoder.embed_images(lora))
    return sum(pairs) / len(pairs)


def _tensor(image: Image.Image) -> torch.Tensor:
    rgb = image.convert("RGB")
    return torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).float().div(255)
