"""Parking what the cache made useless: off the accelerator for the loop, back for validation and at the end."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from loramill.engine.training.residency import park_encoders

GPU, HOST = torch.device("cuda"), torch.device("cpu")


class _Component:
    """Records where it was moved: this machine has no accelerator to move real weights to."""

    def __init__(self) -> None:
        self.device = GPU

    def to(self, device: torch.device) -> _Component:
        self.device = device
        return self


def _pipe() -> SimpleNamespace:
    return SimpleNamespace(vae=_Component(), text_encoder=_Component(), text_encoder_2=_Component(),
                           unet=_Component())


def _where(pipe: SimpleNamespace) -> dict[str, str]:
    return {name: getattr(pipe, name).device.type for name in ("vae", "text_encoder", "text_encoder_2", "unet")}


def test_vae_and_cached_text_encoders_leave_and_come_back_for_validation():
    pipe = _pipe()
    parked = park_encoders(pipe, ("text_encoder", "text_encoder_2"), set(), GPU)
    assert set(_where(pipe).values()) == {"cuda"}, "nothing moves before the cache is built"
    parked.leave(only=("text_encoder", "text_encoder_2"))  # captions encoded; the VAE still has images to do
    assert _where(pipe) == {"vae": "cuda", "text_encoder": "cpu", "text_encoder_2": "cpu", "unet": "cuda"}
    parked.leave()
    assert _where(pipe) == {"vae": "cpu", "text_encoder": "cpu", "text_encoder_2": "cpu", "unet": "cuda"}
    with parked.back():
        assert set(_where(pipe).values()) == {"cuda"}
    assert _where(pipe)["vae"] == "cpu"
    parked.restore()
    assert set(_where(pipe).values()) == {"cuda"}


def test_trained_text_encoders_stay_on_the_accelerator():
    pipe = _pipe()
    park_encoders(pipe, ("text_encoder", "text_encoder_2"), {"text_encoder", "text_encoder_2"}, GPU).leave()
    assert _where(pipe) == {"vae": "cpu", "text_encoder": "cuda", "text_encoder_2": "cuda", "unet": "cuda"}


def test_nothing_moves_on_a_cpu_run():
    pipe = _pipe()
    for name in ("vae", "text_encoder", "text_encoder_2", "unet"):
        getattr(pipe, name).device = HOST
    parked = park_encoders(pipe, ("text_encoder",), set(), HOST)
    parked.leave()
    assert not parked.parked and set(_where(pipe).values()) == {"cpu"}
