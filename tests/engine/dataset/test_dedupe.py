"""Perceptual hashes: the same photo resized and recompressed matches; different photos do not."""

from __future__ import annotations

import io
import itertools

from PIL import Image

from loramill.engine.dataset.dedupe import DuplicateIndex, dhash, hamming, phash

from .conftest import jpeg_bytes, photo

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse", "hubble_deep_field")


def recompressed(image: Image.Image, scale: float, quality: int) -> Image.Image:
    small = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.BILINEAR)
    return Image.open(io.BytesIO(jpeg_bytes(small, quality=quality))).convert("RGB")


def test_hash_resized_recompressed_photo_within_threshold() -> None:
    for name in PHOTOS:
        original = photo(name)
        copy = recompressed(original, 0.4, 50)
        assert hamming(phash(original), phash(copy)) <= 6, name
        assert hamming(dhash(original), dhash(copy)) <= 12, name


def test_hash_different_photos_far_apart() -> None:
    hashes = {name: (phash(photo(name)), dhash(photo(name))) for name in PHOTOS}
    for a, b in itertools.combinations(PHOTOS, 2):
        assert hamming(hashes[a][0], hashes[b][0]) > 12, (a, b)


def test_index_finds_exact_and_near_duplicates_by_name() -> None:
    index = DuplicateIndex(max_distance=6)
    coffee = photo("coffee")
    index.add("coffee.jpg", "sha-coffee", phash(coffee), dhash(coffee))
    copy = recompressed(coffee, 0.5, 60)
    assert index.exact("sha-coffee") == "coffee.jpg"
    assert index.near(phash(copy), dhash(copy))[0] == "coffee.jpg"  # type: ignore[index]
    rocket = photo("rocket")
    assert index.near(phash(rocket), dhash(rocket)) is None


def test_index_with_distance_zero_keeps_near_duplicates() -> None:
    index = DuplicateIndex(max_distance=0)
    coffee = photo("coffee")
    index.add("coffee.jpg", "sha", phash(coffee), dhash(coffee))
    assert index.near(phash(coffee), dhash(coffee)) is None
