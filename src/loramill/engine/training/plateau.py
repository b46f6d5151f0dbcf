"""``reduce_on_plateau``: lower the learning rate when the watched metric stops improving.

The step schedules (constant, cosine, …) move the rate every optimizer step; this one moves it only
when told a new value of the metric: after each evaluation (the ``select_by`` metric, e.g. CLIP
fidelity), or, in a run without evaluation, after each window of steps (the mean training loss over it).
``step()`` without a value does nothing, so the training loop calls every schedule the same way.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

LOSS_WINDOW = 50  # steps averaged into one loss value when there is no evaluation to watch


class PlateauSchedule:
    """torch's ReduceLROnPlateau behind the step-schedule interface (``step``, ``get_last_lr``, state dicts)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, factor: float = 0.5, patience: int = 2,
                 min_lr: float = 1e-6, warmup_steps: int = 0) -> None:
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.warmup_steps = warmup_steps
        self.steps = 0
        self.mode: Literal["min", "max"] = "max"
        self.plateau: Any = None
        self.factor, self.patience, self.min_lr = factor, patience, min_lr
        self._window: list[float] = []
        self._apply_warmup()

    def step(self) -> None:
        """One optimizer step: only the warm-up ramp moves the rate here."""
        self.steps += 1
        self._apply_warmup()

    def observe(self, value: float, higher_is_better: bool) -> None:
        """A new value of the watched metric; the rate drops by ``factor`` after ``patience`` without progress."""
        if self.plateau is None:
            self.mode = "max" if higher_is_better else "min"
            # threshold 1e-3 relative: a CLIP similarity creeping by 1e-5 is a plateau, not progress
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode=self.mode, factor=self.factor, patience=self.patience, min_lr=self.min_lr,
                threshold=1e-3)
        self.plateau.step(value)

    def observe_loss(self, loss: float) -> None:
        """A training step's loss; every ``LOSS_WINDOW`` steps their mean is observed (for runs without evaluation)."""
        self._window.append(loss)
        if len(self._window) >= LOSS_WINDOW:
            self.observe(sum(self._window) / len(self._window), higher_is_better=False)
            self._window.clear()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "mode": self.mode, "window": list(self._window),
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self._window = state["steps"], list(state["window"])
        self.mode = "min" if state["mode"] == "min" else "max"
        if state["plateau"] is not None:
            self.observe_state(state["plateau"])

    def observe_state(self, plateau_state: dict[str, Any]) -> None:
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode=self.mode, factor=self.factor, patience=self.patience, min_lr=self.min_lr,
            threshold=1e-3)
        self.plateau.load_state_dict(plateau_state)

    def _apply_warmup(self) -> None:
        if self.warmup_steps and self.steps <= self.warmup_steps and self.plateau is None:
            scale = min(1.0, (self.steps + 1) / (self.warmup_steps + 1))
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * scale
