"""``loramill train``: train a LoRA from a folder of images (or a dataset.toml) on a base model.

Every option flag comes from ``TrainConfig``'s declarations (``loramill.cli.options``); only ``--config``
and ``--quiet`` are the command's own.
"""

from __future__ import annotations

import argparse
import json

from loramill.cli.options import add_option_flags, as_flags, option_values
from loramill.engine.training.config import TrainConfig
from loramill.errors import LoramillError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a LoRA from images", description=__doc__)
    p.add_argument("--config", help="TOML file with any of these options (flags given here win)")
    add_option_flags(p, TrainConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from loramill.cli.progress import ProgressBar
    from loramill.engine.training.run import train

    try:
        config = TrainConfig.from_sources(args.config, option_values(args, TrainConfig))
        bar = ProgressBar(disable=args.quiet)
        try:
            result = train(config, progress=bar)
        finally:
            bar.close()
    except LoramillError as exc:
        raise as_flags(exc, TrainConfig) from None
    print(f"LoRA written to {result.lora_path} ({config.format} layout)")
    print(f"metrics: {config.run_dir / 'metrics.json'}  checkpoints: {result.checkpoint_dir}")
    print(json.dumps(result.metrics))
    return 0
