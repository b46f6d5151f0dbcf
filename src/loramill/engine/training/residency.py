"""Which frozen models stay on the accelerator during the loop: none of those the cache made useless.

Once every latent and caption embedding is cached, the VAE and the text encoders have nothing left to
do until a validation image is rendered (FLUX's T5 alone is 9.5 GB in bf16), so they wait in host
memory and come back only for validation, and for good when the run ends (a resident pipeline must be
whole again for generation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ParkedEncoders:
    """The pipeline components moved off the accelerator for the loop, and where they belong."""

    pipe: Any
    names: list[str]
    device: torch.device
    park: torch.device
    away: list[str] = field(default_factory=list)  # the ones parked now

    @property
    def parked(self) -> bool:
        return bool(self.away)

    def leave(self, only: tuple[str, ...] | None = None) -> None:
        """Move the components (``only`` these, if given) to the parking device and free their memory."""
        if self.park == self.device:
            return
        for name in self.names:
            if (only is None or name in only) and name not in self.away:
                getattr(self.pipe, name).to(self.park)
                self.away.append(name)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def restore(self) -> None:
        """Bring every parked component back to the accelerator."""
        for name in self.away:
            getattr(self.pipe, name).to(self.device)
        self.away = []

    @contextlib.contextmanager
    def back(self) -> Iterator[None]:
        """The components on the accelerator for the block's duration (validation images), parked again after."""
        away = tuple(self.away)
        self.restore()
        try:
            yield
        finally:
            if away:
                self.leave(only=away)


def park_encoders(pipe: Any, text_encoders: tuple[str, ...], trained: set[str], device: torch.device,
                  park: torch.device | None = None) -> ParkedEncoders:
    """What to park off ``device`` once cached: the VAE and every text encoder not being trained.

    Nothing moves until ``leave()`` (the text encoders alone: ``leave(only=...)``, as soon as the
    captions are encoded).

    ``park`` defaults to host memory when ``device`` is an accelerator; on a CPU run there is nowhere
    cheaper to put them, so nothing moves.
    """
    park = park or torch.device("cpu")
    names = [n for n in ("vae", *text_encoders) if n not in trained and getattr(pipe, n, None) is not None]
    return ParkedEncoders(pipe, names, device, park)
