"""Optimizers and learning-rate schedules, dispatched through tables; optional backends imported lazily."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from loramill.errors import DependencyMissing, UnsupportedHardware

if TYPE_CHECKING:  # torch is imported where used, so the option specs (and the services) load without it
    import torch


def _adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _adamw8bit(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    check_optimizer("adamw8bit")
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)


def _prodigy(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    check_optimizer("prodigy")
    from prodigyopt import Prodigy

    # Prodigy estimates the step size itself; its docs recommend lr=1.0 and treat ours as a multiplier.
    return Prodigy(params, lr=lr, weight_decay=weight_decay, safeguard_warmup=True, use_bias_correction=True)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": _adamw, "adamw8bit": _adamw8bit, "prodigy": _prodigy,
}
# diffusers' schedule names that make_scheduler passes on
# reduce_on_plateau (plateau.py) moves only when evaluation reports, or, without evaluation, on the mean loss
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear", "reduce_on_plateau")
MIXED_PRECISION = ("no", "bf16", "fp16")


def check_optimizer(name: str) -> None:
    """Fail before any work if the optimizer's backend or hardware is missing."""
    import torch

    if name == "adamw8bit":
        if not torch.cuda.is_available():
            raise UnsupportedHardware("optimizer: adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit kernels); "
                                      "on this machine use adamw", field="optimizer")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise DependencyMissing("optimizer: adamw8bit needs bitsandbytes: pip install 'loramill[cuda]'",
                                    field="optimizer") from exc
    elif name == "prodigy":
        try:
            import prodigyopt  # noqa: F401
        except ImportError as exc:
            raise DependencyMissing("optimizer: prodigy needs prodigyopt: pip install 'loramill[prodigy]'",
                                    field="optimizer") from exc


def make_optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``params``: tensors, or parameter groups (dicts with ``params`` and their own ``lr``)."""
    return OPTIMIZERS[name](params, lr, weight_decay)


def param_groups(named: dict[str, torch.nn.Parameter], lr: float, lora_plus_ratio: float = 1.0,
                 text_encoder_lr: float | None = None, text_encoders: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The optimizer's groups, one per learning rate; the schedule scales them all alike.

    ``named`` keys start with their component (``"unet."``, ``"text_encoder."``). The text encoders' LoRA
    learns at ``text_encoder_lr`` when given (kohya's ``--text_encoder_lr``), the rest at ``lr``. LoRA+ (Hayou
    et al. 2024): within each, the ``B`` matrices learn ``lora_plus_ratio`` times faster than ``A`` (the
    paper: ~16; 1 is plain LoRA).
    """
    prefixes = tuple(f"{name}." for name in text_encoders)
    parts: list[tuple[dict[str, torch.nn.Parameter], float]] = [(named, lr)]
    if text_encoder_lr is not None:  # (without it one part, so checkpoints keep their optimizer's layout)
        parts = [({n: p for n, p in named.items() if not n.startswith(prefixes)}, lr),
                 ({n: p for n, p in named.items() if n.startswith(prefixes)}, text_encoder_lr)]
    groups = []
    for members, base in parts:
        for is_b in ((False,) if lora_plus_ratio == 1 else (False, True)):
            params = [p for n, p in members.items() if lora_plus_ratio == 1 or (".lora_B." in n) == is_b]
            if params:
                groups.append({"params": params, "lr": base * (lora_plus_ratio if is_b else 1.0)})
    return groups


def make_scheduler(name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> Any:
    """A per-optimizer-step schedule (diffusers' implementations, the ones its training examples use)."""
    from diffusers.optimization import get_scheduler

    if name == "reduce_on_plateau":
        from loramill.engine.training.plateau import PlateauSchedule

        return PlateauSchedule(optimizer, warmup_steps=warmup_steps)
    if name == "constant" and warmup_steps > 0:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def check_precision(mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype for ``mixed_precision``; a clear error where the hardware cannot do it."""
    import torch

    if mixed_precision == "no":
        return None
    if not torch.cuda.is_available():
        raise UnsupportedHardware(f"mixed_precision: {mixed_precision} needs a CUDA GPU; this machine has none. "
                                  "Use no", field="mixed_precision")
    if mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise UnsupportedHardware("mixed_precision: bf16 needs an Ampere or newer GPU; use fp16",
                                  field="mixed_precision")
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float16
