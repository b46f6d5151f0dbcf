"""CLIP embeddings from a CLIPModel folder, with and without a preprocessor config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from loramill.engine.evaluation.clip import ClipEncoder, mean_similarity, paired_similarity
from loramill.errors import InvalidInput


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (48, 48), colour) for colour in ((255, 0, 0), (0, 0, 255), (250, 5, 5))]


def test_clip_embeddings_are_unit_length_and_identical_images_match(tiny_clip: Path) -> None:
    encoder = ClipEncoder.load(tiny_clip)
    embeddings = encoder.embed_images(_images() + _images()[:1])
    assert embeddings.shape == (4, 16)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert paired_similarity(embeddings[:1], embeddings[3:])[0] == pytest.approx(1.0, abs=1e-5)
    # a near-identical red is closer to red than blue is, even in a random network
    sims = embeddings[0] @ embeddings.T
    assert sims[2] > sims[1]
    assert mean_similarity(embeddings[:1], embeddings[:1]) == pytest.approx(1.0, abs=1e-5)


def test_clip_processor_config_is_used_when_present(tiny_clip: Path, tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPModel

    folder = tmp_path / "with-processor"
    CLIPModel.from_pretrained(str(tiny_clip)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    plain, processed = ClipEncoder.load(tiny_clip), ClipEncoder.load(folder)
    assert processed.processor is not None and plain.processor is None
    # a plain colour survives resizing and cropping unchanged, so both paths must agree
    assert torch.allclose(plain.embed_images(_images()), processed.embed_images(_images()), atol=1e-3)


def test_clip_load_names_the_option_for_a_folder_that_is_not_clip(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="--clip .*not a CLIP model folder") as info:
        ClipEncoder.load(tmp_path)
    assert info.value.field == "clip"
