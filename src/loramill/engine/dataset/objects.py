"""Separating an object from its background without a segmentation model.

Three ways, tried in order, each good where the previous one does not apply:
1. the file's own transparency (a cut-out PNG: exact);
2. a plain background — the border is one colour, and whatever of that colour touches the border is
   background (so white parts *inside* a white-background object stay);
3. OpenCV's GrabCut seeded with "the object is inside the central 90 %" for photos with clutter.
A mask covering almost nothing or almost everything is a failure, and the caller keeps the whole image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from loramill.engine.dataset.faces import load_cv2 as _cv2
from loramill.engine.dataset.validate import DecodedImage

GRABCUT_MAX_SIDE = 400  # GrabCut is O(pixels × iterations); a 400 px copy takes ~0.2 s
PLAIN_SPREAD = 24.0  # 90th-percentile colour distance along the border below which it is "plain"
PLAIN_TOLERANCE = 40.0  # colour distance from the background colour that still counts as background


def object_mask(decoded: DecodedImage) -> tuple[np.ndarray | None, str]:
    """A soft foreground mask (H×W float32 in [0, 1]) and the method that found it; (None, why) on failure."""
    if decoded.alpha is not None:
        mask, method = np.asarray(decoded.alpha, dtype=np.float32) / 255.0, "transparency"
    else:
        rgb = np.asarray(decoded.image, dtype=np.float32)
        background, spread = border_colour(rgb)
        if spread <= PLAIN_SPREAD:
            hard, method = plain_background_mask(rgb, background), "plain background"
        else:
            hard, method = grabcut_mask(decoded.image), "GrabCut"
        mask = _soften(hard)
    coverage = float((mask > 0.5).mean())
    if not 0.005 <= coverage <= 0.98:
        return None, f"{method} found {coverage:.0%} of the picture as object"
    return mask, method


def border_colour(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The median colour of a thin border and how far (90th percentile) border pixels stray from it."""
    h, w = rgb.shape[:2]
    t = max(2, min(h, w) // 40)
    ring = np.concatenate([rgb[:t].reshape(-1, 3), rgb[-t:].reshape(-1, 3),
                           rgb[:, :t].reshape(-1, 3), rgb[:, -t:].reshape(-1, 3)])
    colour = np.median(ring, axis=0)
    spread = float(np.percentile(np.linalg.norm(ring - colour, axis=1), 90))
    return colour, spread


def plain_background_mask(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Foreground = everything except background-coloured pixels connected to the border."""
    cv2 = _cv2()
    like_background = (np.linalg.norm(rgb - background, axis=2) <= PLAIN_TOLERANCE).astype(np.uint8)
    # label 0 is every non-background-like pixel; labels >= 1 are background-like patches
    _, labels = cv2.connectedComponents(like_background, connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, edge_labels[edge_labels != 0])
    return _open((~background).astype(np.uint8))


def grabcut_mask(image: Image.Image) -> np.ndarray:
    """GrabCut (Rother et al. 2004) on a small copy, initialised with the central 90 % as probable object."""
    cv2 = _cv2()
    scale = min(1.0, GRABCUT_MAX_SIDE / max(image.size))
    small = image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))),
                         Image.Resampling.BILINEAR)
    bgr = np.ascontiguousarray(np.asarray(small)[:, :, ::-1])
    h, w = bgr.shape[:2]
    rect = (max(1, w // 20), max(1, h // 20), max(2, w - w // 10), max(2, h - h // 10))
    mask = np.zeros((h, w), np.uint8)
    cv2.grabCut(bgr, mask, rect, np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64), 4,
                cv2.GC_INIT_WITH_RECT)
    foreground = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    full = Image.fromarray(_open(foreground) * 255).resize(image.size, Image.Resampling.BILINEAR)
    return (np.asarray(full) > 127).astype(np.uint8)


def _soften(hard: np.ndarray) -> np.ndarray:
    """A 1.5 px feather so the cut-out edge is anti-aliased."""
    blurred = Image.fromarray((hard > 0).astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(1.5))
    return np.asarray(blurred, dtype=np.float32) / 255.0


def _open(mask: np.ndarray) -> np.ndarray:
    """Remove specks of noise (morphological opening with a 3×3 kernel)."""
    cv2 = _cv2()
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))


