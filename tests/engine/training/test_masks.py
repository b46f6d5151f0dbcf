"""Loss masks from alpha channels and detected faces, on the latent grid, and a masked training run."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from loramill.engine.training.data import Example
from loramill.engine.training.masks import batch_mask, example_mask
from tests.engine.dataset.conftest import photo


def _cutout(path: Path, size: tuple[int, int] = (80, 64)) -> Path:
    """A red square on a transparent ground, in the left half."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    image.paste((220, 30, 30, 255), (0, 0, size[0] // 2, size[1]))
    image.save(path)
    return path


def test_alpha_mask_follows_the_training_crop(tmp_path):
    # 80x64 centre-cropped to 64x64 drops 8 px each side: the opaque left half becomes columns 0..31.
    mask = example_mask(Example(_cutout(tmp_path / "a.png"), "sks", (64, 64)), "alpha")
    assert mask is not None and mask.shape == (1, 64, 64)
    assert mask[0, :, :30].min() > 0.99 and mask[0, :, 34:].max() < 0.01
    grid = batch_mask([mask, None], [0, 1], (8, 8))
    assert grid.shape == (2, 1, 8, 8)
    assert grid[0, 0, :, :4].min() > 0.99 and grid[0, 0, :, 4:].max() < 0.01
    assert torch.equal(grid[1], torch.ones(1, 8, 8)), "an image without a mask is trained whole"
    Image.new("RGB", (64, 64)).save(tmp_path / "opaque.png")
    assert example_mask(Example(tmp_path / "opaque.png", "sks", (64, 64)), "alpha") is None


def test_face_mask_covers_the_detected_face(tmp_path):
    photo("astronaut").save(tmp_path / "astronaut.png")
    mask = example_mask(Example(tmp_path / "astronaut.png", "sks", (128, 128)), "face")
    assert mask is not None
    covered = mask.mean().item()
    assert 0.02 < covered < 0.5, covered  # the face and a margin, not the whole picture
    assert mask[0, 24:34, 51:61].mean() > 0.99  # her face centre (~225, 115 of 512 px), at 128 px
