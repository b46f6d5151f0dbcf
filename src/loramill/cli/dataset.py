"""``loramill dataset prepare SRC... --out DIR``: a thin shell over ``engine.dataset.prepare``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from loramill.engine.progress import Progress

_MIB = 2**20


def register(subparsers: Any) -> None:
    """Add ``dataset prepare`` to the ``loramill`` command."""
    dataset = subparsers.add_parser("dataset", help="prepare a training dataset from messy images",
                                    description="Dataset preparation.")
    actions = dataset.add_subparsers(dest="dataset_action", metavar="ACTION")
    prepare = actions.add_parser(
        "prepare", help="turn folders, files, zips, storage keys or URLs into a clean captioned dataset",
        description="Validate, deduplicate, frame and caption images; write images/, .txt captions, a kohya "
                    "dataset.toml and manifest.json to --out. Rejected files are listed with their reason.")
    prepare.add_argument("sources", nargs="+", metavar="SRC", help="folder, image file, .zip, or http(s) URL")
    prepare.add_argument("--out", required=True, type=Path, help="output folder (new, empty, or a previous dataset)")

    what = prepare.add_argument_group("subject and captions")
    what.add_argument("--subject", choices=("face", "object", "style"),
                      help="face: crop around the face; object: cut out onto the background; style: whole image "
                           "(+ crops of large artworks). Default: whole image")
    what.add_argument("--trigger-word", help="token the LoRA binds to; put in every caption (default ohwx)")
    what.add_argument("--class-word", help="what the subject is, e.g. woman, dog, 'game item'")
    what.add_argument("--style-keywords", help="comma-separated keywords for template captions")
    what.add_argument("--captioner", help="template (default), florence2, blip or none")
    what.add_argument("--caption-prefix")
    what.add_argument("--caption-suffix")
    what.add_argument("--florence2-model", help="Florence-2 folder in transformers format")
    what.add_argument("--florence2-task", help="<CAPTION>, <DETAILED_CAPTION> (default) or <MORE_DETAILED_CAPTION>")
    what.add_argument("--blip-model", help="BLIP captioning model folder")
    what.add_argument("--caption-max-tokens", type=int, help="longest model caption, in tokens (default 96)")

    size = prepare.add_argument_group("size and framing")
    size.add_argument("--resolution", type=int, help="training resolution (default 512)")
    size.add_argument("--bucket", action="store_true", default=None,
                      help="aspect-ratio buckets instead of square centre crops")
    size.add_argument("--bucket-min-side", type=int)
    size.add_argument("--bucket-max-side", type=int)
    size.add_argument("--bucket-step", type=int)
    size.add_argument("--upscale", action="store_true", default=None, help="enlarge images smaller than the target")
    size.add_argument("--background", help="colour behind transparency and cut-out objects (default white)")
    size.add_argument("--face-margin", type=float, help="space around the face, × face size per side (default 0.6)")
    size.add_argument("--style-max-crops", type=int, help="extra crops per large artwork in style mode (default 4)")
    size.add_argument("--image-format", choices=("png", "jpg"))

    checks = prepare.add_argument_group("checks")
    checks.add_argument("--min-images", type=int, help="fail when fewer usable images remain (default 3)")
    checks.add_argument("--max-images", type=int, help="refuse more candidate files than this (default 1000)")
    checks.add_argument("--min-side", type=int, help="shortest side allowed, px (default 256)")
    checks.add_argument("--max-pixels", type=int, help="pixel cap against decompression bombs (default 90M)")
    checks.add_argument("--near-duplicate-distance", type=int, help="perceptual-hash bits; 0 = exact only")

    urls = prepare.add_argument_group("URLs and archives")
    urls.add_argument("--allow-private-urls", action="store_true", default=None,
                      help="allow loopback/private addresses (local use only)")
    urls.add_argument("--url-timeout", type=float, help="seconds per connect/read (default 30)")
    urls.add_argument("--url-max-mb", type=float, help="largest download, MiB (default 50)")
    urls.add_argument("--url-retries", type=int)
    urls.add_argument("--zip-max-entries", type=int)
    urls.add_argument("--zip-max-mb", type=float, help="largest total uncompressed archive, MiB (default 2048)")

    train = prepare.add_argument_group("for the trainer (dataset.toml)")
    train.add_argument("--num-repeats", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--augment", action="store_true",
                       help="record flip / colour jitter / small rotation augmentation for training")
    train.add_argument("--augment-variants", type=int, help="augmented variants per image (default 4)")
    prepare.set_defaults(func=run_prepare)
    dataset.set_defaults(func=lambda _args: _help(dataset))


def build_config(args: argparse.Namespace) -> Any:
    """The ``DatasetConfig`` the command line asks for; options not given keep the config's defaults."""
    from loramill.engine.dataset.augment import AugmentConfig
    from loramill.engine.dataset.config import DatasetConfig

    names = ("subject", "trigger_word", "class_word", "captioner", "caption_prefix", "caption_suffix",
             "florence2_model", "florence2_task", "blip_model", "caption_max_tokens", "resolution", "bucket", "bucket_min_side",
             "bucket_max_side", "bucket_step", "upscale", "background", "face_margin", "style_max_crops",
             "image_format", "min_images", "max_images", "min_side", "max_pixels", "near_duplicate_distance",
             "allow_private_urls", "url_timeout", "url_retries", "zip_max_entries", "num_repeats", "batch_size")
    options: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.style_keywords is not None:
        options["style_keywords"] = tuple(args.style_keywords.split(","))
    if args.url_max_mb is not None:
        options["url_max_bytes"] = int(args.url_max_mb * _MIB)
    if args.zip_max_mb is not None:
        options["zip_max_bytes"] = int(args.zip_max_mb * _MIB)
    if args.augment or args.augment_variants is not None:
        options["augment"] = AugmentConfig(**({} if args.augment_variants is None
                                              else {"variants": args.augment_variants}))
    return DatasetConfig(**options)


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare the dataset with a progress bar on stderr and the summary on stdout."""
    from tqdm import tqdm

    from loramill.engine.dataset.prepare import prepare_dataset

    config = build_config(args)
    bar: tqdm | None = None

    def on_progress(report: Progress) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=report.total, unit="file", desc="preparing", file=sys.stderr, leave=False)
        bar.set_postfix_str(str(report.info.get("status", "")), refresh=False)
        bar.update(report.step - bar.n)

    try:
        report = prepare_dataset(list(args.sources), args.out, config, progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    print(report.summary())
    return 0


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
