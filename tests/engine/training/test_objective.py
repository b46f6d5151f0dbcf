"""Teacher preservation by switching adapters on one model, and the per-sample weighting of the objective."""

from __future__ import annotations

import torch

from loramill.engine.families import get_family
from loramill.engine.training import adapters
from loramill.engine.training.objective import Objective


def _predict(family, pipe, noised, cond):
    with torch.no_grad():
        return family.predict(pipe, noised, cond, [], {})


def test_teacher_is_the_base_or_the_frozen_old_lora_on_the_same_model(tiny_models):
    family = get_family("sd15")
    pipe = family.load_pipeline(str(tiny_models["sd15"]))
    cond = family.encode_prompts(pipe, ["a photo of a dog"])
    noised = family.add_noise(pipe, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
                              torch.Generator().manual_seed(1), {})
    base = _predict(family, pipe, noised, cond)
    targets = family.DEFAULT_TARGET_MODULES
    params = adapters.add_lora(pipe.unet, 4, 4.0, targets)
    old = {k: torch.randn_like(v) * 0.3 for k, v in adapters.lora_state(pipe.unet).items()}
    adapters.load_lora_state(pipe.unet, old)
    with_old = _predict(family, pipe, noised, cond)
    adapters.add_frozen_lora(pipe.unet, adapters.TEACHER, 4, 4.0, targets, old)
    with torch.no_grad():
        for p in params:
            p.add_(0.5)  # the student moves on
    student = _predict(family, pipe, noised, cond)
    models = [pipe.unet]
    with adapters.active_adapter(models, None):
        torch.testing.assert_close(_predict(family, pipe, noised, cond), base)
    with adapters.active_adapter(models, adapters.TEACHER):
        torch.testing.assert_close(_predict(family, pipe, noised, cond), with_old)
    torch.testing.assert_close(_predict(family, pipe, noised, cond), student)  # back to the student
    assert (student - with_old).abs().max() > 1e-3 and (with_old - base).abs().max() > 1e-3
    # only the student's weights are trainable, before and after the switches
    trainable = {n for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert trainable and all(f".{adapters.ADAPTER}." in n for n in trainable)
    # the preservation term: zero when the student equals the teacher, a gradient only into the student
    objective = Objective(family, pipe)
    loss = objective.preservation(noised, cond, cond, [], models, adapters.TEACHER)
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in pipe.unet.named_parameters() if adapters.TEACHER in n)


def test_min_snr_objective_weights_each_sample(tiny_models):
    from loramill.engine.training.weighting import min_snr_weights

    family = get_family("sd15")
    pipe = family.load_pipeline(str(tiny_models["sd15"]))
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = family.encode_prompts(pipe, ["a", "b", "c"])
    with torch.no_grad():
        weighted, noised = Objective(family, pipe, min_snr_gamma=5.0).denoising(
            latents, cond, [], torch.Generator().manual_seed(4))
        pred = family.predict(pipe, noised, cond, [], {})
    per_sample = ((pred - noised.target) ** 2).mean(dim=(1, 2, 3))
    expected = (per_sample * min_snr_weights(noised.snr, 5.0, "epsilon")).mean()
    torch.testing.assert_close(weighted, expected)
