"""Peak accelerator memory of a training run, before it starts, and what to change when it does not fit.

The plan follows the run's phases (engine/training/run.py): caching (VAE and text encoders resident),
the loop (the frozen denoiser, stored as --quantize-base says, the LoRA with its gradients and
optimizer state, and the activations of one step), and validation images (everything resident, no
gradients). The peak is the largest phase. Weights and LoRA sizes are exact (the real architecture on
the meta device, the LoRA attached by peft); activations are counted (planning/activations.py) and
scaled by ``ACTIVATION_FACTOR``. The count matches what a real CPU step keeps within 15%
(tests/engine/planning); the factor is a margin for what the count leaves out (gradient buffers during
backward, the allocator's rounding) that no GPU has calibrated yet: scripts/gpu-check.sh prints measured
peak / plan per case to set it (docs/performance.md, section 6).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from loramill.engine.planning.activations import count_activations
from loramill.engine.planning.architectures import Architecture, architecture, build_on_meta

GIB = 2**30
DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Bytes per stored Linear weight for each --quantize-base: int8 and fp8 keep one scale per output row
# (counted apart), NF4 packs two weights a byte plus one fp32 absmax per 64 (bitsandbytes' blocksize).
QUANTIZED_BYTES = {"int8": 1.0, "fp8": 1.0, "nf4": 0.5 + 4 / 64}
# Optimizer state bytes per trainable parameter: AdamW's two fp32 moments, bitsandbytes' two 8-bit
# moments, Prodigy's four fp32 buffers (two moments, its s and the initial weights).
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16}
# Peak / counted activations: a provisional margin until a GPU run calibrates it (module docstring).
ACTIVATION_FACTOR = 1.25
# The CUDA context and the kernels' workspaces, outside what torch reports as allocated.
CONTEXT_BYTES = int(0.6 * GIB)


@dataclass(frozen=True)
class PlanOptions:
    """The options that decide a run's memory (the training options of the same names)."""

    family: str
    resolution: int = 512
    batch_size: int = 1
    rank: int = 16
    mixed_precision: str = "no"
    quantize_base: str = "none"
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    train_text_encoder: bool = False
    target_modules: list[str] | None = None
    validation: bool = False


@dataclass
class MemoryPlan:
    """Bytes per part of each phase; ``peak`` is what the accelerator must hold at the worst moment."""

    options: PlanOptions
    parts: dict[str, int] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return max(self.phases.values()) + CONTEXT_BYTES

    def summary(self) -> str:
        o = self.options
        lines = [f"{o.family} {o.resolution}px batch {o.batch_size} rank {o.rank} precision {o.mixed_precision} "
                 f"quantize-base {o.quantize_base} checkpointing {'on' if o.gradient_checkpointing else 'off'} "
                 f"optimizer {o.optimizer}"]
        lines += [f"  {name:<22} {gib(value):>8.2f} GiB" for name, value in self.parts.items()]
        lines += [f"  phase {name:<16} {gib(value):>8.2f} GiB" for name, value in self.phases.items()]
        lines.append(f"  peak (with CUDA context) {gib(self.peak):>5.2f} GiB")
        return "\n".join(lines)


def gib(value: float) -> float:
    return round(value / GIB, 2)


