"""Framing a region to its training size: a square centre crop, or the region's aspect-ratio bucket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

from loramill.engine.dataset.buckets import Size, choose_bucket

if TYPE_CHECKING:
    from loramill.engine.dataset.config import DatasetConfig


@dataclass
class Framed:
    """The final pixels of one training image and the bucket they belong to (None without bucketing)."""

    image: Image.Image
    bucket: Size | None
    warnings: list[str] = field(default_factory=list)


def frame_region(image: Image.Image, config: DatasetConfig) -> Framed:
    """Crop and resize ``image`` as ``config`` says: bucketed when ``config.bucket``, else a centred square."""
    if config.bucket:
        min_side, max_side = config.bucket_sides()
        bucket = choose_bucket(image.size, resolution=config.resolution, min_side=min_side, max_side=max_side,
                               step=config.bucket_step, upscale=config.upscale)
        return Framed(cover_and_crop(image, bucket), bucket)
    side = min(image.size)
    square = centre_crop(image, (side, side))
    if side >= config.resolution or config.upscale:
        return Framed(resize(square, (config.resolution, config.resolution)), None)
    kept = side - side % 8
    return Framed(resize(square, (kept, kept)), None,
                  [f"{side} px is under the {config.resolution} px resolution; kept at {kept} px instead of "
                   "upscaling (the trainer will resize it; --upscale does it here, --bucket keeps more of it)"])


def cover_and_crop(image: Image.Image, size: Size) -> Image.Image:
    """Scale so ``size`` is covered, then cut the centre: no stretching, and no upscaling unless ``size`` needs it."""
    scale = max(size[0] / image.width, size[1] / image.height)
    scaled = resize(image, (max(size[0], round(image.width * scale)), max(size[1], round(image.height * scale))))
    return centre_crop(scaled, size)


def centre_crop(image: Image.Image, size: Size) -> Image.Image:
    left = (image.width - size[0]) // 2
    top = (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))


def resize(image: Image.Image, size: Size) -> Image.Image:
    if image.size == size:
        return image
    # LANCZOS with reducing_gap: a large photo shrinks fast and still without aliasing
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
