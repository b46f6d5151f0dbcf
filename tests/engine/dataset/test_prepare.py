"""prepare_dataset end to end on messy uploads: the right reason for every bad file, the good ones kept."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loramill.engine.dataset.config import DatasetConfig
from loramill.engine.dataset.items import load_dataset
from loramill.engine.dataset.prepare import prepare_dataset, safe_stem
from loramill.engine.progress import Progress, StopRequested
from loramill.errors import InvalidInput, NotFound

from .conftest import jpeg_bytes, photo, png_bytes, sideways_phone_photo


def reasons(report) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {Path(r.source).name: r.reason for r in report.rejected}


def test_prepare_messy_folder_rejects_each_bad_file_with_its_reason(messy_folder: Path, tmp_path: Path,
                                                                   config: DatasetConfig) -> None:
    report = prepare_dataset([str(messy_folder)], tmp_path / "out", config)
    assert reasons(report) == {
        "truncated.jpg": "truncated",
        "bomb.png": "too_many_pixels",
        "ten_pixels.png": "too_small",
        "text_named.jpg": "not_an_image",
        "exact_copy.jpg": "duplicate",
        "near_copy.jpg": "near_duplicate",
    }
    assert sorted(Path(k.source).name for k in report.kept) == ["chelsea.png", "coffee.jpg", "rocket.jpg"]
    summary = report.summary()
    assert "kept 3 image(s)" in summary and "rejected 6" in summary and "near_duplicate 1" in summary


def test_prepare_writes_images_captions_toml_and_manifest(messy_folder: Path, tmp_path: Path,
                                                          config: DatasetConfig) -> None:
    out = tmp_path / "out"
    report = prepare_dataset([str(messy_folder)], out, config)
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == 3
    for image_path in images:
        assert Image.open(image_path).size == (256, 256)
        assert image_path.with_suffix(".txt").read_text().startswith("ohwx")
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["images"][0]
    assert {"file", "source", "sha256", "original_size", "final_size", "bucket", "caption"} <= entry.keys()
    assert entry["original_size"] != entry["final_size"]
    assert {r["reason"] for r in manifest["rejected"]} == {r.reason for r in report.rejected}
    assert all(r["message"] for r in manifest["rejected"])
    toml = tomllib.loads((out / "dataset.toml").read_text())
    assert Path(toml["datasets"][0]["subsets"][0]["image_dir"]) == (out / "images").resolve()
    assert [item.image_path for item in load_dataset(out)] == [out / k.file for k in report.kept]


def test_prepare_too_few_images_lists_every_rejection(messy_folder: Path, tmp_path: Path,
                                                      config: DatasetConfig) -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare_dataset([str(messy_folder)], tmp_path / "out", replace(config, min_images=4))
    error = caught.value
    assert error.code == "too_few_images"
    assert "only 3 usable image(s), fewer than min_images 4" in error.message
    for name, code in [("truncated.jpg", "truncated"), ("bomb.png", "too_many_pixels"),
                       ("ten_pixels.png", "too_small"), ("text_named.jpg", "not_an_image"),
                       ("exact_copy.jpg", "duplicate"), ("near_copy.jpg", "near_duplicate")]:
        assert f"{name}: {code}" in error.message
    assert not (tmp_path / "out").exists()  # a failed run leaves nothing behind


def test_prepare_refuses_more_files_than_max_images_before_decoding(tmp_path: Path, config: DatasetConfig) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i}.jpg").write_bytes(b"not decoded before the count check")
    with pytest.raises(InvalidInput) as caught:
        prepare_dataset([str(folder)], tmp_path / "out", replace(config, max_images=10))
    assert caught.value.code == "too_many_images"
    assert "12 files" in caught.value.message and "--max-images" in caught.value.message


def test_prepare_ten_thousand_files_refused_before_decoding(tmp_path: Path, config: DatasetConfig,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "dump"
    folder.mkdir()
    for i in range(10_000):
        (folder / f"IMG_{i:05d}.jpg").write_bytes(b"x")
    from PIL import Image

    opened: list[object] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    with pytest.raises(InvalidInput) as caught:
        prepare_dataset([str(folder)], tmp_path / "out", DatasetConfig())
    assert caught.value.code == "too_many_images" and "10,000 files, more than max_images 1,000" in caught.value.message
    assert opened == [], "the cap is checked before any file is decoded"


def test_prepare_stops_when_progress_callback_asks_and_leaves_nothing(messy_folder: Path, tmp_path: Path,
                                                                      config: DatasetConfig) -> None:
    def cancel_at_third(report: Progress) -> None:
        if report.step == 3:
            raise StopRequested()

    with pytest.raises(StopRequested):
        prepare_dataset([str(messy_folder)], tmp_path / "out", config, progress=cancel_at_third)
    assert not (tmp_path / "out").exists()


def test_prepare_phone_photo_upright_and_rgba_on_white(tmp_path: Path, config: DatasetConfig) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    stored, _ = sideways_phone_photo()
    (folder / "phone.jpg").write_bytes(stored)
    logo = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    logo.paste((20, 120, 20, 255), (100, 100, 200, 200))
    logo.save(folder / "logo.png")
    report = prepare_dataset([str(folder)], tmp_path / "out", replace(config, bucket=True))
    by_name = {Path(k.source).name: k for k in report.kept}
    phone = by_name["phone.jpg"]
    assert phone.exif_rotated and phone.original_size == (384, 512)
    pixels = np.asarray(Image.open(tmp_path / "out" / phone.file))
    assert pixels.shape[0] > pixels.shape[1]  # portrait, as the phone showed it
    assert pixels[5, pixels.shape[1] // 2, 0] > 200 and pixels[5, pixels.shape[1] // 2, 1] < 60  # red band on top
    flat = Image.open(tmp_path / "out" / by_name["logo.png"].file)
    assert flat.mode == "RGB" and flat.getpixel((3, 3)) == (255, 255, 255)


def test_prepare_keeps_caption_file_beside_image_and_adds_trigger(tmp_path: Path, config: DatasetConfig) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes(jpeg_bytes(photo("coffee")))
    (folder / "coffee.txt").write_text("a cup of coffee on a saucer\n")
    report = prepare_dataset([str(folder)], tmp_path / "out", replace(config, caption_prefix="photo of "))
    assert report.kept[0].caption == "ohwx, photo of a cup of coffee on a saucer"
    assert report.kept[0].caption_source == "file"


def test_prepare_storage_keys_through_fetch_key(tmp_path: Path, config: DatasetConfig) -> None:
    store = {"users/u1/images/a.jpg": jpeg_bytes(photo("coffee")), "users/u1/images/a.txt": b"my mug",
             "users/u1/images/b.png": png_bytes(photo("chelsea"))}

    def get_bytes(key: str) -> bytes:
        if key not in store:
            raise NotFound(f"no object {key}")
        return store[key]

    keys = ["users/u1/images/a.jpg", "users/u1/images/b.png", "users/u1/images/gone.jpg"]
    report = prepare_dataset(keys, tmp_path / "out", config, fetch_key=get_bytes)
    assert [k.caption for k in report.kept] == ["ohwx, my mug", "ohwx, a thing"]
    assert reasons(report) == {"gone.jpg": "missing_key"}


def test_prepare_missing_path_without_fetch_key_names_it(tmp_path: Path, config: DatasetConfig) -> None:
    with pytest.raises(InvalidInput) as caught:
        prepare_dataset([str(tmp_path / "nowhere")], tmp_path / "out", config)
    assert caught.value.code == "source_not_found" and "nowhere" in caught.value.message


def test_prepare_refuses_non_empty_foreign_out_dir(messy_folder: Path, tmp_path: Path,
                                                   config: DatasetConfig) -> None:
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(InvalidInput) as caught:
        prepare_dataset([str(messy_folder)], out, config)
    assert caught.value.code == "invalid_output"
    assert (out / "thesis.docx").read_text() == "precious"


def test_prepare_again_replaces_previous_dataset(messy_folder: Path, tmp_path: Path, config: DatasetConfig) -> None:
    out = tmp_path / "out"
    prepare_dataset([str(messy_folder)], out, config)
    second = prepare_dataset([str(messy_folder / "coffee.jpg")], out, config)
    assert len(second.kept) == 1
    assert len(list((out / "images").glob("*.png"))) == 1
    assert not list(out.glob(".staging-*"))


def test_prepare_skips_out_dir_inside_source_folder(messy_folder: Path, config: DatasetConfig) -> None:
    out = messy_folder / "dataset"
    prepare_dataset([str(messy_folder)], out, config)
    again = prepare_dataset([str(messy_folder)], out, config)
    assert not any("dataset" in Path(k.source).parts for k in again.kept)


def test_prepare_reports_progress_per_file(messy_folder: Path, tmp_path: Path, config: DatasetConfig) -> None:
    seen: list[Progress] = []
    prepare_dataset([str(messy_folder)], tmp_path / "out", config, progress=seen.append)
    assert [p.step for p in seen] == list(range(1, 10))
    assert {p.total for p in seen} == {9} and {p.stage for p in seen} == {"dataset"}
    assert {p.info["status"] for p in seen} >= {"kept", "truncated", "duplicate"}


def test_safe_stem_from_paths_entries_and_urls() -> None:
    assert safe_stem("/photos/My Photo!.JPG") == "My_Photo"
    assert safe_stem("upload.zip!dir/../x.png") == "x"
    assert safe_stem("https://example.com/img/cat.jpg?size=large") == "cat"
    assert safe_stem("https://example.com/") == "example"