def plan_training(options: PlanOptions, arch: Architecture | None = None) -> MemoryPlan:
    """The memory plan of a run with ``options`` on ``arch`` (default: the family at real size)."""
    from loramill.engine.families import get_family

    arch = arch or architecture(options.family)
    family = get_family(options.family)
    dtype = DTYPES[options.mixed_precision]
    size = torch.finfo(dtype).bits // 8
    plan = MemoryPlan(options)

    # 1. The frozen denoiser: Linear weights as quantised, everything else in the compute dtype.
    denoiser = build_on_meta(*arch.denoiser, dtype=dtype)
    linear = sum(m.weight.numel() for m in denoiser.modules() if type(m) is torch.nn.Linear)
    rows = sum(m.weight.shape[0] for m in denoiser.modules() if type(m) is torch.nn.Linear)
    other = sum(p.numel() for p in denoiser.parameters()) - linear
    if options.quantize_base == "none":
        plan.parts["denoiser weights"] = (linear + other) * size
    else:
        scales = rows * 4 if options.quantize_base != "nf4" else 0
        plan.parts["denoiser weights"] = int(linear * QUANTIZED_BYTES[options.quantize_base]) + scales + other * size

    # 2. The LoRA (fp32), its gradients and the optimizer's state, from peft's own injection.
    targets = options.target_modules or family.DEFAULT_TARGET_MODULES
    lora = _lora_params(denoiser, options.rank, targets)
    encoders = {name: build_on_meta(cls, cfg, dtype=dtype) for name, (cls, cfg) in arch.text_encoders.items()}
    encoder_bytes = sum(p.numel() for m in encoders.values() for p in m.parameters()) * size
    if options.train_text_encoder:
        lora += sum(_lora_params(m, options.rank, family.TEXT_ENCODER_TARGET_MODULES) for m in encoders.values())
    plan.parts["lora + grads + optimizer"] = lora * (4 + 4 + OPTIMIZER_BYTES[options.optimizer])

    # 3. Activations of one step, counted on the meta device with the LoRA attached.
    counted = count_activations(denoiser, arch, options.family, options.resolution, options.batch_size, dtype)
    kept = counted.checkpointed if options.gradient_checkpointing else counted.saved
    plan.parts["activations"] = int(kept * ACTIVATION_FACTOR)

    # 4. VAE (fp32, loramill keeps it so) and the text encoders, on the accelerator while caching.
    vae = build_on_meta("AutoencoderKL", arch.vae)
    plan.parts["vae"] = sum(p.numel() for p in vae.parameters()) * 4
    plan.parts["text encoders"] = encoder_bytes
    # The VAE encoder's widest activations at full resolution (three live 128-channel fp32 maps an image),
    # four images a call at 512 px, fewer above (engine/training/cache.py).
    per_call = max(1, 4 * 512 * 512 // options.resolution ** 2)
    plan.parts["vae encode"] = per_call * arch.vae["block_out_channels"][0] * options.resolution ** 2 * 4 * 3

    # 5. The phases: the cache made the VAE and text encoders useless during the loop (residency.py).
    resident_encoders = encoder_bytes if options.train_text_encoder else 0
    plan.phases["caching"] = plan.parts["vae"] + encoder_bytes + plan.parts["vae encode"]
    plan.phases["training step"] = (plan.parts["denoiser weights"] + plan.parts["lora + grads + optimizer"]
                                    + plan.parts["activations"] + resident_encoders)
    if options.validation:
        plan.phases["validation images"] = (plan.parts["denoiser weights"] + plan.parts["lora + grads + optimizer"]
                                            + plan.parts["vae"] + encoder_bytes)
    return plan


# What to try, in order, when a run does not fit: each is a change of one option a user can make.
_REMEDIES: list[tuple[str, dict[str, Any]]] = [
    ("--gradient-checkpointing", {"gradient_checkpointing": True}),
    ("--quantize-base int8", {"quantize_base": "int8"}),
    ("--quantize-base nf4", {"quantize_base": "nf4"}),
    ("--optimizer adamw8bit", {"optimizer": "adamw8bit"}),
    ("--batch-size 1", {"batch_size": 1}),
]


def suggest(plan: MemoryPlan, available: int, *, cuda: bool = True,
            arch: Architecture | None = None) -> list[tuple[str, MemoryPlan]]:
    """Changes (cumulative, in order) that bring ``plan`` under ``available`` bytes; empty if none is needed."""
    if plan.peak <= available:
        return []
    options, flags, tried = plan.options, [], []
    for flag, change in _REMEDIES:
        if all(getattr(options, k) == v for k, v in change.items()):
            continue
        if not cuda and flag in ("--quantize-base nf4", "--optimizer adamw8bit"):
            continue
        if flag == "--quantize-base nf4" and options.quantize_base not in ("none", "int8"):
            continue
        options = replace(options, **change)
        flags.append(flag)
        candidate = plan_training(options, arch)
        tried.append((" ".join(flags), candidate))
        if candidate.peak <= available:
            break
    return tried


def _lora_params(model: torch.nn.Module, rank: int, targets: list[str]) -> int:
    """Attach the LoRA as training would (peft, on the meta model) and count its parameters."""
    from loramill.engine.training import adapters

    return sum(p.numel() for p in adapters.add_lora(model, rank, float(rank), targets))


def options_of(config: Any, family: str) -> PlanOptions:
    """The plan options of a training config (engine/training/config.py)."""
    return PlanOptions(family=family, resolution=config.resolution, batch_size=config.batch_size, rank=config.rank,
                       mixed_precision=config.mixed_precision, quantize_base=config.quantize_base,
                       gradient_checkpointing=config.gradient_checkpointing, optimizer=config.optimizer,
                       train_text_encoder=config.train_text_encoder, target_modules=config.target_modules,
                       validation=bool(config.validation_every and config.validation_prompts))


def check_fits(plan: MemoryPlan, available: int, device_name: str, arch: Architecture | None = None) -> None:
    """Refuse a run whose plan exceeds ``available`` bytes, naming the changes that would make it fit."""
    from loramill.errors import UnsupportedHardware

    if plan.peak <= available:
        return
    tried = suggest(plan, available, arch=arch)
    message = f"this run needs ~{gib(plan.peak):.1f} GiB, {device_name} has {gib(available):.1f} GiB free"
    if tried and tried[-1][1].peak <= available:
        flags, fitted = tried[-1]
        message += f": {flags} → ~{gib(fitted.peak):.1f} GiB"
    else:
        message += "; lower --resolution or train on a GPU with more memory (loramill plan shows the parts)"
    raise UnsupportedHardware(message, code="insufficient_memory", field="resolution")


def check_run_memory(config: Any, family: str, pipe: Any, device: torch.device) -> MemoryPlan | None:
    """Before a run on a GPU: plan it on the loaded model's own architecture and refuse it if it cannot fit."""
    if device.type != "cuda":
        return None  # host memory is not what runs out first, and the OS reports it better than a plan
    from loramill.engine.planning.architectures import architecture_of

    arch = architecture_of(pipe, family)
    plan = plan_training(options_of(config, family), arch)
    free, _ = torch.cuda.mem_get_info(device)
    # What this process already holds (a resident pipeline) is reused by the run, so it counts as available.
    check_fits(plan, free + torch.cuda.memory_reserved(device), torch.cuda.get_device_name(device), arch)
    return plan
