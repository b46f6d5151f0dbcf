"""Choosing by metric: which checkpoint is best, when a target is reached, when progress has stalled.

Metric names are the keys ``Evaluator.evaluate`` returns; each is either higher-is-better (similarities,
shares) or lower-is-better (losses, divergence), which ``METRICS`` records once for every caller.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from loramill.engine.options import option_error

# metric -> (higher is better, what it is)
METRICS: dict[str, tuple[bool, str]] = {
    "clip": (True, "CLIP image similarity of trigger renders to the references (fidelity)"),
    "classifier": (True, "share of trigger renders the domain scorer reads as the references' concept"),
    "face": (True, "share of trigger renders that are the references' person (face identity)"),
    "preservation_clip": (True, "CLIP similarity of renders without the trigger, with vs without the LoRA"),
    "preservation_pixel": (True, "1 - mean pixel difference of renders without the trigger, with vs without"),
    "preservation_classifier": (True, "share of base-prompt renders that still show their caption"),
    "divergence": (False, "relative change of the denoiser's output on prompts without the trigger"),
    "loss_heldout": (False, "denoising loss on held-out images, fixed draws"),
    "loss_train": (False, "denoising loss on the training images, fixed draws"),
}
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt,
                                                   "<": operator.lt}
_TARGET = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


def check_metric(name: str, option: str = "select_by") -> str:
    """``name`` if it is a known metric; otherwise an error that lists them."""
    if name not in METRICS:
        raise option_error(option, f"unknown metric {name!r}; choose one of: {', '.join(METRICS)}")
    return name


def higher_is_better(name: str) -> bool:
    return METRICS[check_metric(name)][0]


def is_better(name: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of metric ``name`` beats ``best`` (anything beats no value)."""
    if best is None:
        return True
    return value > best if higher_is_better(name) else value < best


@dataclass(frozen=True)
class Target:
    """A stopping target such as ``clip>=0.8``: the metric, the comparison and the threshold."""

    metric: str
    op: str
    value: float

    def reached(self, metrics: dict[str, float]) -> bool:
        return self.metric in metrics and _OPS[self.op](metrics[self.metric], self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_target(text: str, option: str = "stop_at") -> Target:
    """``"clip>=0.8"`` → ``Target("clip", ">=", 0.8)``; a clear error naming the option otherwise."""
    match = _TARGET.match(text or "")
    if match is None:
        raise option_error(option, f"{text!r}: write METRIC>=NUMBER (or <=, >, <), e.g. clip>=0.8 or "
                           "loss_heldout<=0.05")
    name = check_metric(match.group(1), option)
    return Target(name, match.group(2), float(match.group(3)))
