"""Fixtures for evaluation tests: a tiny random CLIP folder, and a LoRA trained on the tiny SD 1.5."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loramill.engine.training.run import TrainResult, train
from tests.engine.conftest import train_config


def write_tiny_clip(out: Path, seed: int = 0) -> Path:
    """A random-weight transformers CLIPModel (32 px, 16-d embeddings), saved as a folder."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                          num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                              image_size=32, patch_size=8)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
              ).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="session")
def subject_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.services.models import draw_subject

    folder = tmp_path_factory.mktemp("subject")
    for i in range(4):
        draw_subject(i).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def trained_lora(tiny_models: dict[str, Path], subject_images: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """20 steps at a high learning rate on the tiny SD 1.5: enough to move its outputs measurably."""
    out = tmp_path_factory.mktemp("lora") / "lora.safetensors"
    return train(train_config(tiny_models["sd15"], subject_images, out, max_steps=20, lr=1e-2))
