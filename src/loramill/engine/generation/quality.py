"""Quality against speed by load (Prompt2Pic): fewer steps, then a smaller image, as the expected wait grows.

An idle worker renders every job as asked. When the queue ahead would push a job past its latency
target, the job is rendered at the best level that still meets the target if the jobs ahead are
rendered the same way — so under a burst everybody gets a slightly cheaper image in time instead of
the last ones getting a perfect image far too late. The level is chosen by a pure function of the
expected wait; the caller records it on the job and shows it in the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QualityLevel:
    """How much of the requested work a job gets: a share of its steps and of its side length."""

    name: str
    steps_factor: float = 1.0
    resolution_factor: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.steps_factor <= 1 or not 0 < self.resolution_factor <= 1:
            raise ValueError(f"quality level {self.name!r}: factors must be in (0, 1], got steps "
                             f"{self.steps_factor} and resolution {self.resolution_factor}")

    @property
    def cost(self) -> float:
        """Expected time relative to full quality: steps × pixels (denoising dominates a generation)."""
        return self.steps_factor * self.resolution_factor ** 2


FULL = QualityLevel("full")
# Steps first (the image keeps its size), the resolution only when steps alone are not enough.
DEFAULT_LEVELS: tuple[QualityLevel, ...] = (
    FULL,
    QualityLevel("fast", steps_factor=0.6),
    QualityLevel("faster", steps_factor=0.4),
    QualityLevel("fastest", steps_factor=0.4, resolution_factor=0.75),
)
STEPS_ONLY_LEVELS: tuple[QualityLevel, ...] = DEFAULT_LEVELS[:3]


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


def degrade_request(request: Any, level: QualityLevel, *, default_steps: int, default_size: int,
                    multiple: int = 8) -> Any:
    """A copy of a ``GenerateRequest`` with ``level`` applied (unset steps and sizes take the model defaults)."""
    if level.cost >= 1:
        return request
    steps, width, height = apply_level(request.steps or default_steps, request.width or default_size,
                                       request.height or default_size, level, multiple)
    return request.model_copy(update={"steps": steps, "width": width, "height": height})


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
