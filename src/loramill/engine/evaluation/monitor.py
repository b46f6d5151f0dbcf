"""Evaluation inside a training run: every N steps into metrics.jsonl, the best weights kept, a target to stop at.

The run (``engine/training/run.py``) calls three things: ``after_step`` once per step, ``best_layers`` at
export and ``summary`` for metrics.json. Everything else lives here: the evaluator built once (its base renders cached), one
``{"step", "eval"}`` line per evaluation in ``metrics.jsonl``, a sample grid per evaluation in
``samples/``, the best weights by ``select_by`` in ``best.safetensors`` (with ``best.json``, so a resumed
run still knows its best), and whether ``stop_at`` is reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from loramill.engine.evaluation.evaluate import Evaluation, Evaluator, config_from_references
from loramill.engine.evaluation.sampling import RenderSettings
from loramill.engine.evaluation.selection import (
    Target,
    check_metric,
    higher_is_better,
    is_better,
    parse_target,
)
from loramill.engine.families.base import FamilyModule
from loramill.engine.training.data import Example

BEST_WEIGHTS, BEST_INFO, SAMPLES = "best.safetensors", "best.json", "samples"


@dataclass
class EvalSettings:
    """The run's evaluation options (``TrainConfig``'s ``eval_*``, ``select_by``, ``stop_at``, ``clip_model``)."""

    every: int
    select_by: str | None = None  # None: the last weights are exported, no best is kept
    stop_at: str | None = None
    clip: str | None = None
    domain: str | None = None
    subject: str | None = None
    steps: int = 20
    seeds: tuple[int, ...] = (0, 1)
    side: int = 512
    preservation_prompts: list[str] = field(default_factory=list)


@dataclass
class Best:
    step: int
    value: float
    metrics: dict[str, float]


class TrainingEvaluation:
    """Evaluates the LoRA being trained in ``pipe`` every ``settings.every`` steps."""

    def __init__(self, pipe: Any, family: FamilyModule, settings: EvalSettings, references: list[Example],
                 held_out: list[Example], run_dir: Path, resumed_step: int = 0) -> None:
        self.settings, self.run_dir = settings, run_dir
        options: dict[str, Any] = dict(clip=settings.clip, domain=settings.domain, subject=settings.subject,
                                       render=RenderSettings(steps=settings.steps, side=settings.side,
                                                             seeds=settings.seeds))
        if settings.preservation_prompts:
            options["preservation_prompts"] = list(settings.preservation_prompts)
        self.evaluator = Evaluator(pipe, family, config_from_references(
            references, loss_examples=held_out or references, loss_heldout=bool(held_out), **options))
        self.target: Target | None = parse_target(settings.stop_at) if settings.stop_at else None
        if settings.select_by:
            check_metric(settings.select_by)
        self.best: Best | None = _read_best(run_dir, resumed_step)
        self.last: dict[str, float] | None = None
        self.reached: Target | None = None

    def due(self, step: int, total_steps: int) -> bool:
        """Evaluate at every ``every``-th step and at the last one."""
        return self.settings.every > 0 and (step % self.settings.every == 0 or step == total_steps)

    def evaluate(self, step: int, weights: dict[str, torch.Tensor], metrics_file: Any) -> Evaluation:
        """Measure now; log it, keep the weights if they are the best so far, note a reached target."""
        # 1. Measure (renders with the LoRA as trained so far; the base's once, cached).
        evaluation = self.evaluator.evaluate()
        self.last = metrics = evaluation.metrics
        metrics_file.write(json.dumps({"step": step, "eval": metrics}) + "\n")
        metrics_file.flush()
        # 2. A sample grid per evaluation: rows are prompts (trigger ones first), columns seeds.
        samples = self.run_dir / SAMPLES
        samples.mkdir(exist_ok=True)
        columns = len(self.settings.seeds)
        if not (samples / "base.png").exists():
            grid(evaluation.base_renders, columns).save(samples / "base.png")
        grid(evaluation.renders, columns).save(samples / f"step-{step:06d}.png")
        # 3. The best weights by the chosen metric, on disk so a resumed run keeps them.
        name = self.settings.select_by
        if name is not None and name in metrics and (self.best is None or is_better(name, metrics[name], self.best.value)):
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, self.run_dir / BEST_WEIGHTS)
            self.best = Best(step, metrics[name], metrics)
            (self.run_dir / BEST_INFO).write_text(json.dumps({"step": step, "metric": name, "value": metrics[name],
                                                              "metrics": metrics}, indent=2))
        # 4. The stopping target.
        if self.target is not None and self.target.reached(metrics):
            self.reached = self.target
        return evaluation

    def after_step(self, step: int, total_steps: int, weights: Callable[[], dict[str, torch.Tensor]],
                   metrics_file: Any, scheduler: Any,
                   exported: Callable[[], AbstractContextManager[Any]] = nullcontext) -> bool:
        """The training loop's one call per step: evaluate when due, feed a plateau schedule; True = stop now.

        ``exported`` puts the weights the run would export into the model for the evaluation (EMA's average,
        when that is what is exported), so what is measured, and kept as the best, is what the file holds."""
        if not self.due(step, total_steps):
            return False
        with exported():
            metrics = self.evaluate(step, weights(), metrics_file).metrics
        watched = self.settings.select_by or _default_watch(metrics)
        if hasattr(scheduler, "observe") and watched in metrics:
            scheduler.observe(metrics[watched], higher_is_better(watched))
        return self.reached is not None

    def best_layers(self) -> dict[str, dict[str, torch.Tensor]] | None:
        """The best evaluation's LoRA weights per component (``{"unet": {...}}``); None without ``select_by``."""
        if self.best is None or not (self.run_dir / BEST_WEIGHTS).is_file():
            return None
        from safetensors.torch import load_file

        layers: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in load_file(str(self.run_dir / BEST_WEIGHTS)).items():
            component, _, name = key.partition(".")
            layers.setdefault(component, {})[name] = value
        return layers

    def summary(self) -> dict[str, Any]:
        """What metrics.json and the job's result record: the last and best evaluations, and why it stopped."""
        out: dict[str, Any] = {"evaluation": self.last, "evaluations": self.history()}
        if self.settings.select_by:
            out["selectBy"] = self.settings.select_by
        if self.best is not None:
            out.update(bestStep=self.best.step, best=self.best.metrics)
        if self.reached is not None:
            out["stoppedAt"] = str(self.reached)
        chosen = self.best.metrics if self.best is not None else (self.last or {})
        # the names the seed-003 client reads: consistency (CLIP to the references) and preservation
        if "clip" in chosen:
            out["consistency"] = chosen["clip"]
        preservation = chosen.get("preservation_clip", chosen.get("preservation_pixel"))
        if preservation is not None:
            out["preservation"] = preservation
        return out

    def history(self) -> list[dict[str, float]]:
        """Every evaluation of the run so far (``{"step": …, metric: value}``), from metrics.jsonl (resumes too)."""
        path = self.run_dir / "metrics.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        return [{"step": line["step"], **line["eval"]} for line in lines if "eval" in line]


