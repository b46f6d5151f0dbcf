"""Loss masks: which pixels of a training image the loss counts (the subject, not its background).

``alpha``: the image's own transparency (a cut-out subject on a transparent background); ``face``: the
faces OpenCV's detector finds (engine/dataset/faces.py), widened by a margin so hair and jaw count. An
image with no alpha channel or no face found is trained whole; the caller is told how many were.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from loramill.engine.progress import Progress, ProgressCallback, no_progress
from loramill.engine.training.choices import MASKED_LOSS
from loramill.engine.training.data import Example, fit_image
from loramill.errors import InvalidInput

logger = logging.getLogger(__name__)

FACE_MARGIN = 0.25  # of the face box's size on every side


def alpha_mask(image: Image.Image) -> Image.Image | None:
    """The alpha channel as an ``L`` image, or ``None`` where the image has none (or is fully opaque)."""
    if "A" not in image.getbands() and not (image.mode == "P" and "transparency" in image.info):
        return None
    alpha = image.convert("RGBA").getchannel("A")
    return None if alpha.getextrema() == (255, 255) else alpha


def face_mask(image: Image.Image) -> Image.Image | None:
    """White over every detected face (plus ``FACE_MARGIN``), black elsewhere; ``None`` when none is found."""
    from loramill.engine.dataset.faces import detect_faces

    faces = detect_faces(image.convert("RGB"))
    if not faces:
        return None
    mask = np.zeros((image.height, image.width), dtype=np.uint8)
    for face in faces:
        dx, dy = round(face.width * FACE_MARGIN), round(face.height * FACE_MARGIN)
        top, left = max(0, face.top - dy), max(0, face.left - dx)
        mask[top:face.top + face.height + dy, left:face.left + face.width + dx] = 255
    return Image.fromarray(mask, mode="L")


MASKERS = {"alpha": alpha_mask, "face": face_mask}


def example_mask(example: Example, mode: str) -> torch.Tensor | None:
    """The example's mask as [1, H, W] in [0, 1] at its training size, or ``None`` (train the whole image)."""
    if mode not in MASKERS:
        raise InvalidInput(f"masked_loss: unknown value {mode!r}; choose one of: {', '.join(MASKED_LOSS)}",
                           code="invalid_option", field="masked_loss")
    with Image.open(example.image_path) as raw:
        image = ImageOps.exif_transpose(raw)
        image.load()
    mask = MASKERS[mode](image)
    if mask is None:
        return None
    fitted, _ = fit_image(mask, example.size)
    return torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0)[None]


def latent_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """A pixel mask [1, H, W] averaged down to the latent grid [1, h, w] (each latent covers a pixel patch)."""
    return F.adaptive_avg_pool2d(mask[None], latent_hw)[0]


def example_masks(examples: list[Example], mode: str, progress: ProgressCallback = no_progress
                  ) -> list[torch.Tensor | None] | None:
    """Every example's pixel mask (``None`` for mode ``off``); images without one are trained whole."""
    if mode == "off":
        return None
    masks = []
    for i, example in enumerate(examples):
        masks.append(example_mask(example, mode))
        progress(Progress("masks", i + 1, len(examples)))
    unmasked = sum(m is None for m in masks)
    if unmasked == len(masks):
        raise InvalidInput(f"masked_loss: {mode}: no training image has " +
                           ("an alpha channel" if mode == "alpha" else "a face the detector finds") +
                           "; use masked_loss off", code="invalid_option", field="masked_loss")
    if unmasked:
        logger.warning("masked loss %s: %d of %d images have no mask and are trained whole", mode, unmasked,
                       len(masks))
    return masks


def batch_mask(masks: list[torch.Tensor | None] | None, indices: list[int], latent_hw: Any) -> torch.Tensor | None:
    """The batch's masks on the latent grid, [B, 1, h, w] (``None`` when the loss is not masked)."""
    if masks is None:
        return None
    hw = (int(latent_hw[0]), int(latent_hw[1]))
    rows = [torch.ones(1, *hw) if masks[i] is None else latent_mask(masks[i], hw) for i in indices]  # type: ignore[arg-type]
    return torch.stack(rows)
