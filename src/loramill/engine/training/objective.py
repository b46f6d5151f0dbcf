"""The loss of one micro-batch: the denoising loss with the recipe's loss, weighting and mask, and the
teacher-preservation term that keeps what the model (or the LoRA continued from) did without the trigger."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from loramill.engine.families.base import ImageMeta, Noised
from loramill.engine.training.adapters import active_adapter
from loramill.engine.training.losses import elementwise_loss, reduce_loss
from loramill.engine.training.weighting import flow_loss_weights, min_snr_weights


@dataclass
class Objective:
    """What one step optimises; the defaults are the plain L2 of the reference training scripts."""

    family: Any
    pipe: Any
    options: dict[str, Any] = field(default_factory=dict)  # passed to the family's add_noise / predict
    loss: str = "l2"
    huber_delta: float = 0.1
    min_snr_gamma: float = 0.0  # 0: off (DDPM families)
    flow_loss_weighting: str = "none"  # flow matching families

    def weights(self, noised: Noised) -> torch.Tensor | None:
        """Per-sample weights: min-SNR-γ (DDPM) or SD3's flow weighting; ``None`` when both are off."""
        if self.min_snr_gamma > 0 and noised.snr is not None:
            kind = self.pipe.scheduler.config.get("prediction_type", "epsilon")
            return min_snr_weights(noised.snr, self.min_snr_gamma, kind)
        if self.flow_loss_weighting != "none" and noised.sigmas is not None:
            return flow_loss_weights(noised.sigmas.float(), self.flow_loss_weighting)
        return None

    def denoising(self, latents: torch.Tensor, cond: dict[str, torch.Tensor], meta: list[ImageMeta],
                  generator: torch.Generator, mask: torch.Tensor | None = None,
                  share: slice | None = None) -> tuple[torch.Tensor, Noised]:
        """The training loss on ``latents``, and the draw it used (preservation reuses it).

        ``share``: the rows this process predicts when several train one run (the noise is drawn for
        the whole batch on every process, so the run equals one process's; engine/training/distributed.py).
        """
        noised = self.family.add_noise(self.pipe, latents, generator, self.options)
        if share is not None:
            from loramill.engine.training.distributed import take_share

            noised, cond, meta, mask = take_share(share, noised, cond, meta, mask)
        pred = self.family.predict(self.pipe, noised, cond, meta, self.options)
        elements = elementwise_loss(pred, noised.target, self.loss, self.huber_delta)
        return reduce_loss(elements, mask, self.weights(noised)), noised

    def preservation(self, noised: Noised, student_cond: dict[str, torch.Tensor],
                     teacher_cond: dict[str, torch.Tensor], meta: list[ImageMeta], models: list[torch.nn.Module],
                     teacher: str | None, share: slice | None = None) -> torch.Tensor:
        """L2 between the student's and the teacher's predictions on the same noisy latents under a
        trigger-free prompt (differential output preservation). The teacher is the same model with the
        adapters switched: ``None`` for the bare base, or the frozen adapter holding the LoRA continued
        from — never a second model in memory. ``share``: as in ``denoising`` (``noised`` is already this
        process's rows; the prompts and metadata are cut to match)."""
        if share is not None:
            student_cond = {k: v[share] for k, v in student_cond.items()}
            teacher_cond = {k: v[share] for k, v in teacher_cond.items()}
            meta = meta[share]
        with torch.no_grad(), active_adapter(models, teacher):
            target = self.family.predict(self.pipe, noised, teacher_cond, meta, self.options)
        pred = self.family.predict(self.pipe, noised, student_cond, meta, self.options)
        return F.mse_loss(pred.float(), target.float())

