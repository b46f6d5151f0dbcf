"""``loramill generate``: text to image on a base model, with any number of LoRAs at chosen weights.

Every option flag comes from ``GenerateRequest``'s declarations (``loramill.cli.options``); ``--lora``
takes ``FILE[:WEIGHT]`` for the spec's ``loras``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loramill.cli.options import add_option_flags, as_flags, option_values
from loramill.engine.families import FAMILIES
from loramill.engine.generation.request import GenerateRequest, LoraRef
from loramill.engine.generation.serving import PRECISIONS, ServingSettings
from loramill.engine.options import options_of
from loramill.errors import InvalidInput, LoramillError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images, optionally with LoRAs", description=__doc__)
    p.add_argument("--model", required=True, help="base model: diffusers folder, single-file checkpoint, or hub id")
    p.add_argument("--family", choices=FAMILIES, help="model family (default: detected)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), bf16, or auto: bf16 on CPUs with native bf16 (AVX512-BF16/AMX), where a "
                        "real SD 1.5 UNet call is 1.64x faster at the same adherence (docs/performance.md)")
    p.add_argument("--openvino", action="store_true",
                   help="SD 1.5 on CPU: run the UNet through OpenVINO (pip install 'loramill[openvino]'; converted "
                        "on the first image, about a minute at real size; no LoRAs or DeepCache with it)")
    add_option_flags(p, GenerateRequest, skip=("loras",))
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help=options_of(GenerateRequest)["loras"].help + " (repeatable)")
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
    from loramill.engine.generation.generate import Generator, save_images

    try:
        loras = [LoraRef(path=path, weight=weight) for path, weight in map(parse_lora_arg, args.lora)]
        for ref in loras:
            if not ref.path.is_file():
                raise InvalidInput(f"loras: {ref.path}: no such file", code="lora_not_found", field="loras")
        request = GenerateRequest(**option_values(args, GenerateRequest), loras=loras)
        generator = Generator(args.model, family=args.family, serving=ServingSettings(precision=args.precision,
                                                                                openvino=args.openvino))
        bar = ProgressBar(disable=args.quiet)
        try:
            images = generator.generate(request, progress=bar)
        finally:
            bar.close()
    except LoramillError as exc:
        raise as_flags(exc, GenerateRequest, {"loras": "--lora"}) from None
    for path in save_images(images, args.out):
        print(path)
    return 0
