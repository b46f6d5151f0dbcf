"""reduce_on_plateau: the rate halves after `patience` evaluations without progress, and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from loramill.engine.training.plateau import LOSS_WINDOW, PlateauSchedule


def _optimizer(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_plateau_halves_the_rate_after_patience_without_progress() -> None:
    schedule = PlateauSchedule(_optimizer(), factor=0.5, patience=1)
    for _ in range(10):
        schedule.step()  # optimizer steps alone never move it
    assert schedule.get_last_lr() == [1e-3]
    for value in (0.5, 0.6, 0.6):  # progress, then one flat evaluation: within patience
        schedule.observe(value, higher_is_better=True)
    assert schedule.get_last_lr() == [1e-3]
    schedule.observe(0.6, higher_is_better=True)  # the second flat one
    assert schedule.get_last_lr() == [pytest.approx(5e-4)]


def test_plateau_watches_the_mean_loss_without_evaluation() -> None:
    schedule = PlateauSchedule(_optimizer(), factor=0.1, patience=0)
    for loss in [1.0] * LOSS_WINDOW + [1.0] * LOSS_WINDOW:
        schedule.observe_loss(loss)
    assert schedule.get_last_lr() == [pytest.approx(1e-4)]


def test_plateau_state_round_trips() -> None:
    first = PlateauSchedule(_optimizer(), patience=1)
    for value in (0.5, 0.4):
        first.observe(value, higher_is_better=True)
    second = PlateauSchedule(_optimizer(), patience=1)
    second.load_state_dict(first.state_dict())
    first.observe(0.4, higher_is_better=True)
    second.observe(0.4, higher_is_better=True)
    assert first.get_last_lr() == [pytest.approx(5e-4)]
    assert second.get_last_lr() == first.get_last_lr()
