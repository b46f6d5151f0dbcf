"""The optimizer's parameter groups: LoRA+ and the text encoders' own learning rate."""

from __future__ import annotations

import pytest
import torch

from loramill.engine.training.optim import param_groups
from loramill.errors import InvalidInput
from tests.engine.conftest import train_config


def _named(*names: str) -> dict[str, torch.nn.Parameter]:
    return {name: torch.nn.Parameter(torch.zeros(1)) for name in names}


def test_lora_plus_gives_b_a_higher_learning_rate():
    named = _named("x.lora_A.t.weight", "x.lora_B.t.weight")
    groups = param_groups(named, 1e-4, 16)
    assert [(len(g["params"]), g["lr"]) for g in groups] == [(1, 1e-4), (1, pytest.approx(1.6e-3))]
    assert groups[1]["params"][0] is named["x.lora_B.t.weight"]
    assert [len(g["params"]) for g in param_groups(named, 1e-4, 1)] == [2]


def test_text_encoders_learn_at_their_own_rate_and_share_one_group_without_it():
    named = _named("unet.q.lora_A.weight", "unet.q.lora_B.weight", "text_encoder.k.lora_A.weight",
                   "text_encoder_2.k.lora_B.weight")
    encoders = ["text_encoder", "text_encoder_2"]
    # unset: one group, as before the option existed (checkpoints keep their optimizer's layout)
    assert [(len(g["params"]), g["lr"]) for g in param_groups(named, 1e-4, text_encoders=encoders)] == [(4, 1e-4)]
    groups = param_groups(named, 1e-4, text_encoder_lr=5e-5, text_encoders=encoders)
    assert [(len(g["params"]), g["lr"]) for g in groups] == [(2, 1e-4), (2, 5e-5)]
    assert groups[1]["params"] == [named["text_encoder.k.lora_A.weight"], named["text_encoder_2.k.lora_B.weight"]]
    # with LoRA+ each part splits into A and B
    both = param_groups(named, 1e-4, 16, text_encoder_lr=5e-5, text_encoders=encoders)
    assert [g["lr"] for g in both] == [1e-4, pytest.approx(1.6e-3), 5e-5, pytest.approx(8e-4)]


def test_text_encoder_lr_needs_the_text_encoder_trained(tiny_models, sample_images, tmp_path):
    with pytest.raises(InvalidInput, match="train_text_encoder") as refused:
        train_config(tiny_models["sd15"], sample_images, tmp_path / "l.safetensors", text_encoder_lr=5e-5)
    assert refused.value.field == "text_encoder_lr"
    config = train_config(tiny_models["sd15"], sample_images, tmp_path / "l.safetensors", text_encoder_lr=5e-5,
                          train_text_encoder=True)
    assert config.text_encoder_lr == 5e-5


def test_a_run_trains_the_text_encoder_at_its_own_rate(tiny_models, sample_images, tmp_path):
    """At a vanishing text-encoder rate its LoRA's B matrices stay at their zero start; the UNet's move."""
    from safetensors.torch import load_file

    from loramill.engine.training.run import train

    path = train(train_config(tiny_models["sd15"], sample_images, tmp_path / "l.safetensors", max_steps=3,
                              train_text_encoder=True, text_encoder_lr=1e-12)).lora_path
    tensors = load_file(str(path))
    text = [v for k, v in tensors.items() if k.startswith("lora_te") and "lora_up" in k]
    unet = [v for k, v in tensors.items() if k.startswith("lora_unet") and "lora_up" in k]
    assert text and unet
    assert max(float(v.abs().max()) for v in text) < 1e-9 < min(float(v.abs().max()) for v in unet)
