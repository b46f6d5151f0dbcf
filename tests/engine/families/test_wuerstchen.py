"""Würstchen: a generation-only family whose folders load although diffusers no longer resolves them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loramill.engine.families import wuerstchen
from loramill.engine.models.tiny import write_tiny_model
from loramill.errors import InvalidInput


@pytest.fixture(scope="module")
def tiny_wuerstchen(tmp_path_factory):
    return write_tiny_model("wuerstchen", tmp_path_factory.mktemp("wuerstchen") / "model", seed=0)


def test_wuerstchen_folder_loads_as_the_real_pipeline(tiny_wuerstchen):
    pipe = wuerstchen.load_pipeline(str(tiny_wuerstchen))
    assert type(pipe).__name__ == "WuerstchenCombinedPipeline"
    assert type(pipe.prior_prior).__name__ == "WuerstchenPrior"


def test_wuerstchen_loads_a_folder_that_names_the_old_library(tiny_wuerstchen, tmp_path):
    # warp-ai/wuerstchen's model_index.json names the "wuerstchen" library, which diffusers no longer has.
    import shutil

    folder = tmp_path / "hub-layout"
    shutil.copytree(tiny_wuerstchen, folder)
    index = json.loads((folder / "model_index.json").read_text())
    for part in ("decoder", "vqgan", "prior_prior"):
        index[part][0] = "wuerstchen"
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = wuerstchen.load_pipeline(str(folder))
    kwargs = wuerstchen.generation_kwargs(prompt="a red circle", negative_prompt="", steps=2, guidance=4.0,
                                          width=128, height=128, num_images=2,
                                          generator=[torch.Generator().manual_seed(i) for i in range(2)])
    images = pipe(**kwargs, output_type="np").images
    assert images.shape == (2, 128, 128, 3) and np.isfinite(images).all()


def test_wuerstchen_refuses_training_by_name():
    with pytest.raises(InvalidInput, match="Würstchen generates without LoRAs") as err:
        wuerstchen.encode_prompts(None, ["a cat"])
    assert err.value.code == "unsupported_for_family"


def test_wuerstchen_needs_a_folder(tmp_path):
    with pytest.raises(InvalidInput, match="diffusers folder with model_index.json"):
        wuerstchen.load_pipeline(str(tmp_path / "missing"))


def test_generator_counts_prior_and_decoder_steps_and_never_batches_two_prompts(tiny_wuerstchen):
    from loramill.engine.generation.generate import Generator
    from loramill.engine.generation.request import GenerateRequest, LoraRef

    generator = Generator(str(tiny_wuerstchen))
    assert generator.family_name == "wuerstchen" and generator.adapters is None
    seen = []
    images = generator.generate(GenerateRequest("a red circle", steps=3, width=128, height=128),
                                progress=lambda p: seen.append((p.step, p.total)))
    assert images[0].image.size == (128, 128)
    total = 3 + wuerstchen.DECODER_STEPS
    assert seen[-1] == (total, total) and len(seen) == total
    two = [generator.plan(GenerateRequest(p, steps=3, width=128, height=128)) for p in ("a red circle", "a cat")]
    assert not generator.can_batch(two)  # diffusers' Würstchen decoder mixes up batches of prompts
    with pytest.raises(InvalidInput, match="loras: model .* is not SD 1.5, SDXL or FLUX.1"):
        generator.plan(GenerateRequest("a cat", loras=[LoraRef(path=Path("x.safetensors"))]))
