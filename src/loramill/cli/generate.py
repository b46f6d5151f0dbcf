"""``loramill generate``: text to image on a base model, with any number of LoRAs at chosen weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from loramill.errors import InvalidInput


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images, optionally with LoRAs", description=__doc__)
    p.add_argument("--model", required=True, help="base model: diffusers folder, single-file checkpoint, or hub id")
    p.add_argument("--family", choices=["sd15", "sdxl", "flux"], help="model family (default: detected)")
    p.add_argument("--prompt", required=True, help="may contain A1111 tags <lora:NAME:WEIGHT> (see --lora-dir)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="a LoRA to apply (repeatable: compose a style and a subject)")
    p.add_argument("--lora-dir", type=Path, help="folder where <lora:NAME> tags are looked up")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder (default ./out)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def parse_lora_arg(value: str) -> tuple[Path, float]:
    """``FILE`` or ``FILE:WEIGHT`` (the weight after the last colon, when it is a number)."""
    path, _, weight = value.rpartition(":")
    if path and weight:
        try:
            return Path(path), float(weight)
        except ValueError:
            pass
    return Path(value), 1.0


def run(args: argparse.Namespace) -> int:
    from loramill.cli.progress import ProgressBar
    from loramill.engine.generation.generate import GenerateRequest, Generator, save_images
    from loramill.engine.generation.loras import LoraSpec

    loras = [LoraSpec(*parse_lora_arg(v)) for v in args.lora]
    for spec in loras:
        if not spec.path.is_file():
            raise InvalidInput(f"--lora {spec.path}: no such file", code="lora_not_found", field="lora")
    request = GenerateRequest(prompt=args.prompt, negative_prompt=args.negative_prompt, loras=loras,
                              lora_dir=args.lora_dir, steps=args.steps, guidance=args.guidance, width=args.width,
                              height=args.height, seed=args.seed, num_images=args.num_images)
    generator = Generator(args.model, family=args.family)
    bar = ProgressBar(disable=args.quiet)
    try:
        images = generator.generate(request, progress=bar)
    finally:
        bar.close()
    for path in save_images(images, args.out):
        print(path)
    return 0
