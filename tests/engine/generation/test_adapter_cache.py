"""The adapter cache: a LoRA swapped into another's layers renders exactly what a fresh load renders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from loramill.engine.generation.generate import GenerateRequest, Generator
from loramill.engine.generation.loras import LoraRef
from loramill.engine.lora.files import read_lora, write_lora
from loramill.engine.training.run import train
from tests.engine.conftest import train_config


@pytest.fixture(scope="module")
def loras(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRAs of one layout (a trained one and a perturbed copy) and one with other alphas."""
    from tests.services.models import draw_subject

    root = tmp_path_factory.mktemp("cache")
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        draw_subject(i).save(photos / f"{i}.png")
    first = train(train_config(tiny_models["sd15"], photos, root / "a.safetensors", work_dir=str(root / "a"))).lora_path
    lora = read_lora(first)
    g = torch.Generator().manual_seed(1)
    same = {k: v if k.endswith(".alpha") else v + 0.2 * torch.randn(v.shape, generator=g) for k, v in lora.tensors.items()}
    other_alpha = {k: v / 2 if k.endswith(".alpha") else v for k, v in same.items()}
    return {"a": first, "b": write_lora(root / "b.safetensors", same, dict(lora.metadata)),
            "b_half_alpha": write_lora(root / "c.safetensors", other_alpha, dict(lora.metadata))}


def render(gen: Generator, path: Path) -> np.ndarray:
    request = GenerateRequest("a photo of sks", loras=[LoraRef(path, 0.9)], width=64, height=64, steps=3, seed=7)
    return np.asarray(gen.generate(request)[0].image, dtype=np.float32)


@pytest.mark.parametrize("second", ["b", "b_half_alpha"])
def test_switch_lora_matches_fresh_load(tiny_models: dict[str, Path], loras: dict[str, Path], second: str) -> None:
    fresh = render(Generator(str(tiny_models["sd15"]), max_resident_loras=1), loras[second])
    gen = Generator(str(tiny_models["sd15"]), max_resident_loras=1)
    first = render(gen, loras["a"])
    switched = render(gen, loras[second])
    assert gen.adapters is not None
    # Same layout: swapped in place; other alphas: loaded afresh (a swap would keep the old scaling).
    assert gen.adapters.hotswaps == (1 if second == "b" else 0)
    assert np.abs(switched - fresh).max() <= 1.0
    assert np.abs(switched - first).mean() > 0.1, "the second LoRA must change the image"
    back = render(gen, loras["a"])
    assert np.abs(back - first).max() <= 1.0


def test_activate_same_set_again_skips_set_adapters(tiny_models: dict[str, Path], loras: dict[str, Path]) -> None:
    gen = Generator(str(tiny_models["sd15"]), max_resident_loras=2)
    assert gen.adapters is not None
    calls = []
    original = gen.pipe.set_adapters
    gen.pipe.set_adapters = lambda *a, **k: (calls.append(a), original(*a, **k))  # type: ignore[method-assign]
    for _ in range(3):
        gen.adapters.activate([LoraRef(loras["a"], 1.0)])
    gen.adapters.activate([LoraRef(loras["a"], 0.5)])
    assert len(calls) == 2
