"""`loramill dataset prepare` as a user runs it: summary on stdout, reasons for every rejected file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from loramill.cli import main


def save_jpeg(image: Image.Image, path: Path, quality: int = 90) -> None:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    folder = tmp_path / "upload"
    folder.mkdir()
    coffee = Image.fromarray(data.coffee())
    save_jpeg(coffee, folder / "coffee.jpg")
    save_jpeg(Image.fromarray(data.rocket()), folder / "rocket.jpg")
    save_jpeg(Image.fromarray(data.astronaut()), folder / "astronaut.jpg")
    (folder / "rocket copy.jpg").write_bytes((folder / "rocket.jpg").read_bytes())
    save_jpeg(coffee.resize((300, 200)), folder / "coffee_small.jpg", quality=50)
    (folder / "readme.jpg").write_text("not a photo")
    return folder


def test_dataset_prepare_prints_summary_and_writes_dataset(upload: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dataset"
    code = main(["dataset", "prepare", str(upload), "--out", str(out), "--trigger-word", "tsuki_advtr",
                 "--class-word", "item", "--style-keywords", "pastel color, thick outlines", "--bucket",
                 "--min-side", "128"])
    printed = capsys.readouterr()
    assert code == 0
    assert "kept 3 image(s)" in printed.out
    assert "rejected 3: " in printed.out
    assert "duplicate 1" in printed.out and "near_duplicate 1" in printed.out and "not_an_image 1" in printed.out
    assert "buckets: " in printed.out
    captions = sorted(p.read_text().strip() for p in (out / "images").glob("*.txt"))
    assert captions == ["tsuki_advtr, an item, pastel color, thick outlines"] * 3
    assert json.loads((out / "manifest.json").read_text())["config"]["bucket"] is True


def test_dataset_prepare_too_few_images_exits_1_listing_reasons(upload: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dataset", "prepare", str(upload), "--out", str(tmp_path / "d"), "--subject", "face",
                 "--min-images", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error [too_few_images]" in err
    assert "coffee.jpg: no_face" in err and "readme.jpg: not_an_image" in err


def test_dataset_prepare_bad_option_names_supported_values(upload: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dataset", "prepare", str(upload), "--out", str(tmp_path / "d"), "--captioner", "gpt"])
    assert code == 1
    assert "captioner='gpt' is not supported; choose one of: template, florence2, blip, none" in capsys.readouterr().err


def test_dataset_prepare_missing_source_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["dataset", "prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "d")])
    assert code == 1
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
