"""Würstchen: a generation-only family whose folders load although diffusers no longer resolves them."""

from __future__ import annotations

import json

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
