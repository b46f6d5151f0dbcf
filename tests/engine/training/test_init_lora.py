"""Continuing from a LoRA: it starts exactly at the file's weights, in both layouts; misfits fail clearly."""

from __future__ import annotations

import pytest
import torch

from loramill.engine.families import get_family
from loramill.engine.training import adapters
from loramill.engine.training.init_lora import init_states, read_init_lora
from loramill.engine.training.run import train
from tests.engine.conftest import train_config


def _prediction(pipe, family, lora_states=None, lora_file=None, alpha=8.0):
    """The denoiser's output on one fixed input: base + ``lora_file`` (diffusers' loader) or + our adapter."""
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 8, 8)
    cond = family.encode_prompts(pipe, ["a photo of sks"])
    noised = family.add_noise(pipe, latents, torch.Generator().manual_seed(1), {})
    if lora_file is not None:
        pipe.load_lora_weights(str(lora_file))
    if lora_states is not None:
        adapters.add_lora(pipe.unet, 4, alpha, family.DEFAULT_TARGET_MODULES)
        adapters.load_lora_state(pipe.unet, lora_states["unet"])
    with torch.no_grad():
        return family.predict(pipe, noised, cond, [], {})


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_init_lora_starts_exactly_at_its_weights(layout, tiny_models, sample_images, tmp_path):
    family = get_family("sd15")
    # alpha 2 in the file, alpha 8 in the continued run: the scales differ and must be reconciled.
    first = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "a.safetensors", format=layout,
                               alpha=2.0, max_steps=6)).lora_path
    pipe = family.load_pipeline(str(tiny_models["sd15"]))
    adapters.add_lora(pipe.unet, 4, 8.0, family.DEFAULT_TARGET_MODULES)
    expected = {"unet": adapters.lora_state(pipe.unet)}
    adapters.remove_lora(pipe.unet)
    states = init_states(read_init_lora(first, "sd15"), expected, family.KOHYA_PREFIXES, 4, 8.0)
    assert set(states["unet"]) == set(expected["unet"])

    reference = _prediction(family.load_pipeline(str(tiny_models["sd15"])), family, lora_file=first)
    continued = _prediction(family.load_pipeline(str(tiny_models["sd15"])), family, lora_states=states)
    base = _prediction(family.load_pipeline(str(tiny_models["sd15"])), family)
    assert (reference - base).abs().max() > 1e-3, "the LoRA must change the prediction"
    torch.testing.assert_close(continued, reference, rtol=1e-4, atol=1e-5)
