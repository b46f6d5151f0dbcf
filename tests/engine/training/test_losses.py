"""Huber/smooth-L1 losses and their masked, weighted reduction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from loramill.engine.training.losses import elementwise_loss, reduce_loss


def test_l2_reduces_to_mse():
    pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(reduce_loss(elementwise_loss(pred, target, "l2", 0.1)), F.mse_loss(pred, target))


def test_huber_is_quadratic_near_zero_and_linear_for_outliers():
    small, large = torch.tensor([1e-3]), torch.tensor([10.0])
    zero = torch.zeros(1)
    assert elementwise_loss(small, zero, "huber", 0.1).item() == pytest.approx(1e-6, rel=1e-3)
    # 2δ(√(r²+δ²) − δ) ≈ 2δ|r| for |r| ≫ δ: 20× smaller than L2's 100 for r = 10
    assert elementwise_loss(large, zero, "huber", 0.1).item() == pytest.approx(2 * 0.1 * (math.sqrt(100.01) - 0.1), rel=1e-5)
    assert elementwise_loss(large, zero, "smooth_l1", 0.1).item() == pytest.approx(2 * (math.sqrt(100.01) - 0.1), rel=1e-5)
    with pytest.raises(ValueError, match="huber"):
        elementwise_loss(small, zero, "l1", 0.1)


def test_masked_loss_ignores_what_is_outside_the_mask():
    target = torch.zeros(2, 4, 8, 8)
    pred = torch.zeros(2, 4, 8, 8, requires_grad=True)
    with torch.no_grad():
        pred[:, :, :, 4:] = 5.0  # wrong only outside the mask
        pred[:, :, :, :4] = 1.0
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :, :4] = 1.0
    loss = reduce_loss(elementwise_loss(pred, target, "l2", 0.1), mask)
    assert loss.item() == pytest.approx(1.0)  # normalised over the masked half only
    loss.backward()
    assert pred.grad[:, :, :, 4:].abs().max() == 0


def test_per_sample_weights_scale_each_sample():
    elements = torch.stack([torch.full((4, 2, 2), 1.0), torch.full((4, 2, 2), 3.0)])
    assert reduce_loss(elements, weights=torch.tensor([2.0, 0.0])).item() == pytest.approx(1.0)
