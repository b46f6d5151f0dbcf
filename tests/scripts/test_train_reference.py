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


def test_the_polish_phase_runs_at_its_own_rate_resumes_exactly_and_evaluates_in_eval_mode(tmp_path):
    script = _script()
    stage = script.Stage(steps=4, batch=4, lr=1e-2, polish_steps=4, polish_lr=1e-4, polish_eval_every=2)
    assert script.lr_at(stage, 3) == 1e-2 * 4 / 50 and script.lr_at(stage, 4) == script.lr_at(stage, 7) == 1e-4
    assert [s for s in range(1, 9) if stage.evaluates_at(s)] == [6]  # 8 is the end: its own evaluation

    def run(workdir: Path, steps: int) -> tuple[dict, torch.nn.Module]:
        workdir.mkdir(exist_ok=True)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
        run_stage = script.Stage(steps=4, batch=4, lr=1e-2, log_every=2, checkpoint_every=2,
                                 polish_steps=steps - 4, polish_lr=1e-3, polish_eval_every=2)

        def loss_fn(gen: torch.Generator, step: int) -> torch.Tensor:
            x = torch.randn(run_stage.batch, 4, generator=gen)
            return ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()

        def evaluate() -> dict[str, float]:
            assert not model.training  # batch statistics (or dropout) off while evaluating
            return {"training": float(model.training)}

        progress = script.train_loop("toy", run_stage, 3, workdir, {"toy": model}, loss_fn, evaluate, ema_decay=0.9)
        return progress, model

    straight, model = run(tmp_path / "straight", steps=8)
    assert [e["step"] for e in straight["evals"]] == [6] and not model.training
    run(tmp_path / "stopped", steps=6)  # stopped inside the polish phase
    resumed, again = run(tmp_path / "stopped", steps=8)
    assert resumed["step"] == 8
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
