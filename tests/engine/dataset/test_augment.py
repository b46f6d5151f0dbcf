"""Augmentation variants: deterministic per (image, variant), so cached latents stay right."""

from __future__ import annotations

import numpy as np
from PIL import Image

from loramill.engine.dataset.augment import AugmentConfig, augment, rotate_without_corners, variant_for_epoch

from .conftest import photo


def test_augment_same_image_and_variant_gives_same_pixels() -> None:
    image = photo("astronaut")
    config = AugmentConfig()
    for variant in range(1, 5):
        assert augment(image, variant, config).tobytes() == augment(image.copy(), variant, config).tobytes()


def test_augment_variant_zero_is_the_original() -> None:
    image = photo("coffee")
    assert augment(image, 0, AugmentConfig()) is image


def test_augment_variants_differ_and_keep_size() -> None:
    image = photo("astronaut")
    variants = [augment(image, v, AugmentConfig()) for v in range(1, 9)]
    assert all(v.size == image.size and v.mode == "RGB" for v in variants)
    assert len({v.tobytes() for v in variants}) == 8
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    no_jitter = AugmentConfig(brightness=0, contrast=0, rotation_degrees=0)
    outcomes = {augment(image, v, no_jitter).tobytes() for v in range(1, 17)}
    assert outcomes == {image.tobytes(), flipped.tobytes()}  # half the variants flip, half do not


def test_rotation_leaves_no_black_corners() -> None:
    white = Image.new("RGB", (300, 200), (255, 255, 255))
    rotated = np.asarray(rotate_without_corners(white, 5.0))
    assert rotated.shape == (200, 300, 3)
    assert rotated.min() > 240


def test_variant_for_epoch_cycles_through_a_finite_set() -> None:
    config = AugmentConfig(variants=2)
    assert [variant_for_epoch(e, config) for e in range(6)] == [0, 1, 2, 0, 1, 2]
    assert variant_for_epoch(5, None) == 0
    assert variant_for_epoch(5, AugmentConfig(variants=0)) == 0
