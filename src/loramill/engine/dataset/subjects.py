"""Subject modes: which part of a decoded image becomes training data (face, object, style, whole).

Every mode has the same signature — ``(DecodedImage, DatasetConfig) -> list[Region]`` — and is picked
from ``SUBJECTS`` by name. A mode raises ``Rejected`` when the image cannot serve (no face).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from loramill.engine.dataset.faces import detect_faces, face_crop_box
from loramill.engine.dataset.objects import object_mask
from loramill.engine.dataset.report import Rejected
from loramill.engine.dataset.validate import DecodedImage

if TYPE_CHECKING:
    from loramill.engine.dataset.config import DatasetConfig

OBJECT_MARGIN = 0.08  # white space around an object, as a fraction of its longer side


@dataclass
class Region:
    """A part of an upright image to frame and keep; ``box`` is (left, top, right, bottom), None = all of it."""

    image: Image.Image
    box: tuple[int, int, int, int] | None = None
    suffix: str = ""  # added to the output file name when one source yields several regions
    warnings: list[str] = field(default_factory=list)


def whole_image(decoded: DecodedImage, config: DatasetConfig) -> list[Region]:
    """No subject given: the whole picture."""
    return [Region(decoded.image)]


def face_regions(decoded: DecodedImage, config: DatasetConfig) -> list[Region]:
    """A square around the largest face; an image without a face is rejected."""
    faces = detect_faces(decoded.image)
    if not faces:
        raise Rejected("no_face", "no face found (OpenCV Haar cascade, frontal and profile; faces under a tenth of "
                       "the picture are ignored); use a photo where the face is clearly visible, or --subject "
                       "object/style for pictures of something else")
    warnings = []
    if len(faces) > 1:
        largest = faces[0]
        warnings.append(f"{len(faces)} faces found; used the largest ({largest.width}×{largest.height} px "
                        f"at {largest.left},{largest.top})")
    box = face_crop_box(decoded.image.size, faces[0], config.face_margin)
    side = box[2] - box[0]
    if side < config.min_side:
        raise Rejected("too_small", f"the face crop is only {side} px, under min_side {config.min_side}; "
                       "use a closer or larger photo of the face")
    return [Region(decoded.image.crop(box), box, "", warnings)]


def object_regions(decoded: DecodedImage, config: DatasetConfig) -> list[Region]:
    """The object cut from its background and centred on ``config.background`` in a square."""
    image = decoded.image
    mask, method = object_mask(decoded)
    if mask is None:
        canvas = _square_canvas(image, config.background)
        return [Region(canvas, None, "", [f"could not separate the object from its background ({method}); "
                                         "kept the whole picture centred — a photo on a plain background works best"])]
    ys, xs = np.nonzero(mask > 0.5)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    # blend with the soft mask so edges stay anti-aliased instead of jagged
    alpha = mask[..., None]
    pixels = np.asarray(image, dtype=np.float32) * alpha + np.array(config.background, np.float32) * (1 - alpha)
    cut = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB").crop(box)
    side = round(max(cut.size) * (1 + 2 * OBJECT_MARGIN))
    if side < config.min_side:
        raise Rejected("too_small", f"the object is only {cut.width}×{cut.height} px, under min_side "
                       f"{config.min_side}; use a closer or larger photo")
    return [Region(_square_canvas(cut, config.background, side), box)]


def style_regions(decoded: DecodedImage, config: DatasetConfig) -> list[Region]:
    """The whole picture, plus up to ``style_max_crops`` detailed tiles of an artwork at least twice the resolution."""
    image = decoded.image
    regions = [Region(image)]
    width, height = image.size
    short = min(width, height)
    if config.style_max_crops == 0 or short < 2 * config.resolution:
        return regions
    side = max(config.resolution, short // 2)
    xs = np.linspace(0, width - side, max(2, width // side)).round().astype(int)
    ys = np.linspace(0, height - side, max(2, height // side)).round().astype(int)
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    # rank tiles by contrast: the flat corners of a painting teach the style nothing
    tiles = sorted(((float(grey[y:y + side, x:x + side].std()), int(x), int(y)) for y in ys for x in xs), reverse=True)
    for n, (_contrast, x, y) in enumerate((t for t in tiles if t[0] >= 8.0), start=1):
        if n > config.style_max_crops:
            break
        box = (x, y, x + side, y + side)
        regions.append(Region(image.crop(box), box, f"_crop{n}"))
    return regions


# subject name -> how to get training regions from one decoded image
SUBJECTS: dict[str, Callable[[DecodedImage, DatasetConfig], list[Region]]] = {
    "face": face_regions,
    "object": object_regions,
    "style": style_regions,
}


def subject_regions(decoded: DecodedImage, config: DatasetConfig) -> list[Region]:
    """The regions ``config.subject`` takes from ``decoded`` (the whole image when no subject is set)."""
    mode = SUBJECTS[config.subject] if config.subject else whole_image
    return mode(decoded, config)


def _square_canvas(image: Image.Image, background: tuple[int, int, int], side: int | None = None) -> Image.Image:
    side = side or max(image.size)
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas
