"""Fixed-seed renders for evaluation, and switching a pipeline's LoRA off and on around them.

Every evaluation renders the same prompts with the same seeds, so two checkpoints (or a model with and
without its LoRA) are compared on identical noise: a difference between their images is the weights'.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from loramill.engine.families.base import FamilyModule


@dataclass(frozen=True)
class RenderSettings:
    """How evaluation images are rendered: sampler steps, guidance (None: the family's), side in pixels."""

    steps: int = 20
    guidance: float | None = None
    side: int = 512
    seeds: tuple[int, ...] = (0, 1)


@torch.no_grad()
def render(pipe: Any, family: FamilyModule, prompts: list[str], settings: RenderSettings,
           batch: int = 32) -> list[Image.Image]:
    """One image per (prompt, seed), prompt-major: ``[p0 s0, p0 s1, …, p1 s0, …]``.

    Pairs are rendered ``batch`` at a time in one pipeline call (one generator per image, so an image
    does not depend on its batch). Torch's global RNG is left as it was, so evaluating inside a
    training run does not shift its draws.
    """
    side = settings.side // family.RESOLUTION_MULTIPLE * family.RESOLUTION_MULTIPLE
    guidance = family.DEFAULT_GUIDANCE if settings.guidance is None else settings.guidance
    pairs = [(prompt, seed) for prompt in prompts for seed in settings.seeds]
    rng_state = torch.get_rng_state()
    _quiet(pipe)
    images: list[Image.Image] = []
    try:
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            kwargs = family.generation_kwargs(prompt=[p for p, _ in chunk], negative_prompt="", steps=settings.steps,
                                              guidance=guidance, width=side, height=side, num_images=1,
                                              generator=[torch.Generator().manual_seed(s) for _, s in chunk],
                                              pipe=pipe)
            images.extend(pipe(**kwargs).images)
    finally:
        torch.set_rng_state(rng_state)
    return images


@contextmanager
def lora_disabled(pipe: Any) -> Iterator[None]:
    """Run the block with every LoRA layer in ``pipe``'s models switched off (the base model's outputs).

    Works for adapters injected by training (peft) and for ones loaded with ``load_lora_weights``
    (diffusers puts the same peft layers in): each layer's adapters are disabled, then restored.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for component in _modules(pipe) for m in component.modules() if isinstance(m, BaseTunerLayer)]
    was_disabled = [layer.disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield
    finally:
        for layer, disabled in zip(layers, was_disabled):
            layer.enable_adapters(not disabled)


def _modules(pipe: Any) -> list[torch.nn.Module]:
    return [c for c in getattr(pipe, "components", {}).values() if isinstance(c, torch.nn.Module)]


def _quiet(pipe: Any) -> None:
    # evaluation renders dozens of small batches; their tqdm bars would bury the CLI's and the worker's output
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