def _default_watch(metrics: dict[str, float]) -> str:
    # with no --select-by, a plateau schedule watches the first fidelity measure there is, else the loss
    return next((m for m in ("clip", "classifier", "face", "loss_heldout", "loss_train") if m in metrics),
                "loss_train")


def grid(images: list[Image.Image], columns: int) -> Image.Image:
    """``images`` tiled row by row, ``columns`` to a row (all the size of the first)."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (width * columns, height * rows), (255, 255, 255))
    for i, image in enumerate(images):
        canvas.paste(image.convert("RGB").resize((width, height)), ((i % columns) * width, (i // columns) * height))
    return canvas


def _read_best(run_dir: Path, resumed_step: int) -> Best | None:
    # a best from a run that went further than the resume point belongs to a different future
    path = run_dir / BEST_INFO
    if not resumed_step or not path.is_file():
        return None
    info = json.loads(path.read_text())
    if info["step"] > resumed_step:
        return None
    return Best(int(info["step"]), float(info["value"]), info["metrics"])


def training_evaluation(config: Any, family: FamilyModule, pipe: Any, examples: list[Example],
                        held_out: list[Example], run_dir: Path, resumed_step: int) -> TrainingEvaluation | None:
    """The run's evaluation as its ``TrainConfig`` asks (``eval_every`` > 0), else None."""
    if not config.eval_every:
        return None
    settings = EvalSettings(every=config.eval_every, select_by=config.select_by, stop_at=config.stop_at,
                            clip=config.clip_model, domain=config.eval_domain, subject=config.subject,
                            steps=config.eval_steps, seeds=tuple(range(config.eval_seeds)), side=config.resolution,
                            preservation_prompts=list(config.eval_prompts))
    return TrainingEvaluation(pipe, family, settings, examples, held_out, run_dir, resumed_step)
