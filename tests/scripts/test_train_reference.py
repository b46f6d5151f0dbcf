"""scripts/train_reference.py: a run stopped and resumed from its checkpoint ends where an uninterrupted one does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_reference.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_reference"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _run(script, workdir: Path, steps: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """A fresh process's view: build the model from the seed, then train_loop resumes what workdir holds."""
    workdir.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    stage = script.Stage(steps=steps, batch=4, lr=1e-2, log_every=2, checkpoint_every=2)

    def loss_fn(gen: torch.Generator, step: int) -> torch.Tensor:
        x = torch.randn(stage.batch, 4, generator=gen)
        return ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()

    progress = script.train_loop("toy", stage, 3, workdir, {"toy": model}, loss_fn, ema_decay=0.9)
    return progress, {k: v.clone() for k, v in model.state_dict().items()}


def test_training_resumes_from_its_checkpoint_exactly(tmp_path):
    script = _script()
    _, straight = _run(script, tmp_path / "straight", steps=6)
    _run(script, tmp_path / "stopped", steps=4)  # stopped after 4 steps (warm-up: the same learning rates)
    progress, resumed = _run(script, tmp_path / "stopped", steps=6)
    assert progress["step"] == 6 and [p["step"] for p in progress["log"]] == [2, 4, 6]
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    _, again = _run(script, tmp_path / "again", steps=6)
    assert all(torch.equal(v, again[k]) for k, v in straight.items())  # the same seed, the same weights



def test_evaluations_run_the_ema_weights_in_eval_mode_and_training_resumes_as_it_was(tmp_path):
    # A module left in training mode evaluates with its dropout on (FLUX.1's T5 did) or its batch statistics.
    script = _script()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    stage = script.Stage(steps=6, batch=4, lr=1e-2, log_every=2, checkpoint_every=2, eval_every=2)
    modes, weights = [], []

    def loss_fn(gen: torch.Generator, step: int) -> torch.Tensor:
        modes.append(model.training)
        weights.append(("step", model[0].weight.detach().clone()))
        x = torch.randn(stage.batch, 4, generator=gen)
        return ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()

    def evaluate() -> dict[str, float]:
        modes.append(model.training)
        weights.append(("eval", model[0].weight.detach().clone()))
        return {"adherence": 1.0}

    progress = script.train_loop("toy", stage, 3, tmp_path, {"toy": model}, loss_fn, evaluate, ema_decay=0.9)
    assert [e["step"] for e in progress["evals"]] == [2, 4]  # the end has its own, whole evaluation
    assert modes == [True, True, False, True, True, False, True, True] and not model.training
    # An evaluation sees the EMA weights, and the step after it the training weights again (not the EMA's).
    for i, (kind, w) in enumerate(weights):
        if kind == "eval":
            assert weights[i + 1][0] == "step" and not torch.allclose(w, weights[i + 1][1])


def test_an_extended_stage_restarts_its_cosine_at_each_horizon_as_the_extended_run_did():
    script = _script()
    short = script.Stage(steps=1000, batch=1, lr=1.0)
    extended = script.Stage(steps=3000, batch=1, lr=1.0, horizons=(1000,))
    longer = script.Stage(steps=3000, batch=1, lr=1.0)
    # Up to the horizon the learning rates are the short run's, after it the longer run's: the same steps.
    assert all(script.lr_at(extended, s) == script.lr_at(short, s) for s in range(0, 1000, 7))
    assert all(script.lr_at(extended, s) == script.lr_at(longer, s) for s in range(1000, 3000, 7))
    assert script.lr_at(short, 999) < 0.11 and script.lr_at(extended, 1000) > 0.7  # the warm restart
    assert script.lr_at(extended, 2999) < 0.11
