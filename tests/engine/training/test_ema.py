"""EMA of the LoRA weights: the warmed-up decay and the average itself."""

from __future__ import annotations

import pytest
import torch

from loramill.engine.training.ema import LoraEma, ema_decay


def test_decay_warms_up_then_caps():
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay(100_000, 0.999) == 0.999


def test_ema_matches_the_recurrence_and_export_restores_raw_weights():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = LoraEma({"w": p}, decay=0.9)
    expected = torch.zeros(3)
    for step in range(30):
        with torch.no_grad():
            p.add_(1.0)
        ema.update(step)
        d = ema_decay(step, 0.9)
        expected = d * expected + (1 - d) * p.detach()
    torch.testing.assert_close(ema.shadow["w"], expected)
    assert ema.shadow["w"][0] < p[0]  # the average lags the raw weights
    with ema.applied():
        torch.testing.assert_close(p.detach(), expected)
    assert p[0].item() == 30.0
    restored = LoraEma({"w": p}, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    torch.testing.assert_close(restored.shadow["w"], expected)
    with pytest.raises(ValueError, match="EMA weights"):
        restored.load_state_dict({})
