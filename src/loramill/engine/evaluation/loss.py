"""Denoising loss on fixed draws: the training objective, evaluated with the same noise every time.

Per-step training losses swing with the random timestep of each step; comparing a model with and
without a LoRA on the *same* noise and timesteps removes that noise from the comparison.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from loramill.engine.families import detect_family, get_family
from loramill.engine.training.cache import build_cache
from loramill.engine.training.data import load_examples


@torch.no_grad()
def denoising_loss(model: str, images: str, *, trigger: str, resolution: int, lora: Path | None = None,
                   seed: int = 1234, draws: int = 8) -> float:
    """Mean training loss of ``model`` (+ ``lora``) on ``images`` over ``draws`` fixed noise draws per image."""
    family_name = detect_family(model)
    if family_name is None:
        raise ValueError(f"{model} is not a trainable family")
    family = get_family(family_name)
    pipe = family.load_pipeline(model)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    examples = load_examples(images, trigger=trigger, resolution=resolution, multiple=family.RESOLUTION_MULTIPLE)
    cache = build_cache(family, pipe, examples, 0, None, cache_text=True)
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(draws):
        for i in range(len(examples)):
            latents, meta, captions = cache.batch([i], 0, examples)
            pred, target = family.training_target(pipe, latents, cache.text(captions), meta, generator, {})
            total += F.mse_loss(pred.float(), target.float()).item()
            count += 1
    return total / count
