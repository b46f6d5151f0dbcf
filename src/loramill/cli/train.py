"""``loramill train``: train a LoRA from a folder of images (or a dataset.toml) on a base model.

Every option flag comes from ``TrainConfig``'s declarations (``loramill.cli.options``); only ``--config``,
``--processes`` and ``--quiet`` are the command's own (how to run, not what to train).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from loramill.cli.options import add_option_flags, as_flags, option_values
from loramill.engine.training.config import TrainConfig
from loramill.errors import LoramillError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a LoRA from images", description=__doc__)
    p.add_argument("--config", help="TOML file with any of these options (flags given here win)")
    add_option_flags(p, TrainConfig)
    p.add_argument("--processes", default=None,
                   help="train across N processes on this machine (one per GPU; CPU: gloo), or auto (one per GPU); "
                        "--batch-size is the global batch. Several machines: README, 'Several GPUs or machines'")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from loramill.cli.progress import ProgressBar
    from loramill.engine.progress import StopRequested
    from loramill.engine.training.distributed import Ranks, check_shares, process_count
    from loramill.engine.training.launch import launch
    from loramill.engine.training.run import train

    main_process = os.environ.get("RANK", "0") == "0"
    try:
        config = TrainConfig.from_sources(args.config, option_values(args, TrainConfig))
        processes = process_count(args.processes) if args.processes is not None else 1
        if processes > 1 and "WORLD_SIZE" not in os.environ:
            check_shares(config, Ranks(world=processes))  # before starting anything
            return launch(processes, _without_processes(args.argv))
        bar = ProgressBar(disable=args.quiet or not main_process)
        try:
            result = train(config, progress=bar)
        except StopRequested:
            if main_process:
                print(f"stopped; a checkpoint is in {config.run_dir / 'checkpoints'}: rerun with --resume latest",
                      file=sys.stderr)
            return 143
        finally:
            bar.close()
    except LoramillError as exc:
        raise as_flags(exc, TrainConfig) from None
    if not main_process:
        return 0
    print(f"LoRA written to {result.lora_path} ({config.format} layout)")
    print(f"metrics: {config.run_dir / 'metrics.json'}  checkpoints: {result.checkpoint_dir}")
    print(json.dumps(result.metrics))
    return 0


def _without_processes(argv: list[str]) -> list[str]:
    """The command line each training process gets: the same, less ``--processes``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            out.append(arg)
    return out
