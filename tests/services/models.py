"""Tiny random models of each family, built once per test session, and sample training images."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"sd15": dir, "sdxl": dir, "flux": dir}``: tiny diffusers folders of the real architectures (seed 0)."""
    from loramill.engine.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {family: write_tiny_model(family, root / family, seed=0) for family in ("sd15", "sdxl", "flux")}


@pytest.fixture(scope="session")
def tiny_sd15(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["sd15"]


def draw_subject(index: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A simple drawn 'subject' (a face-like oval on a coloured ground), varied by ``index``."""
    im = Image.new("RGB", size, (30 * index % 255, 120, (200 - 30 * index) % 255))
    d = ImageDraw.Draw(im)
    w, h = size
    d.ellipse((w // 5 + index * 3, h // 8, w * 3 // 4 + index * 3, h * 3 // 4), fill=(240, 200, 150))
    d.ellipse((w // 3 + index * 3, h // 3, w // 3 + 6 + index * 3, h // 3 + 6), fill=(20, 20, 20))
    return im


@pytest.fixture
def sample_images(tmp_path: Path) -> Path:
    """A folder of four small training images, two with captions beside them."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        draw_subject(i).save(folder / f"{i}.png")
    (folder / "0.txt").write_text("a drawing of a face")
    (folder / "1.txt").write_text("sks, a face on blue")
    return folder
