"""Latents and text embeddings, computed once per image (and augmented variant) and caption.

The VAE and the text encoders are frozen, so their outputs never change during a run: computing them
every step, as the reference example script does, spends a real share of each step for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from loramill.engine.families.base import FamilyModule, ImageMeta
from loramill.engine.progress import Progress, ProgressCallback, no_progress
from loramill.engine.training.data import Example, load_pixels


@dataclass
class TrainingCache:
    """``latents[(example, variant)]``, ``meta[(example, variant)]`` and ``embeds[caption]``."""

    latents: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    meta: dict[tuple[int, int], ImageMeta] = field(default_factory=dict)
    embeds: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def batch(self, indices: list[int], variant: int, examples: list[Example]
              ) -> tuple[torch.Tensor, list[ImageMeta], list[str]]:
        latents = torch.stack([self.latents[(i, variant)] for i in indices])
        meta = [self.meta[(i, variant)] for i in indices]
        return latents, meta, [examples[i].caption for i in indices]

    def text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        rows = [self.embeds[c] for c in captions]
        return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


@torch.no_grad()
def build_cache(family: FamilyModule, pipe: Any, examples: list[Example], variants: int, augment_config: Any,
                *, cache_text: bool, encode_batch: int = 4, progress: ProgressCallback = no_progress
                ) -> TrainingCache:
    """Encode every caption through the text encoders, then every (example, variant) through the VAE."""
    cache = TrainingCache()
    jobs = [(i, v) for v in range(variants + 1) for i in range(len(examples))]
    total = len(jobs) + (len(set(e.caption for e in examples)) if cache_text else 0)
    done = 0
    if cache_text:
        captions = sorted(set(e.caption for e in examples))
        for start in range(0, len(captions), encode_batch):
            batch = captions[start:start + encode_batch]
            cache_texts(cache, family, pipe, batch)
            done += len(batch)
            progress(Progress("cache", done, total))
    # Encode same-size images together: one VAE call per small batch instead of per image, fewer images
    # a call above 512 px (the encoder's activations grow with the pixels: ~1.5 GiB an image at 1024 px).
    by_size: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for job in jobs:
        by_size.setdefault(examples[job[0]].size, []).append(job)
    for size, group in by_size.items():
        per_call = max(1, encode_batch * 512 * 512 // (size[0] * size[1]))
        for start in range(0, len(group), per_call):
            chunk = group[start:start + per_call]
            loaded = [load_pixels(examples[i], v, augment_config) for i, v in chunk]
            latents = family.encode_images(pipe, torch.stack([p for p, _ in loaded]))
            for (key, (_, meta)), latent in zip(zip(chunk, loaded), latents):
                cache.latents[key] = latent.detach().to("cpu", torch.float32)
                cache.meta[key] = meta
            done += len(chunk)
            progress(Progress("cache", done, total))
    return cache


@torch.no_grad()
def cache_texts(cache: TrainingCache, family: FamilyModule, pipe: Any, prompts: list[str], encode_batch: int = 4
                ) -> None:
    """Add the embeddings of ``prompts`` not cached yet (the empty prompt, preservation prompts)."""
    todo = sorted(set(prompts) - set(cache.embeds))
    for start in range(0, len(todo), encode_batch):
        batch = todo[start:start + encode_batch]
        encoded = family.encode_prompts(pipe, batch)
        for j, caption in enumerate(batch):
            cache.embeds[caption] = {k: v[j:j + 1].detach().to("cpu", torch.float32) for k, v in encoded.items()}
