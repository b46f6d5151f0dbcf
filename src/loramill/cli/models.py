"""``loramill models tiny {sd15,sdxl,flux} DIR``: a tiny random model of a real architecture;
``loramill models reference {sd15,flux,clip} DIR``: the trained reference world's models (issue 12)."""

from __future__ import annotations

import argparse

from loramill.engine.models.tiny import BUILDERS

REFERENCE_MODELS = ("sd15", "flux", "clip")  # loramill.engine.reference.models.FAMILY_MODELS + the CLIP model


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="base model utilities")
    models_sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    tiny = models_sub.add_parser("tiny", help="write a tiny random-weight model of a real architecture (for tests "
                                 "and demos; no download)")
    tiny.add_argument("family", choices=sorted(BUILDERS))
    tiny.add_argument("out_dir", metavar="DIR")
    tiny.add_argument("--seed", type=int, default=0, help="weights are deterministic for a seed (default 0)")
    tiny.set_defaults(func=_tiny)
    reference = models_sub.add_parser(
        "reference", help="write a small model trained on loramill's coloured-shapes world (the SD 1.5 or FLUX.1 "
        "architecture, or the world's CLIP model), from the weights `make reference-models` trains; see "
        "docs/quality.md")
    reference.add_argument("name", choices=REFERENCE_MODELS)
    reference.add_argument("out_dir", metavar="DIR")
    reference.set_defaults(func=_reference)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)


def _tiny(args: argparse.Namespace) -> int:
    from loramill.engine.models.tiny import write_tiny_model

    out = write_tiny_model(args.family, args.out_dir, seed=args.seed)
    print(f"wrote tiny {args.family} model to {out}")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from loramill.engine.reference.models import write_reference_model

    out = write_reference_model(args.name, args.out_dir)
    print(f"wrote the reference {args.name} model to {out}")
    return 0
