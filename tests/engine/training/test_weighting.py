"""Min-SNR-γ and flow-matching timestep sampling and weighting against their papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from loramill.engine.training.weighting import (
    ddpm_snr,
    flow_loss_weights,
    min_snr_weights,
    sample_flow_sigmas,
)


def test_min_snr_weights_follow_the_paper_for_epsilon_and_v():
    snr = torch.tensor([0.01, 1.0, 5.0, 20.0, 400.0])
    gamma = 5.0
    eps = min_snr_weights(snr, gamma, "epsilon")
    v = min_snr_weights(snr, gamma, "v_prediction")
    for s, we, wv in zip(snr.tolist(), eps.tolist(), v.tolist()):
        assert we == pytest.approx(min(s, gamma) / s)
        assert wv == pytest.approx(min(s, gamma) / (s + 1))
    # High-SNR (low-noise) timesteps are damped, low-SNR ones keep weight 1 (epsilon).
    assert eps[0] == pytest.approx(1.0) and eps[-1] == pytest.approx(5 / 400)
    with pytest.raises(ValueError, match="sample"):
        min_snr_weights(snr, gamma, "sample")


def test_ddpm_snr_reads_alphas_cumprod_at_each_timestep():
    alphas = torch.tensor([0.99, 0.5, 0.01])
    snr = ddpm_snr(alphas, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(snr, torch.tensor([99.0, 1.0, 0.01 / 0.99]))


def test_flow_sigmas_per_mode():
    shift = lambda u: 3 * u / (1 + 2 * u)  # noqa: E731 - SD3's fixed shift 3
    draws = {mode: sample_flow_sigmas(20_000, torch.Generator().manual_seed(0), mode, shift)
             for mode in ("uniform", "shift", "sigmoid", "logit_normal")}
    for sigmas in draws.values():
        assert sigmas.min() > 0 and sigmas.max() < 1
    assert draws["uniform"].mean() == pytest.approx(0.5, abs=0.01)
    assert draws["logit_normal"].mean() == pytest.approx(0.5, abs=0.01)
    # logit-normal concentrates on the middle: fewer draws near the ends than uniform
    near_ends = lambda s: ((s < 0.1) | (s > 0.9)).float().mean()  # noqa: E731
    assert near_ends(draws["logit_normal"]) < near_ends(draws["uniform"]) / 2
    # the shift moves sigmas towards noise
    assert draws["shift"].mean() > draws["uniform"].mean() + 0.1
    assert draws["sigmoid"].mean() > draws["logit_normal"].mean() + 0.1
    # "shift" keeps FLUX's previous draw exactly: one uniform per sample, then the shift
    u = torch.rand((4,), generator=torch.Generator().manual_seed(5)).clamp(1e-4, 1 - 1e-4)
    torch.testing.assert_close(sample_flow_sigmas(4, torch.Generator().manual_seed(5), "shift", shift), shift(u))
    with pytest.raises(ValueError, match="logit_normal"):
        sample_flow_sigmas(2, torch.Generator(), "cosine", shift)


def test_flow_loss_weights_match_sd3():
    sigmas = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(flow_loss_weights(sigmas, "none"), torch.ones(3))
    torch.testing.assert_close(flow_loss_weights(sigmas, "sigma_sqrt"), sigmas ** -2)
    expected = torch.tensor([2 / (math.pi * (1 - 2 * s + 2 * s * s)) for s in sigmas.tolist()])
    torch.testing.assert_close(flow_loss_weights(sigmas, "cosmap"), expected)
