"""Subject modes on real photographs: face crops, objects on white, style crops."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.faces import detect_faces, face_crop_box
from loramill.engine.dataset.prepare import prepare_dataset
from loramill.engine.dataset.report import Rejected
from loramill.engine.dataset.subjects import subject_regions
from loramill.engine.dataset.validate import decode_image

from .conftest import jpeg_bytes, photo, png_bytes


def decoded(image: Image.Image):  # type: ignore[no-untyped-def]
    return decode_image(png_bytes(image), max_pixels=50_000_000, min_side=64)


def test_detect_face_in_astronaut_photo() -> None:
    faces = detect_faces(photo("astronaut"))
    assert len(faces) == 1
    cx, cy = faces[0].centre
    assert 180 < cx < 270 and 60 < cy < 170  # Eileen Collins' face, upper middle of the picture


def test_prepare_face_mode_crops_around_the_face(tmp_path: Path, config: DatasetConfig) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "astronaut.jpg").write_bytes(jpeg_bytes(photo("astronaut")))
    (folder / "coffee.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    report = prepare_dataset([str(folder)], tmp_path / "out", replace(config, subject="face", upscale=True))
    [kept] = report.kept
    left, top, right, bottom = kept.crop  # type: ignore[misc]
    assert right - left == bottom - top < 512  # a square, smaller than the whole photo
    face = detect_faces(photo("astronaut"))[0]
    assert left < face.left and face.left + face.width < right and top <= face.top
    assert Image.open(tmp_path / "out" / kept.file).size == (256, 256)
    [rejected] = report.rejected
    assert Path(rejected.source).name == "coffee.jpg" and rejected.reason == "no_face"
    assert "no face found" in rejected.message


def test_face_mode_with_two_faces_keeps_largest_and_warns(config: DatasetConfig) -> None:
    astronaut = photo("astronaut")
    canvas = Image.new("RGB", (1100, 600), (128, 128, 128))
    canvas.paste(astronaut, (0, 0))
    canvas.paste(astronaut.resize((400, 400)), (650, 100))
    [region] = subject_regions(decoded(canvas), replace(config, subject="face"))
    assert region.box is not None and region.box[0] < 512  # the full-size face, on the left
    assert "2 faces found; used the largest" in region.warnings[0]


def test_face_crop_box_stays_inside_image_near_edges() -> None:
    from loramill.engine.dataset.faces import FaceBox

    box = face_crop_box((300, 200), FaceBox(0, 0, 80, 80), margin=0.6)
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= 300 and box[3] <= 200
    assert box[2] - box[0] == box[3] - box[1] == 176


def test_object_mode_centres_object_on_white(config: DatasetConfig) -> None:
    scene = Image.new("RGB", (600, 400), (250, 250, 248))
    ImageDraw.Draw(scene).ellipse((40, 60, 240, 260), fill=(200, 40, 40))
    [region] = subject_regions(decoded(scene), replace(config, subject="object"))
    square = np.asarray(region.image)
    assert square.shape[0] == square.shape[1]
    assert tuple(square[2, 2]) == (255, 255, 255)  # background became pure white
    centre = square[square.shape[0] // 2, square.shape[1] // 2]
    assert centre[0] > 180 and centre[1] < 80  # the red object sits in the middle now


def test_object_mode_cut_out_png_uses_its_transparency(config: DatasetConfig) -> None:
    cutout = Image.new("RGBA", (400, 300), (0, 0, 0, 0))
    ImageDraw.Draw(cutout).rectangle((250, 50, 350, 250), fill=(30, 30, 200, 255))
    [region] = subject_regions(decoded(cutout), replace(config, subject="object", min_side=64))
    assert region.box == (250, 50, 351, 251)
    assert region.image.getpixel((0, 0)) == (255, 255, 255)


def test_object_mode_cluttered_photo_still_yields_square_on_white(config: DatasetConfig) -> None:
    [region] = subject_regions(decoded(photo("coffee")), replace(config, subject="object"))
    assert region.image.width == region.image.height
    assert region.image.getpixel((1, 1)) == (255, 255, 255)


def test_style_mode_large_artwork_yields_extra_crops(config: DatasetConfig) -> None:
    painting = photo("astronaut").resize((1200, 800))
    regions = subject_regions(decoded(painting), replace(config, subject="style", style_max_crops=3))
    assert regions[0].box is None and regions[0].image.size == (1200, 800)
    assert len(regions) == 4
    assert all(r.suffix == f"_crop{i}" for i, r in enumerate(regions[1:], start=1))


def test_style_mode_small_image_is_whole_only(config: DatasetConfig) -> None:
    regions = subject_regions(decoded(photo("coffee")), replace(config, subject="style"))
    assert len(regions) == 1


def test_face_mode_rejects_distant_face_saying_why(config: DatasetConfig) -> None:
    crowd = Image.new("RGB", (2000, 1500), (90, 90, 90))
    crowd.paste(photo("astronaut").resize((160, 160)), (900, 600))
    with pytest.raises(Rejected) as caught:
        subject_regions(decoded(crowd), replace(config, subject="face"))
    assert caught.value.code == "no_face"
    assert "under a tenth of the picture" in caught.value.message


def test_face_mode_rejects_face_crop_under_min_side(config: DatasetConfig) -> None:
    small = photo("astronaut").resize((400, 400))
    with pytest.raises(Rejected) as caught:
        subject_regions(decoded(small), replace(config, subject="face", min_side=300))
    assert caught.value.code == "too_small" and "face crop" in caught.value.message
