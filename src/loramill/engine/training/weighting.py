"""Which timesteps a step trains on, and how much each one counts.

DDPM families (SD 1.5, SDXL): min-SNR-γ weighting (Hang et al. 2023, "Efficient Diffusion Training via
Min-SNR Weighting Strategy"): per sample, ``min(SNR(t), γ) / SNR(t)`` for ε-prediction and
``min(SNR(t), γ) / (SNR(t) + 1)`` for v-prediction, so the easy low-noise timesteps stop dominating the
gradient. Flow matching (FLUX.1): where sigmas are drawn from (SD3 paper, Esser et al. 2024, section 3.1:
uniform, logit-normal; sigmoid and the model's own shift as kohya's sd-scripts and ai-toolkit use them),
and the SD3 loss weightings (``sigma_sqrt``, ``cosmap``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from loramill.engine.training.choices import FLOW_LOSS_WEIGHTING, TIMESTEP_SAMPLING


def ddpm_snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) at each timestep."""
    alpha = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alpha / (1.0 - alpha)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-γ (Hang et al. 2023, eq. 12 and its v-prediction form)."""
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    raise ValueError(f"min-SNR weighting is defined for epsilon and v_prediction, not {prediction_type!r}")


def sample_flow_sigmas(batch: int, generator: torch.Generator, mode: str, shift: Any) -> torch.Tensor:
    """Sigmas in (0, 1) for flow matching (1 = pure noise).

    ``shift``: the model's own timestep shift, a function of uniform sigmas (FLUX.1's is resolution
    dependent). ``shift``: uniform, then the model's shift (what FLUX.1 samples at); ``uniform``: no shift;
    ``sigmoid``: sigmoid of a standard normal, then the model's shift (sd-scripts' ``flux_shift``);
    ``logit_normal``: sigmoid of a standard normal, unshifted (SD3's recommended ``lognorm(0, 1)``).
    """
    if mode in ("shift", "uniform"):
        u = torch.rand((batch,), generator=generator)
    elif mode in ("sigmoid", "logit_normal"):
        u = torch.sigmoid(torch.randn((batch,), generator=generator))
    else:
        raise ValueError(f"unknown timestep sampling {mode!r}; choose one of: {', '.join(TIMESTEP_SAMPLING)}")
    u = u.clamp(1e-4, 1 - 1e-4)
    return shift(u) if mode in ("shift", "sigmoid") else u


def flow_loss_weights(sigmas: torch.Tensor, mode: str) -> torch.Tensor:
    """SD3's per-sample weightings of the velocity loss (diffusers' ``compute_loss_weighting_for_sd3``)."""
    if mode == "none":
        return torch.ones_like(sigmas)
    if mode == "sigma_sqrt":
        return (sigmas ** -2.0).float()
    if mode == "cosmap":
        return 2.0 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    raise ValueError(f"unknown flow loss weighting {mode!r}; choose one of: {', '.join(FLOW_LOSS_WEIGHTING)}")
