"""``loramill models tiny {sd15,sdxl,flux} DIR``: write a tiny random model of a real architecture."""

from __future__ import annotations

import argparse

from loramill.engine.models.tiny import BUILDERS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="base model utilities")
    models_sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    tiny = models_sub.add_parser("tiny", help="write a tiny random-weight model of a real architecture (for tests "
                                 "and demos; no download)")
    tiny.add_argument("family", choices=sorted(BUILDERS))
    tiny.add_argument("out_dir", metavar="DIR")
    tiny.add_argument("--seed", type=int, default=0, help="weights are deterministic for a seed (default 0)")
    tiny.set_defaults(func=_tiny)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _tiny(args: argparse.Namespace) -> int:
    from loramill.engine.models.tiny import write_tiny_model

    out = write_tiny_model(args.family, args.out_dir, seed=args.seed)
    print(f"wrote tiny {args.family} model to {out}")
    return 0
