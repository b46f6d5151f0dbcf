"""``loramill train``: train a LoRA from a folder of images (or a dataset.toml) on a base model."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from loramill.engine.training.config import (
    LORA_FORMATS,
    LR_SCHEDULERS,
    MIXED_PRECISION,
    OPTIMIZERS,
    TrainConfig,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a LoRA from images", description=__doc__)
    p.add_argument("--config", help="TOML file with any of these options (flags given here win)")
    p.add_argument("--model", help="base model: diffusers folder, single-file checkpoint, or hub id")
    p.add_argument("--family", choices=["sd15", "sdxl", "flux"], help="model family (default: detected)")
    p.add_argument("--images", help="folder of images (+ .txt captions), a prepared dataset, or a kohya dataset.toml")
    p.add_argument("--trigger", help="trigger word, present in every caption (prepended when missing)")
    p.add_argument("--out", help="the LoRA file to write (.safetensors)")
    p.add_argument("--work-dir", help="metrics, checkpoints, validation images (default: OUT.run beside --out)")
    p.add_argument("--resolution", type=int)
    p.add_argument("--rank", type=int)
    p.add_argument("--alpha", type=float)
    p.add_argument("--target-modules", help="comma-separated module names (default: the family's attention layers)")
    p.add_argument("--train-text-encoder", action="store_true", default=None, help="also train text-encoder LoRA (SD families)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-scheduler", choices=LR_SCHEDULERS)
    p.add_argument("--lr-warmup-steps", type=int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION)
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, help="save a resumable checkpoint every N steps")
    p.add_argument("--resume", help="a checkpoint folder, or 'latest'")
    p.add_argument("--validation-prompt", action="append", dest="validation_prompts",
                   help="render this prompt every --validation-every steps (repeatable)")
    p.add_argument("--validation-every", type=int)
    p.add_argument("--format", choices=LORA_FORMATS, help="LoRA layout (default kohya)")
    p.add_argument("--augment-variants", type=int, help="augmented copies per image (flip, jitter, rotation)")
    p.add_argument("--prepare", choices=["auto", "never"],
                   help="auto (default): run the dataset step on a raw folder first; never: read it as it is")
    p.add_argument("--subject", choices=["face", "object", "style"], help="subject mode for the dataset step")
    p.add_argument("--class-word", help="class word for template captions (e.g. man, dog)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from loramill.cli.progress import ProgressBar
    from loramill.engine.training.run import train

    known = {f.name for f in fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in known}
    if isinstance(overrides.get("target_modules"), str):
        overrides["target_modules"] = [m.strip() for m in overrides["target_modules"].split(",") if m.strip()]
    config = TrainConfig.from_sources(args.config, overrides)
    bar = ProgressBar(disable=args.quiet)
    try:
        result = train(config, progress=bar)
    finally:
        bar.close()
    print(f"LoRA written to {result.lora_path} ({config.format} layout)")
    print(f"metrics: {config.run_dir / 'metrics.json'}  checkpoints: {result.checkpoint_dir}")
    print(json.dumps(result.metrics))
    return 0
