"""A deterministic classifier for the reference domain: what an image shows, or why it shows nothing.

``score(image)`` reads the background from the border, the shape as the largest blob that differs from
it, its colour from the hue of the blob's inner pixels, its texture from their brightness spread, and its
shape as the best-fitting outline (``domain.outline``) placed at the blob's centroid with its area (an
IoU). A **validity gate** runs first, so garbage is never read as a shape: a known, clean background;
one blob of a plausible size; one colour; an outline that fits. ``Score.valid`` is False with
``Score.reason`` saying which check failed. Pure numpy/scikit-image: no training, the same answer every time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from loramill.engine.reference.domain import BACKGROUNDS, COLOURS, SHAPES, SIZE, Shape, shape_mask

# Thresholds, measured on rendered images (which pass with a wide margin) and on noise, blank and
# two-shape images (which fail): see tests/engine/reference/test_scorer.py.
BACKGROUND_TOLERANCE = 60.0  # RGB distance from a known background colour for the border's median
CLEAN_BORDER = 0.9  # share of border pixels that must be the background
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that makes a pixel foreground
MIN_AREA = 40  # pixels: a radius-10 star is ~130
MAX_STRAY = 0.1  # foreground outside the main blob, as a share of the blob
MIN_SATURATION = 0.35  # below this a pixel is grey, which no colour of the domain is
MIN_PURITY = 0.75  # share of the blob's inner pixels that must have the majority colour
MIN_FIT = 0.7  # IoU of the blob with the best outline
STRIPED_SHARE = 0.25  # share of dark inner pixels (below 0.75 of the bright ones) that means stripes

# Shapes' areas per squared radius (domain.outline), to size an outline by the blob's area.
_AREA_PER_R2 = {"circle": math.pi, "square": (2 * 0.85) ** 2, "triangle": 3 * math.sqrt(3) / 4,
                "star": 5 * 0.45 * math.sin(math.radians(36))}
_HUES = {name: np.array(rgb, dtype=np.float32) / max(rgb) for name, rgb in COLOURS.items()}


@dataclass(frozen=True)
class Score:
    """What ``score`` read from one image. ``valid`` is False (and ``reason`` set) when the gate rejects it."""

    valid: bool
    reason: str | None = None
    colour: str | None = None
    shape: str | None = None
    background: str | None = None
    texture: str | None = None
    x: float | None = None  # centroid, 0..1 of the width
    y: float | None = None  # centroid, 0..1 of the height
    radius: float | None = None  # of the fitted outline, pixels at SIZE
    purity: float = 0.0
    fit: float = 0.0

    def matches(self, spec: Shape, fields: Sequence[str] = ("colour", "shape", "background", "texture")) -> bool:
        """True when the image is valid and shows ``spec``'s ``fields`` (what its caption says, by default)."""
        return self.valid and all(getattr(self, f) == getattr(spec, f) for f in fields)


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        if image.size != (SIZE, SIZE):
            image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.float32)
    array = np.asarray(image, dtype=np.float32)
    if array.shape != (SIZE, SIZE, 3):
        raise ValueError(f"image array must be ({SIZE}, {SIZE}, 3) uint8 RGB, got {array.shape}")
    return array


def _colour_labels(pixels: np.ndarray) -> np.ndarray:
    """Each pixel's nearest domain colour by hue (RGB over its max channel); -1 for grey or dark pixels."""
    top = pixels.max(axis=1)
    saturation = (top - pixels.min(axis=1)) / np.maximum(top, 1.0)
    hue = pixels / np.maximum(top, 1.0)[:, None]
    table = np.stack(list(_HUES.values()))
    labels = np.linalg.norm(hue[:, None, :] - table[None], axis=2).argmin(axis=1)
    return np.where((saturation >= MIN_SATURATION) & (top >= 40), labels, -1)


