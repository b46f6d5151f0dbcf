"""The per-element losses a step can use, and their reduction with masks and per-sample weights.

``huber`` and ``smooth_l1`` follow sd-scripts' pseudo-Huber forms (``conditional_loss``): for a residual
``r`` and ``δ``, huber is ``2δ(√(r² + δ²) − δ)`` — r² near zero (so learning rates tuned for L2 still
fit) and linear in |r| for outliers — and smooth_l1 is ``2(√(r² + δ²) − δ)``.
"""

from __future__ import annotations

import torch

from loramill.engine.training.choices import LOSSES


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    """The loss of every element, in fp32 for stability."""
    residual = pred.float() - target.float()
    if kind == "l2":
        return residual ** 2
    if kind == "huber":
        return 2 * delta * (torch.sqrt(residual ** 2 + delta ** 2) - delta)
    if kind == "smooth_l1":
        return 2 * (torch.sqrt(residual ** 2 + delta ** 2) - delta)
    raise ValueError(f"unknown loss {kind!r}; choose one of: {', '.join(LOSSES)}")


def reduce_loss(elements: torch.Tensor, mask: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss of a batch: per sample over the masked elements, then weighted per sample.

    ``mask`` ([B, 1, H, W], values in [0, 1]) is normalised per sample, so a small face region is not
    learned more slowly than a full image; ``weights`` ([B]) scales each sample (min-SNR, SD3 weighting).
    """
    b = elements.shape[0]
    if mask is None:
        per_sample = elements.reshape(b, -1).mean(dim=1)
    else:
        mask = mask.to(elements.device, elements.dtype).expand_as(elements)
        per_sample = (elements * mask).reshape(b, -1).sum(dim=1) / mask.reshape(b, -1).sum(dim=1).clamp(min=1e-6)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
