"""Quality against speed by load (Prompt2Pic): cheaper renders as the expected wait grows.

An idle worker renders every job as asked. When the queue ahead would push a job past its latency
target, the job is rendered at the best level that still meets the target if the jobs ahead are
rendered the same way — so under a burst everybody gets a slightly cheaper image in time instead of
the last ones getting a perfect image far too late. The level is chosen by a pure function of the
expected wait; the caller records it on the job and shows it in the result.

A level is a share of the steps and of the side length, and on UNet models (SD 1.5, SDXL) also DeepCache
and — where the worker has one — a few-step LoRA (LCM, TCD, Hyper-SD)
loaded beside the user's at 4 steps. ``level_request`` applies what fits the model and ignores the rest,
so one policy serves every family. What each level costs in quality is measured in bench/generation.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loramill.engine.generation.request import GenerateRequest
from loramill.engine.generation.serving import FEW_STEP_SAMPLERS, UNET_FAMILIES

# A DeepCache step between full ones, relative to a full step (the first down and last up block at full
# resolution): the initial guess of the cost model; the policy replaces it with measured times.
DEEP_CACHE_STEP_SHARE = 0.35
TYPICAL_STEPS = 30  # for the cost guess of a level with a fixed step count


@dataclass(frozen=True)
class QualityLevel:
    """How much of the requested work a job gets: a share of its steps and of its side length, and on UNet
    models the solver, the DeepCache interval and a few-step LoRA."""

    name: str
    steps_factor: float = 1.0
    resolution_factor: float = 1.0
    sampler: str | None = None  # UNet models: switch to this solver (None: the request's own)
    deep_cache: int = 1  # UNet models: DeepCache interval (1: off)
    fixed_steps: int | None = None  # with a few-step LoRA: exactly this many steps
    guidance: float | None = None  # with a few-step LoRA: the guidance it was distilled for
    few_step_lora: Path | None = None  # an LCM/TCD/Hyper LoRA; without one (or for another family) the
    few_step_family: str | None = None  # level falls back to its step and resolution factors

    def __post_init__(self) -> None:
        if not 0 < self.steps_factor <= 1 or not 0 < self.resolution_factor <= 1:
            raise ValueError(f"quality level {self.name!r}: factors must be in (0, 1], got steps "
                             f"{self.steps_factor} and resolution {self.resolution_factor}")
        if self.deep_cache < 1:
            raise ValueError(f"quality level {self.name!r}: deep_cache is an interval ≥ 1, got {self.deep_cache}")

    @property
    def cost(self) -> float:
        """Expected time relative to full quality: steps × pixels (denoising dominates a generation)."""
        steps = self.fixed_steps / TYPICAL_STEPS if self.few_step_lora and self.fixed_steps else self.steps_factor
        n = self.deep_cache
        return min(1.0, steps) * self.resolution_factor ** 2 * (1 + (n - 1) * DEEP_CACHE_STEP_SHARE) / n


FULL = QualityLevel("full")
# Steps first (the image keeps its size), the resolution only when steps alone are not enough.
DEFAULT_LEVELS: tuple[QualityLevel, ...] = (
    FULL,
    QualityLevel("fast", steps_factor=0.6),
    QualityLevel("faster", steps_factor=0.4),
    QualityLevel("fastest", steps_factor=0.4, resolution_factor=0.75),
)
STEPS_ONLY_LEVELS: tuple[QualityLevel, ...] = DEFAULT_LEVELS[:3]
# With the UNet tricks: DeepCache skips the deep blocks. The solver stays the generator's (Euler by default):
# DPM-Solver++ at fewer steps read 22% of the reference world's prompts where Euler read 95% (bench/generation).
SERVING_LEVELS: tuple[QualityLevel, ...] = (
    FULL,
    QualityLevel("fast", steps_factor=0.6),
    QualityLevel("faster", steps_factor=0.4, deep_cache=2),
    QualityLevel("fastest", steps_factor=0.4, resolution_factor=0.75, deep_cache=3),
)


def few_step_family(path: str | Path | None) -> str | None:
    """The family a few-step LoRA is for (its metadata or its keys; unmarked UNet keys are SD 1.5's)."""
    if not path:
        return None
    from loramill.engine.lora.files import read_lora

    return read_lora(path).family or "sd15"


def levels_for(few_step_lora: str | Path | None = None, few_step_family: str | None = None, *,
               torch_unet: bool = True) -> tuple[QualityLevel, ...]:
    """The policy's levels: ``SERVING_LEVELS``, plus a 4-step level when the worker has a few-step LoRA
    (for ``few_step_family``; on other models that level renders like "fastest"). Without a torch UNet
    (OpenVINO serving) the levels are steps and sizes only: DeepCache and LoRAs need the torch modules."""
    if not torch_unet:
        return tuple(replace(level, deep_cache=1) for level in SERVING_LEVELS)
    if not few_step_lora:
        return SERVING_LEVELS
    few = QualityLevel("few-step", steps_factor=0.4, resolution_factor=0.75, sampler="lcm", fixed_steps=4,
                       guidance=1.0, few_step_lora=Path(few_step_lora), few_step_family=few_step_family)
    return (*SERVING_LEVELS, few)


def expected_wait(jobs_ahead: int, seconds_per_job: float, workers: int = 1) -> float:
    """Seconds until a newly queued job starts, if the jobs ahead take ``seconds_per_job`` each at full quality."""
    return max(0, jobs_ahead) * max(0.0, seconds_per_job) / max(1, workers)


def choose_level(wait_seconds: float, seconds_per_job: float, target_seconds: float | None,
                 levels: tuple[QualityLevel, ...] = DEFAULT_LEVELS) -> QualityLevel:
    """The best level at which a job queued behind ``wait_seconds`` of full-quality work meets its target.

    Under sustained load the jobs ahead get the same level, so the whole queue shrinks by the level's
    cost: finish ≈ (wait + own time) × cost. No target, or an idle queue, means full quality; when no
    level meets the target the cheapest one is used (it still serves the queue fastest).
    """
    ordered = sorted(levels, key=lambda level: -level.cost)
    if target_seconds is None or target_seconds <= 0 or wait_seconds <= 0:
        return ordered[0]
    for level in ordered:
        if (wait_seconds + seconds_per_job) * level.cost <= target_seconds:
            return level
    return ordered[-1]


def apply_level(steps: int, width: int, height: int, level: QualityLevel, multiple: int = 8,
                min_side: int = 64) -> tuple[int, int, int]:
    """The (steps, width, height) a job gets at ``level``: at least 1 step, sides rounded down to ``multiple``
    and never below ``min_side`` (the smallest image a request may ask for) nor above what was asked."""
    new_steps = max(1, math.ceil(steps * level.steps_factor - 1e-9))
    if level.resolution_factor >= 1:
        return new_steps, width, height

    def side(value: int) -> int:
        return min(value, max(min_side, multiple, int(value * level.resolution_factor) // multiple * multiple))

    return new_steps, side(width), side(height)


def degrade_request(request: GenerateRequest, level: QualityLevel, *, default_steps: int, default_size: int,
                    multiple: int = 8) -> GenerateRequest:
    """A copy of a ``GenerateRequest`` with ``level`` applied (unset steps and sizes take the model defaults)."""
    if level.cost >= 1:
        return request
    steps, width, height = apply_level(request.steps or default_steps, request.width or default_size,
                                       request.height or default_size, level, multiple)
    return request.model_copy(update={"steps": steps, "width": width, "height": height})


def level_request(request: Any, level: QualityLevel, family_name: str | None, default_size: int | None = None
                  ) -> Any:
    """A copy of a ``GenerateRequest`` rendered at ``level`` on a model of ``family_name``: steps and size
    always, the solver and DeepCache on UNet models, the few-step LoRA on models of its family. A request
    without a size is scaled from ``default_size`` (the model's own, ``Generator.default_size``; the
    family's when not given)."""
    from loramill.engine.families import get_family
    from loramill.engine.generation.request import LoraRef

    if level is FULL or (level.cost >= 1 and level.sampler is None):
        return request
    family = get_family(family_name) if family_name else None
    lora = level.few_step_lora
    few_step = lora is not None and family_name == level.few_step_family
    if lora is not None and few_step:  # the LoRA decides the step count and the guidance; the user's LoRAs stay
        update: dict[str, Any] = {"steps": level.fixed_steps, "guidance": level.guidance,
                                  "loras": [*request.loras, LoraRef(path=lora, weight=1.0)]}
        degraded = request.model_copy(update=update)
    else:
        degraded = degrade_request(request, level, default_steps=family.DEFAULT_STEPS if family else 30,
                                   default_size=default_size or (family.DEFAULT_SIZE if family else 512),
                                   multiple=family.RESOLUTION_MULTIPLE if family else 8)
    if family_name not in UNET_FAMILIES:
        return degraded
    # Without its LoRA a few-step solver gives noise: the fallback keeps the generator's own solver.
    sampler = level.sampler if few_step or level.sampler not in FEW_STEP_SAMPLERS else None
    update = {"deep_cache": max(level.deep_cache, request.deep_cache)}
    if sampler and request.sampler == "default":
        update["sampler"] = sampler
    return degraded.model_copy(update=update)


class LoadPolicy:
    """The worker's side: learns how long jobs take at each level, and picks a level from the queue depth.

    ``target_seconds``: the latency a generation job should meet (``LORAMILL_GENERATION_TARGET_SECONDS``);
    ``None`` turns the policy off (always full quality). Until a level has been seen, its time is the
    full-quality time × its ``cost``; once seen, the measured average is used (a job's fixed costs —
    prompt encoding, VAE decode, upload — do not shrink with the steps, so the cost model is optimistic).
    """

    def __init__(self, target_seconds: float | None, *, workers: int = 1,
                 levels: tuple[QualityLevel, ...] = DEFAULT_LEVELS, initial_seconds: float = 1.0,
                 smoothing: float = 0.3) -> None:
        self.target_seconds = target_seconds
        self.workers = workers
        self.levels = tuple(sorted(levels, key=lambda level: -level.cost))
        self.seconds_per_job = initial_seconds  # at full quality
        self.smoothing = smoothing
        self._seen: dict[str, float] = {}

    def seconds_at(self, level: QualityLevel) -> float:
        """Expected seconds of one job at ``level``."""
        return self._seen.get(level.name, self.seconds_per_job * level.cost)

    def level_for(self, jobs_ahead: int, waited: float = 0.0) -> QualityLevel:
        """The level for a job that starts now, has already waited ``waited`` seconds since it was queued, and
        has ``jobs_ahead`` others still queued behind it.

        The best level at which this job and those behind it, all at that level, finish within the target
        counted from when this job was queued (in a burst the ones behind arrived with it). A job already
        past its target gets the cheapest level: it is late either way, and the ones behind it are not yet.
        """
        if self.target_seconds is None or (jobs_ahead <= 0 and waited <= 0):
            return self.levels[0]
        budget = self.target_seconds - max(0.0, waited)
        for level in self.levels:
            if (jobs_ahead + 1) * self.seconds_at(level) / max(1, self.workers) <= budget:
                return level
        return self.levels[-1]

    def observe(self, seconds: float, level: QualityLevel) -> None:
        """Record how long a job at ``level`` took (moving averages per level and of full quality)."""
        if seconds <= 0:
            return
        seen = self._seen.get(level.name)
        self._seen[level.name] = seconds if seen is None else seen + self.smoothing * (seconds - seen)
        if level.cost >= 1 or seen is None:  # later degraded runs say little about full quality
            full = seconds / level.cost
            self.seconds_per_job += self.smoothing * (full - self.seconds_per_job)
