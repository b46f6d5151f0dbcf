"""Training examples: where they come from, how each becomes pixels, and the order batches are drawn in.

Everything here is a pure function of its inputs and the seed, which is what makes a resumed run
draw exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from loramill.engine.families.base import ImageMeta
from loramill.engine.progress import ProgressCallback, no_progress
from loramill.errors import InvalidInput

logger = logging.getLogger(__name__)


@dataclass
class Example:
    """One training image, its caption and the (width, height) it is trained at."""

    image_path: Path
    caption: str
    size: tuple[int, int]


def load_examples(source: str, *, trigger: str, resolution: int, multiple: int) -> list[Example]:
    """Read a prepared dataset folder, a kohya ``dataset.toml`` or a plain folder of images and captions.

    Bucket sizes from a prepared dataset are kept (rounded down to the family's ``multiple``); every
    other image is trained as a ``resolution`` square.
    """
    from loramill.engine.dataset.items import load_dataset

    path = Path(source)
    if not path.exists():
        raise InvalidInput(f"images: {source}: no such folder or file", code="images_not_found", field="images")
    items = load_dataset(path, trigger_word=trigger)
    if not items:
        raise InvalidInput(f"images: {source}: no images found (looked for .png, .jpg, .jpeg, .webp, .bmp); "
                           "add a few images of the subject", code="no_images", field="images")
    side = max(multiple, resolution // multiple * multiple)
    examples = []
    for item in items:
        if item.size is None:
            size = (side, side)
        else:
            w, h = item.size
            size = (max(multiple, w // multiple * multiple), max(multiple, h // multiple * multiple))
        examples.append(Example(image_path=Path(item.image_path), caption=item.caption, size=size))
    return examples


def needs_preparation(source: str) -> bool:
    """A plain folder of images (no manifest.json from `dataset prepare`, no kohya dataset.toml)."""
    path = Path(source)
    return path.is_dir() and not (path / "manifest.json").exists() and not any(path.glob("*.toml"))


def prepare_raw_images(source: str, out_dir: Path, *, trigger: str, resolution: int, subject: str | None,
                       class_word: str | None, captioner: str = "template",
                       progress: ProgressCallback = no_progress) -> str:
    """Run the dataset step on a raw folder: rejected files are reported, the rest become the training set.

    Thresholds follow the training resolution (a 64 px tiny-model run accepts small images; a 1024 px
    SDXL run keeps the 256 px minimum side).
    """
    from loramill.engine.dataset.config import DatasetConfig
    from loramill.engine.dataset.prepare import prepare_dataset

    config = DatasetConfig(resolution=resolution, trigger_word=trigger, subject=subject, class_word=class_word,
                           captioner=captioner, min_images=1, min_side=min(256, max(16, resolution // 2)))
    report = prepare_dataset([source], out_dir, config, progress=progress)
    for rejection in report.rejected:
        logger.warning("dataset: %s rejected (%s): %s", rejection.source, rejection.reason, rejection.message)
    return str(out_dir)


def load_pixels(example: Example, variant: int = 0, augment_config: object | None = None
                ) -> tuple[torch.Tensor, ImageMeta]:
    """The example as a [3, H, W] tensor in [-1, 1] at its training size, resized and centre-cropped."""
    try:
        with Image.open(example.image_path) as raw:
            image = ImageOps.exif_transpose(raw).convert("RGB")
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"image {example.image_path} cannot be read ({exc}); remove it or run "
                           "`loramill dataset prepare` first", code="bad_image", field="images") from exc
    if variant and augment_config is not None:
        from loramill.engine.dataset.augment import augment

        image = augment(image, variant, augment_config)  # type: ignore[arg-type]
    image, meta = fit_image(image, example.size)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return pixels, meta


def fit_image(image: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, ImageMeta]:
    """``image`` resized to cover ``size`` (width, height) and centre-cropped to it (loss masks follow the same)."""
    tw, th = size
    ow, oh = image.size
    scale = max(tw / ow, th / oh)
    rw, rh = max(tw, round(ow * scale)), max(th, round(oh * scale))
    image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - tw) // 2, (rh - th) // 2
    image = image.crop((left, top, left + tw, top + th))
    return image, ImageMeta(original_size=(oh, ow), crop_top_left=(top, left), target_size=(th, tw))


def buckets_of(examples: list[Example]) -> dict[tuple[int, int], list[int]]:
    """Example indices grouped by training size: a batch never mixes sizes."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        groups[ex.size].append(i)
    return dict(sorted(groups.items()))


def epoch_batches(buckets: dict[tuple[int, int], list[int]], batch_size: int, seed: int, epoch: int
                  ) -> list[list[int]]:
    """The batches of one epoch: shuffled within each bucket, then the batch order shuffled.

    Seeded by (seed, epoch) alone, so any epoch's order can be recomputed on resume.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    batches: list[list[int]] = []
    for indices in buckets.values():
        order = list(indices)
        rng.shuffle(order)
        batches.extend(order[i:i + batch_size] for i in range(0, len(order), batch_size))
    rng.shuffle(batches)
    return batches


def batches_per_epoch(buckets: dict[tuple[int, int], list[int]], batch_size: int) -> int:
    return sum((len(ix) + batch_size - 1) // batch_size for ix in buckets.values())
