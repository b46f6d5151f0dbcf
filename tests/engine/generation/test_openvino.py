"""OpenVINO serving: the SD 1.5 UNet converted once, the same images as torch, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from loramill.engine.generation.generate import Generator
from loramill.engine.generation.openvino import OpenVinoUNet
from loramill.engine.generation.request import GenerateRequest, LoraRef
from loramill.engine.generation.serving import ServingSettings
from loramill.errors import InvalidInput

pytest.importorskip("openvino", reason="the test extra installs openvino")


def _pixels(generator: Generator, side: int) -> np.ndarray:
    request = GenerateRequest("a red circle", steps=3, seed=1, width=side, height=side)
    return np.asarray(generator.generate(request)[0].image, dtype=np.float32)


def test_openvino_unet_draws_what_torch_draws_and_converts_once(tiny_models):
    torch_images = Generator(str(tiny_models["sd15"]))
    ov_images = Generator(str(tiny_models["sd15"]), serving=ServingSettings(openvino=True))
    forward = ov_images.pipe.unet.forward
    assert isinstance(forward, OpenVinoUNet) and forward.compiled is None  # converted on the first image
    assert np.abs(_pixels(ov_images, 64) - _pixels(torch_images, 64)).max() <= 2  # f32: within rounding
    compiled = forward.compiled
    # The graph holds the weights: the torch UNet's are released once it is built.
    assert sum(p.numel() for p in ov_images.pipe.unet.parameters()) == 0
    # Another size runs on the same converted graph (dynamic shapes), still drawing what torch draws.
    assert np.abs(_pixels(ov_images, 96) - _pixels(torch_images, 96)).max() <= 2 and forward.compiled is compiled


def test_openvino_generator_refuses_loras_deep_cache_and_other_families(tiny_models, tmp_path):
    generator = Generator(str(tiny_models["sd15"]), serving=ServingSettings(openvino=True))
    with pytest.raises(InvalidInput, match="OpenVINO, whose graph holds the base weights") as err:
        generator.plan(GenerateRequest("a cat", loras=[LoraRef(path=tmp_path / "x.safetensors", weight=1.0)]))
    assert err.value.field == "loras"
    with pytest.raises(InvalidInput) as err:
        generator.plan(GenerateRequest("a cat", deep_cache=2))
    assert err.value.field == "deep_cache"
    with pytest.raises(InvalidInput, match="serves SD 1.5 models; this one is flux") as err:
        Generator(str(tiny_models["flux"]), serving=ServingSettings(openvino=True))
    assert err.value.field == "openvino"
