"""An exponential moving average of the LoRA weights (Polyak averaging), exported instead of the raw ones.

Averaging the last few hundred steps' weights smooths the noise of small-batch LoRA training; kohya,
SimpleTuner and OneTrainer all offer it. The decay warms up as diffusers' ``EMAModel`` does
(``(1 + step) / (10 + step)``, capped at ``decay``), so early steps are not dominated by the random start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def ema_decay(step: int, decay: float) -> float:
    """The decay used at optimizer step ``step`` (0-based): warmed up, never above ``decay``."""
    return min(decay, (1 + step) / (10 + step))


class LoraEma:
    """Shadow copies of named parameters, updated after every optimizer step."""

    def __init__(self, named: dict[str, torch.nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be between 0 and 1 (typical: 0.999), got {decay!r}")
        self.decay = decay
        self.params = named
        self.shadow = {name: p.detach().clone().float() for name, p in named.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in: shadow ← d·shadow + (1 − d)·weights."""
        d = ema_decay(step, self.decay)
        for name, p in self.params.items():
            self.shadow[name].mul_(d).add_(p.detach().float(), alpha=1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.clone() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"the checkpoint has no EMA weights for {len(missing)} parameters (e.g. {missing[0]})")
        self.shadow = {name: state[name].clone().float() for name in self.shadow}

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the duration (export), the raw ones back afterwards."""
        raw = {name: p.detach().clone() for name, p in self.params.items()}
        for name, p in self.params.items():
            p.copy_(self.shadow[name].to(p.dtype))
        try:
            yield
        finally:
            for name, p in self.params.items():
                p.copy_(raw[name])
