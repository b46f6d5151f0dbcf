"""``loramill plan``: peak GPU memory of a training run before it starts, and what to change if it does not fit."""

from __future__ import annotations

import argparse
import json

from loramill.engine.training.choices import QUANTIZE_MODES
from loramill.engine.training.optim import MIXED_PRECISION, OPTIMIZERS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="estimate a training run's peak GPU memory", description=__doc__)
    p.add_argument("--family", choices=["sd15", "sdxl", "flux"], required=True)
    p.add_argument("--model", help="a diffusers model folder to plan on (its config files only; "
                                   "default: the family's published architecture at real size)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    p.add_argument("--quantize-base", choices=QUANTIZE_MODES, default="none")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--validation", action="store_true", help="the run renders validation images")
    p.add_argument("--gpu-memory", type=float, help="GiB the GPU has (default: this machine's GPU, if any)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from loramill.engine.planning.architectures import architecture_from_folder
    from loramill.engine.planning.memory import GIB, PlanOptions, gib, plan_training, suggest
    from loramill.errors import InvalidInput

    # 1. Check inputs.
    for name in ("resolution", "batch_size", "rank"):
        if getattr(args, name) < 1:
            raise InvalidInput(f"--{name.replace('_', '-')}: must be a whole number ≥ 1", field=name)
    if args.gpu_memory is not None and args.gpu_memory <= 0:
        raise InvalidInput("--gpu-memory: give the GPU's memory in GiB, e.g. 24", field="gpu_memory")
    arch = architecture_from_folder(args.model, args.family) if args.model else None
    options = PlanOptions(family=args.family, resolution=args.resolution, batch_size=args.batch_size,
                          rank=args.rank, mixed_precision=args.mixed_precision, quantize_base=args.quantize_base,
                          gradient_checkpointing=args.gradient_checkpointing, optimizer=args.optimizer,
                          train_text_encoder=args.train_text_encoder, validation=args.validation)

    # 2. Plan, and where a GPU size is known, what would make the run fit.
    plan = plan_training(options, arch)
    available = int(args.gpu_memory * GIB) if args.gpu_memory else (
        torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None)
    tried = suggest(plan, available, arch=arch) if available else []
    if args.json:
        print(json.dumps({"peakGiB": gib(plan.peak), "parts": {k: gib(v) for k, v in plan.parts.items()},
                          "phases": {k: gib(v) for k, v in plan.phases.items()},
                          "availableGiB": gib(available) if available else None,
                          "suggestions": [{"flags": f, "peakGiB": gib(c.peak)} for f, c in tried]}))
    else:
        print(plan.summary())
        if available and not tried:
            print(f"fits: ~{gib(plan.peak):.1f} GiB of {gib(available):.1f} GiB")
        elif available:
            print(f"needs ~{gib(plan.peak):.1f} GiB, the GPU has {gib(available):.1f} GiB:")
            for flags, candidate in tried:
                print(f"  {flags} → ~{gib(candidate.peak):.1f} GiB"
                      + ("  (fits)" if candidate.peak <= available else ""))
    return 0 if not available or plan.peak <= available else 3
