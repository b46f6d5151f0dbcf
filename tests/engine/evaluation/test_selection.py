"""Metric directions and stopping targets."""

from __future__ import annotations

import pytest

from loramill.engine.evaluation.selection import Target, is_better, parse_target
from loramill.errors import InvalidInput


@pytest.mark.parametrize("text, target", [
    ("clip>=0.8", Target("clip", ">=", 0.8)),
    (" loss_heldout <= 5e-2 ", Target("loss_heldout", "<=", 0.05)),
    ("classifier>.9", Target("classifier", ">", 0.9)),
])
def test_parse_target_reads_metric_op_value(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize("text, message", [
    ("clip=0.8", "write METRIC>=NUMBER"), ("sharpness>=1", "unknown metric 'sharpness'"), ("clip>=", "METRIC"),
])
def test_parse_target_rejects_bad_text_naming_the_option(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        parse_target(text)
    assert info.value.field == "stop_at" and info.value.message.startswith("stop_at: ")


def test_target_reached_and_better_follow_the_metric_direction() -> None:
    assert Target("clip", ">=", 0.8).reached({"clip": 0.8}) and not Target("clip", ">=", 0.8).reached({"loss": 1})
    assert is_better("clip", 0.7, 0.6) and not is_better("clip", 0.5, 0.6)
    assert is_better("loss_heldout", 0.1, 0.2) and is_better("divergence", 3.0, None)
