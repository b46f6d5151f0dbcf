"""Training-time augmentation: horizontal flip, colour jitter, small rotation (the Aldar Kose recipe).

The recipe is torchvision's ``RandomHorizontalFlip(0.5)``, ``ColorJitter(brightness=0.1,
contrast=0.1)`` and ``RandomRotation(5)``, drawn afresh every step. Fresh randomness every step would
make cached latents wrong, so here an augmentation is a *variant*: ``augment(image, k, config)`` is the
same picture every time for the same image and ``k``. A trainer that caches latents caches one per
(image, variant) and picks a variant per epoch (``variant_for_epoch``); variant 0 is the untouched image.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageEnhance


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations a variant may apply, and how many variants per image a trainer should use."""

    flip: bool = True
    brightness: float = 0.1  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.1
    rotation_degrees: float = 5.0  # angle drawn from [-d, d]; corners are cropped away, never filled
    variants: int = 4  # augmented variants per image besides the original (variant 0)

    def __post_init__(self) -> None:
        from loramill.errors import InvalidInput

        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise InvalidInput("augment brightness/contrast must be in [0, 1); 0.1 is the usual jitter",
                               code="invalid_option", field="augment")
        if not 0 <= self.rotation_degrees <= 30:
            raise InvalidInput("augment rotation_degrees must be 0–30; 5 keeps faces and lines natural",
                               code="invalid_option", field="augment")
        if self.variants < 0:
            raise InvalidInput("augment variants must be 0 or more", code="invalid_option", field="augment")

    @property
    def enabled(self) -> bool:
        return self.variants > 0 and (self.flip or self.brightness > 0 or self.contrast > 0
                                      or self.rotation_degrees > 0)


def variant_for_epoch(epoch: int, config: AugmentConfig | None) -> int:
    """The variant to load in ``epoch``: cycles 0, 1, …, variants so a latent cache stays finite."""
    if config is None or not config.enabled:
        return 0
    return epoch % (config.variants + 1)


def augment(image: Image.Image, variant: int, config: AugmentConfig) -> Image.Image:
    """Return variant ``variant`` of ``image``: deterministic for (pixels, variant); 0 returns it unchanged."""
    if variant == 0 or not config.enabled:
        return image
    rng = _variant_random(image, variant)
    out = image
    if config.flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if config.brightness:
        out = ImageEnhance.Brightness(out).enhance(rng.uniform(1 - config.brightness, 1 + config.brightness))
    if config.contrast:
        out = ImageEnhance.Contrast(out).enhance(rng.uniform(1 - config.contrast, 1 + config.contrast))
    if config.rotation_degrees:
        out = rotate_without_corners(out, rng.uniform(-config.rotation_degrees, config.rotation_degrees))
    return out


def rotate_without_corners(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate, then crop the largest centred same-aspect rectangle and resize back.

    torchvision fills the corners with black; a LoRA then learns black corners. Cropping them keeps the
    output size and aspect unchanged at the cost of a zoom of a few percent.
    """
    if abs(degrees) < 1e-3:
        return image
    w, h = image.size
    theta = math.radians(abs(degrees))
    cos, sin = math.cos(theta), math.sin(theta)
    # the scaled rectangle (s·w, s·h) fits inside the rotated one when both back-rotated corners do
    scale = min(w / (w * cos + h * sin), h / (w * sin + h * cos))
    rotated = image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)
    cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
    left, top = (w - cw) // 2, (h - ch) // 2
    return rotated.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.LANCZOS)


def _variant_random(image: Image.Image, variant: int) -> random.Random:
    """A generator seeded by the image (mode, size, pixels) and the variant: same inputs, same draws."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}:{image.size}:{variant}".encode())
    h.update(image.tobytes())
    return random.Random(int.from_bytes(h.digest(), "big"))
