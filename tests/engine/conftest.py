"""Fixtures for engine tests: a trained LoRA per family, shared across the module that asks for it."""

from __future__ import annotations

from pathlib import Path

from loramill.engine.training.config import TrainConfig

FAMILIES = ["sd15", "sdxl", "flux"]


def train_config(model: Path, images: Path, out: Path, **overrides: object) -> TrainConfig:
    """A quick tiny-model run: 64 px, rank 4, a high learning rate so a few steps visibly change things."""
    values: dict[str, object] = dict(model=str(model), images=str(images), trigger="sks", out=str(out),
                                     resolution=64, rank=4, alpha=4.0, max_steps=12, lr=5e-3, seed=7)
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]