def _best_outline(blob: np.ndarray) -> tuple[str, float, float, float, float]:
    """The shape whose outline, at the blob's centroid and area, overlaps it most: (shape, IoU, x, y, r)."""
    ys, xs = np.nonzero(blob)
    cx, cy, area = xs.mean() + 0.5, ys.mean() + 0.5, float(blob.sum())
    best = ("", 0.0, cx, cy, 0.0)
    for name in SHAPES:
        radius = math.sqrt(area / _AREA_PER_R2[name])
        template = shape_mask(name, cx, cy, radius, supersample=2) >= 0.5
        iou = float((template & blob).sum() / max((template | blob).sum(), 1))
        if iou > best[1]:
            best = (name, iou, cx, cy, radius)
    return best


def score(image: Image.Image | np.ndarray) -> Score:
    """Classify one image of the domain (PIL image or uint8 array); see the module docstring."""
    from scipy.ndimage import binary_erosion
    from skimage.measure import label

    pixels = _as_array(image)
    # 1. The background: the border's median must be a known background, and the border clean
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3),
                             pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    median = np.median(border, axis=0)
    name, rgb = min(BACKGROUNDS.items(), key=lambda kv: float(np.linalg.norm(median - np.array(kv[1]))))
    bg = np.array(rgb, dtype=np.float32)
    if np.linalg.norm(median - bg) > BACKGROUND_TOLERANCE:
        return Score(False, "background is not one of the domain's")
    if (np.linalg.norm(border - bg, axis=1) <= BACKGROUND_TOLERANCE).mean() < CLEAN_BORDER:
        return Score(False, "background is not clean", background=name)
    # 2. One blob: the largest connected foreground region, with little foreground elsewhere
    foreground = np.linalg.norm(pixels - bg, axis=2) > FOREGROUND_DISTANCE
    regions = label(foreground, connectivity=2)
    if regions.max() == 0:
        return Score(False, "no shape", background=name)
    sizes = np.bincount(regions.ravel())[1:]
    blob = regions == (int(sizes.argmax()) + 1)
    area = int(blob.sum())
    if area < MIN_AREA:
        return Score(False, "shape too small", background=name)
    if foreground.sum() - area > MAX_STRAY * area:
        return Score(False, "more than one blob", background=name)
    # 3. One colour: the inner pixels' hues agree
    inner = binary_erosion(blob)
    if inner.sum() < MIN_AREA // 2:
        inner = blob
    inner_pixels = pixels[inner]
    labels = _colour_labels(inner_pixels)
    counts = np.bincount(labels[labels >= 0], minlength=len(COLOURS))
    purity = float(counts.max() / len(labels))
    colour = list(COLOURS)[int(counts.argmax())]
    if purity < MIN_PURITY:
        return Score(False, "not one colour", background=name, purity=purity)
    # 4. Texture: stripes are the same hue at half the brightness
    value = inner_pixels.max(axis=1)
    dark = (value < 0.75 * np.percentile(value, 90)).mean()
    texture = "striped" if dark >= STRIPED_SHARE else "solid"
    # 5. The shape: the outline that fits the blob best must fit well
    shape, fit, cx, cy, radius = _best_outline(blob)
    common = dict(colour=colour, background=name, texture=texture, x=cx / SIZE, y=cy / SIZE, radius=radius,
                  purity=purity, fit=fit)
    if fit < MIN_FIT:
        return Score(False, "no known shape fits", **common)  # type: ignore[arg-type]
    return Score(True, None, shape=shape, **common)  # type: ignore[arg-type]


def adherence(images: Iterable[Image.Image | np.ndarray], specs: Iterable[Shape],
              fields: Sequence[str] = ("colour", "shape", "background", "texture")) -> float:
    """Share of ``images`` that pass the gate and show their ``specs``' ``fields``."""
    hits = [score(image).matches(spec, fields) for image, spec in zip(images, specs, strict=True)]
    return sum(hits) / max(len(hits), 1)
