"""DeepCache: interval 1 is the plain UNet; larger intervals run the deep blocks only every N-th step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loramill.engine.families import get_family
from loramill.engine.generation.deepcache import cacheable_blocks, deep_cache


@pytest.fixture(scope="module")
def sd15_pipe(tiny_models):
    pipe = get_family("sd15").load_pipeline(str(tiny_models["sd15"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe, interval: int, steps: int = 9):
    with torch.inference_mode(), deep_cache(pipe.unet, interval) as wrappers:
        image = pipe("a red circle", num_inference_steps=steps, width=64, height=64, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images[0]
    return image, [w.calls for w in wrappers]


def test_deep_cache_interval_one_equals_plain_unet(sd15_pipe):
    with torch.inference_mode():
        plain = sd15_pipe("a red circle", num_inference_steps=9, width=64, height=64, output_type="np",
                          generator=torch.Generator().manual_seed(0)).images[0]
    cached, calls = _render(sd15_pipe, 1)
    assert calls == []
    np.testing.assert_array_equal(plain, cached)


def test_deep_cache_runs_deep_blocks_every_interval_and_restores_the_unet(sd15_pipe):
    unet_calls = []
    hook = sd15_pipe.unet.register_forward_pre_hook(lambda m, a: unet_calls.append(1))
    try:
        image, calls = _render(sd15_pipe, 3)
    finally:
        hook.remove()
    full_steps = -(-len(unet_calls) // 3)  # steps 0, 3, 6, … run in full
    assert calls == [full_steps] * len(cacheable_blocks(sd15_pipe.unet))
    assert full_steps < len(unet_calls)
    assert np.isfinite(image).all()
    # Leaving the block restores every block's own forward: a second plain render is unchanged.
    assert all("forward" not in vars(block) for block in cacheable_blocks(sd15_pipe.unet))
    again, _ = _render(sd15_pipe, 1)
    first, _ = _render(sd15_pipe, 1)
    np.testing.assert_array_equal(again, first)


def test_deep_cache_refuses_a_transformer():
    with pytest.raises(ValueError, match="needs a UNet"):
        with deep_cache(torch.nn.Linear(2, 2), 3):
            pass
