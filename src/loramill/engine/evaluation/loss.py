"""Denoising loss on fixed draws: the training objective, evaluated with the same noise every time.

Per-step training losses swing with the random timestep of each step; comparing a model with and
without a LoRA, or two checkpoints, on the *same* noise and timesteps removes that noise from the
comparison. Measured on images the run did not train on (``holdout_split``), it also tells learning
the subject from memorising the training pictures.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from loramill.engine.families import detect_family, get_family
from loramill.engine.families.base import FamilyModule
from loramill.engine.training.cache import build_cache
from loramill.engine.training.data import Example, load_examples

HOLDOUT_MIN_IMAGES = 10  # below this every image is needed for training; the loss is measured on them
HOLDOUT_FRACTION = 0.1


def holdout_split(examples: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded tenth held out when there are at least ``HOLDOUT_MIN_IMAGES`` images."""
    if len(examples) < HOLDOUT_MIN_IMAGES:
        return examples, []
    count = max(1, round(len(examples) * HOLDOUT_FRACTION))
    held = set(random.Random(seed).sample(range(len(examples)), count))
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


@torch.no_grad()
def denoising_loss_of(pipe: Any, family: FamilyModule, examples: list[Example], *, seed: int = 1234,
                      draws: int = 8) -> float:
    """Mean training loss of ``pipe`` as it is now on ``examples``, over ``draws`` fixed noise draws each.

    The text embeddings are computed here (not taken from a training cache), so a LoRA on the text
    encoder is measured too. Torch's global RNG is left as it was.
    """
    if not examples:
        raise ValueError("denoising_loss_of needs at least one example")
    rng_state = torch.get_rng_state()
    try:
        cache = build_cache(family, pipe, examples, 0, None, cache_text=True)
        generator = torch.Generator().manual_seed(seed)
        device = getattr(pipe, "device", torch.device("cpu"))
        total, count = 0.0, 0
        for _ in range(draws):
            for i in range(len(examples)):
                latents, meta, captions = cache.batch([i], 0, examples)
                cond = {k: v.to(device) for k, v in cache.text(captions).items()}
                pred, target = family.training_target(pipe, latents.to(device), cond, meta, generator, {})
                total += F.mse_loss(pred.float(), target.float()).item()
                count += 1
    finally:
        torch.set_rng_state(rng_state)
    return total / count


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
    return denoising_loss_of(pipe, family, examples, seed=seed, draws=draws)
