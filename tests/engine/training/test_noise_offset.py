"""noise_offset: offset noise per image and channel for SD 1.5/SDXL, refused for FLUX.1 wherever it enters."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler

from loramill.engine.families.base import add_noise_ddpm
from loramill.engine.training.config import TrainConfig
from loramill.engine.training.run import train
from loramill.errors import InvalidInput
from loramill.jobs.contracts import parse_job
from loramill.jobs.handlers.train import train_config as job_train_config
from loramill.jobs.settings import WorkerSettings
from tests.engine.conftest import train_config

SCHEDULER = DDPMScheduler(num_train_timesteps=1000)


def test_add_noise_ddpm_adds_offset_per_sample_and_channel_from_the_run_generator() -> None:
    latents = torch.zeros(2, 4, 8, 8)

    _, noise, timesteps = add_noise_ddpm(SCHEDULER, latents, torch.Generator().manual_seed(3), noise_offset=0.1)

    g = torch.Generator().manual_seed(3)
    plain = torch.randn(latents.shape, generator=g)
    offset = torch.randn((2, 4, 1, 1), generator=g)
    assert torch.allclose(noise, plain + 0.1 * offset)
    assert torch.equal(timesteps, torch.randint(0, 1000, (2,), generator=g))
    shift = noise - plain  # constant over the image, different per sample and channel
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift)) and shift[0, 0, 0, 0] != shift[1, 0, 0, 0]


def test_add_noise_ddpm_without_offset_draws_exactly_as_before() -> None:
    latents = torch.zeros(2, 4, 8, 8)

    _, noise, timesteps = add_noise_ddpm(SCHEDULER, latents, torch.Generator().manual_seed(3), noise_offset=0.0)

    g = torch.Generator().manual_seed(3)
    assert torch.equal(noise, torch.randn(latents.shape, generator=g))
    assert torch.equal(timesteps, torch.randint(0, 1000, (2,), generator=g))


def test_train_with_noise_offset_changes_the_run(tiny_sd15, sample_images, tmp_path) -> None:
    plain = train(train_config(tiny_sd15, sample_images, tmp_path / "a.safetensors", max_steps=3))
    offset = train(train_config(tiny_sd15, sample_images, tmp_path / "b.safetensors", max_steps=3, noise_offset=0.5))

    assert offset.metrics["steps"] == 3 and offset.metrics["finalLoss"] != plain.metrics["finalLoss"]


def test_flux_refuses_noise_offset_naming_the_field_in_each_entry(tmp_path) -> None:
    required = {"model": "m", "images": "i", "trigger": "sks", "out": "o.safetensors"}
    with pytest.raises(InvalidInput, match=r"^noise_offset: applies to sd15, sdxl only, not flux \(FLUX.1 trains by "
                                           r"flow matching"):
        TrainConfig(**required, family="flux", noise_offset=0.1)
    assert TrainConfig(**required, family="flux").noise_offset == 0.0

    job = parse_job(json.dumps({"taskId": "t", "userId": "u", "images": ["users/u/images/a.jpg"],
                                "configurationParams": {"noiseOffset": 0.1}}))
    with pytest.raises(InvalidInput) as caught:
        job_train_config(job, "m", "flux", WorkerSettings(work_dir=tmp_path), tmp_path, tmp_path, tmp_path / "o")  # type: ignore[arg-type]
    assert caught.value.field == "configurationParams.noiseOffset"
    assert caught.value.message.startswith("configurationParams.noiseOffset: applies to sd15, sdxl only")
